#!/usr/bin/env python3
"""Streams short texts to the predictor from Python grpcio as fast as the client can write them,
the way a batch job or an event consumer does, and counts what comes back:

    python -m grpc_tools.protoc -I proto --python_out=gen --grpc_python_out=gen proto/goemotions/v1/predictor.proto
    PYTHONPATH=gen python examples/python/stream_flood.py 127.0.0.1:50051 --texts 20000
    PYTHONPATH=gen python examples/python/stream_flood.py 127.0.0.1:50051 --streams 40 --texts 300 --rate 100

All streams share one channel (one HTTP/2 connection), as grpcio does by default. With
`--rate` each stream writes that many texts per second, else as fast as it can. A unary
GetModelInfo on the same channel at the end checks the connection survived. Prints one JSON
line: texts sent and answered, the streams' final status codes, wall time, texts/s; exits 1
unless every text got exactly one answer and every call ended OK.
"""
import argparse
import json
import sys
import threading
import time

import grpc
from goemotions.v1 import predictor_pb2, predictor_pb2_grpc

TEXTS = [
    "thanks!", "I hate this", "wow", "so proud of you", "meh", "lol what", "this is fine",
    "I'm scared", "ugh, again?", "love it", "no way", "sorry about that",
]


def run_stream(stub, index, count, rate, token, out):
    def requests():
        start = time.monotonic()
        for i in range(count):
            if rate:
                due = start + i / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            yield predictor_pb2.StreamClassifyRequest(id=f"{index}-{i}", text=TEXTS[i % len(TEXTS)])

    metadata = [("authorization", f"Bearer {token}")] if token else None
    seen = {}
    code = "OK"
    detail = ""
    try:
        for response in stub.ClassifyStream(requests(), metadata=metadata, timeout=600):
            seen[response.id] = seen.get(response.id, 0) + 1
    except grpc.RpcError as e:
        code = e.code().name
        detail = e.details() or ""
    out[index] = {
        "answered": len(seen),
        "duplicates": sum(n - 1 for n in seen.values()),
        "code": code,
        "detail": detail[:300],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("addr")
    p.add_argument("--texts", type=int, default=20000, help="texts per stream")
    p.add_argument("--streams", type=int, default=1, help="streams on the one channel")
    p.add_argument("--rate", type=float, default=0, help="texts/s per stream (0: as fast as possible)")
    p.add_argument("--token", default="", help="bearer token, if the server wants one")
    args = p.parse_args()

    started = time.monotonic()
    with grpc.insecure_channel(args.addr) as channel:
        stub = predictor_pb2_grpc.PredictorStub(channel)
        results = {}
        threads = [
            threading.Thread(target=run_stream, args=(stub, i, args.texts, args.rate, args.token, results))
            for i in range(args.streams)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - started
        try:
            stub.GetModelInfo(predictor_pb2.GetModelInfoRequest(), timeout=10)
            after = "OK"
        except grpc.RpcError as e:
            after = e.code().name
    sent = args.texts * args.streams
    answered = sum(r["answered"] for r in results.values())
    codes = sorted({r["code"] for r in results.values()})
    report = {
        "streams": args.streams,
        "sent": sent,
        "answered": answered,
        "duplicates": sum(r["duplicates"] for r in results.values()),
        "codes": codes,
        "details": sorted({r["detail"] for r in results.values() if r["detail"]})[:3],
        "unary_after": after,
        "wall_s": round(wall, 2),
        "texts_per_s": round(answered / wall, 1) if wall > 0 else 0,
    }
    print(json.dumps(report))
    ok = answered == sent and report["duplicates"] == 0 and codes == ["OK"] and after == "OK"
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
