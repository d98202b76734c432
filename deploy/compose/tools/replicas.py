#!/usr/bin/env python3
"""Asks every predictor replica behind a DNS name (each address it resolves to) for its served
version (GetModelInfo), its health and its request count (/metrics). Prints one JSON line:
{"ip": {"version", "serving", "requests"}, ...}.

    python replicas.py [NAME=predictor] [--grpc-port 50051] [--metrics-port 9090]
"""
import argparse
import json
import socket
import urllib.request

import grpc
from goemotions.v1 import predictor_pb2, predictor_pb2_grpc


def requests_total(ip, port):
    try:
        page = urllib.request.urlopen(f"http://{ip}:{port}/metrics", timeout=3).read().decode()
    except OSError:
        return None
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
                   if line.startswith("predictor_requests_total{")))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", default="predictor")
    p.add_argument("--grpc-port", type=int, default=50051)
    p.add_argument("--metrics-port", type=int, default=9090)
    args = p.parse_args()
    try:
        ips = sorted({info[4][0] for info in socket.getaddrinfo(args.name, args.grpc_port, socket.AF_INET)})
    except socket.gaierror:
        ips = []
    out = {}
    for ip in ips:
        entry = {"version": "", "serving": False, "requests": requests_total(ip, args.metrics_port)}
        with grpc.insecure_channel(f"{ip}:{args.grpc_port}") as channel:
            try:
                info = predictor_pb2_grpc.PredictorStub(channel).GetModelInfo(predictor_pb2.GetModelInfoRequest(),
                                                                               timeout=3)
                entry["version"] = info.version
                entry["serving"] = True
            except grpc.RpcError as e:
                entry["error"] = e.code().name
        out[ip] = entry
    print(json.dumps(out))


if __name__ == "__main__":
    main()
