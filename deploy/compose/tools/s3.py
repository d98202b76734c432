#!/usr/bin/env python3
"""moto's S3 server (atomic conditional writes) on 0.0.0.0:PORT with BUCKET created: the stack's
object store. Runs until stopped."""
import argparse
import threading
import time
import urllib.request

from moto.server import ThreadedMotoServer


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bucket", default="registry")
    p.add_argument("--port", type=int, default=5000)
    args = p.parse_args()
    server = ThreadedMotoServer(ip_address="0.0.0.0", port=args.port)
    server.start()
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{args.port}/{args.bucket}", method="PUT"))
    print(f"S3 (moto) on :{args.port}, bucket {args.bucket}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    while True:
        try:
            main()
        except OSError:
            time.sleep(0.5)
