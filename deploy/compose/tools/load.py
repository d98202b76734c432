#!/usr/bin/env python3
"""Steady load on the predictors from inside the stack, the way the contract says to call them:
a grpcio channel per worker on `dns:///predictor:50051` with the round_robin policy (one
subchannel per replica the DNS name returns, as with a Kubernetes headless Service), Classify
calls of a few texts, and a resend on UNAVAILABLE (draining or no model: "resend to another
replica") after a short pause. Runs for SECONDS or until the file STOP exists; prints one JSON
line: calls, texts, calls that succeeded first time, retried, failed (never answered OK), versions
seen and when each was first seen, texts/s.

    python load.py TARGET SECONDS [--workers N] [--stop FILE] [--max-attempts N] [--policy pick_first]

Each worker has a channel of its own; with `--policy pick_first` on `l4:50051` (the L4 balancer,
l4.py) each holds one connection to one replica, as a client behind a ClusterIP Service does.
"""
import argparse
import json
import os
import random
import threading
import time

import grpc
from goemotions.v1 import predictor_pb2, predictor_pb2_grpc

TEXTS = ["thanks!", "I hate this", "wow, really?", "so proud of you", "this is fine", "I'm scared",
         "love it", "no way", "sorry about that", "what a great day"]


def worker(target, deadline, stop_file, max_attempts, seed, lock, totals, policy):
    rng = random.Random(seed)
    # A subchannel pool per channel: each worker has connections of its own, as separate client
    # processes do (grpcio otherwise shares one connection between channels with equal arguments).
    options = [("grpc.lb_policy_name", policy), ("grpc.dns_min_time_between_resolutions_ms", 500),
               ("grpc.enable_retries", 0), ("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = predictor_pb2_grpc.PredictorStub(channel)
        while time.monotonic() < deadline and not (stop_file and os.path.exists(stop_file)):
            texts = [rng.choice(TEXTS) for _ in range(rng.randint(1, 4))]
            attempts = 0
            while True:
                attempts += 1
                try:
                    reply = stub.Classify(predictor_pb2.ClassifyRequest(texts=texts), timeout=10)
                    ok = len(reply.results) == len(texts)
                    with lock:
                        totals["calls"] += 1
                        totals["texts"] += len(texts) if ok else 0
                        totals["failed"] += 0 if ok else 1
                        totals["retried"] += 1 if attempts > 1 else 0
                        v = reply.model_version
                        if v not in totals["versions"]:
                            totals["versions"][v] = round(time.monotonic() - totals["t0"], 2)
                        totals["by_version"][v] = totals["by_version"].get(v, 0) + 1
                    break
                except grpc.RpcError as e:
                    retryable = e.code() in (grpc.StatusCode.UNAVAILABLE,)
                    if retryable and attempts < max_attempts:
                        with lock:
                            totals["unavailable_seen"] += 1
                        time.sleep(0.05)
                        continue
                    with lock:
                        totals["calls"] += 1
                        totals["failed"] += 1
                        totals["errors"][f"{e.code().name}: {(e.details() or '')[:120]}"] = \
                            totals["errors"].get(f"{e.code().name}: {(e.details() or '')[:120]}", 0) + 1
                    break


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target")
    p.add_argument("seconds", type=float)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--stop", default="")
    p.add_argument("--max-attempts", type=int, default=40)
    p.add_argument("--policy", default="round_robin", choices=["round_robin", "pick_first"])
    args = p.parse_args()
    lock = threading.Lock()
    totals = {"calls": 0, "texts": 0, "failed": 0, "retried": 0, "unavailable_seen": 0, "versions": {},
              "by_version": {}, "errors": {}, "t0": time.monotonic()}
    deadline = time.monotonic() + args.seconds
    threads = [threading.Thread(target=worker, args=(args.target, deadline, args.stop, args.max_attempts, i, lock,
                                                     totals, args.policy)) for i in range(args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - totals.pop("t0")
    totals["seconds"] = round(wall, 1)
    totals["texts_per_s"] = round(totals["texts"] / wall, 1) if wall > 0 else 0
    print(json.dumps(totals), flush=True)


if __name__ == "__main__":
    main()
