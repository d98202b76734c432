#!/usr/bin/env python3
"""Drives a running predictor with mixed traffic for a bounded time and records its memory: the
soak behind the manifests' memory figures (scripts/soak-memory.sh starts the predictor).

    python scripts/soak_memory.py HOST:PORT PID TEXTS.tsv SECONDS [--seed N] [--clients N]

Traffic: `--clients` threads, each sending Classify calls of a random number of texts (1–64)
built from the test split's texts joined or cut to a random length (3–160 tokens' worth of
words), so batches of every size and padded length reach the model; one thread in four streams
instead (ClassifyStream, 32–256 texts per stream). Every 10 s (and at the end) it reads the
predictor's RSS (VmRSS) and peak (VmHWM) from /proc and prints a line; a final JSON line holds
the whole curve: time, RSS MiB, texts answered, and the fitted growth of the second half in
MiB/min. Exits 1 if any call failed.
"""
import argparse
import json
import random
import sys
import threading
import time

import grpc
from goemotions.v1 import predictor_pb2, predictor_pb2_grpc


def rss_mib(pid):
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024.0
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def make_text(rng, words):
    n = rng.randint(3, 160)
    out = []
    while len(out) < n:
        out.extend(rng.choice(words))
    return " ".join(out[:n])


def client(addr, words, seed, stop, counters, lock, streaming):
    rng = random.Random(seed)
    with grpc.insecure_channel(addr) as channel:
        stub = predictor_pb2_grpc.PredictorStub(channel)
        while not stop.is_set():
            try:
                if streaming:
                    n = rng.randint(32, 256)
                    items = [predictor_pb2.StreamClassifyRequest(id=str(i), text=make_text(rng, words))
                             for i in range(n)]
                    answered = sum(1 for _ in stub.ClassifyStream(iter(items), timeout=900))
                else:
                    texts = [make_text(rng, words) for _ in range(rng.randint(1, 64))]
                    reply = stub.Classify(predictor_pb2.ClassifyRequest(texts=texts), timeout=900)
                    answered = len(reply.results)
                with lock:
                    counters["texts"] += answered
            except grpc.RpcError as e:
                with lock:
                    counters["failed"] += 1
                    counters["last_error"] = f"{e.code().name}: {e.details()}"
                time.sleep(0.2)


def slope_mib_per_min(points):
    """Least-squares growth of RSS over the second half of the run."""
    half = [p for p in points if p["t"] >= points[-1]["t"] / 2]
    if len(half) < 2:
        return 0.0
    n = len(half)
    mt = sum(p["t"] for p in half) / n
    mr = sum(p["rss_mib"] for p in half) / n
    var = sum((p["t"] - mt) ** 2 for p in half)
    if var == 0:
        return 0.0
    cov = sum((p["t"] - mt) * (p["rss_mib"] - mr) for p in half)
    return cov / var * 60.0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("addr")
    p.add_argument("pid", type=int)
    p.add_argument("texts")
    p.add_argument("seconds", type=float)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--interval", type=float, default=10.0)
    args = p.parse_args()

    words = []
    with open(args.texts, encoding="utf-8") as f:
        for line in f:
            text = line.split("\t", 1)[0].split()
            if text:
                words.append(text)
    stop = threading.Event()
    lock = threading.Lock()
    counters = {"texts": 0, "failed": 0, "last_error": ""}
    threads = [
        threading.Thread(target=client, args=(args.addr, words, args.seed + i, stop, counters, lock, i % 4 == 3),
                         daemon=True)
        for i in range(args.clients)
    ]
    started = time.monotonic()
    points = []

    def sample():
        rss, hwm = rss_mib(args.pid)
        with lock:
            texts = counters["texts"]
        point = {"t": round(time.monotonic() - started, 1), "rss_mib": round(rss, 1), "peak_mib": round(hwm, 1),
                 "texts": texts}
        points.append(point)
        print(f"  t={point['t']:7.1f}s  rss={point['rss_mib']:8.1f} MiB  peak={point['peak_mib']:8.1f} MiB  "
              f"texts={texts}", flush=True)

    sample()
    for t in threads:
        t.start()
    while time.monotonic() - started < args.seconds:
        time.sleep(min(args.interval, max(0.0, args.seconds - (time.monotonic() - started))))
        sample()
    stop.set()
    for t in threads:
        t.join(timeout=950)
    # Idle for a while: is memory given back?
    time.sleep(min(30.0, args.interval * 2))
    sample()
    summary = {
        "seconds": args.seconds,
        "clients": args.clients,
        "texts": counters["texts"],
        "failed_calls": counters["failed"],
        "last_error": counters["last_error"],
        "start_rss_mib": points[0]["rss_mib"],
        "peak_rss_mib": max(p["peak_mib"] for p in points),
        "end_rss_mib": points[-2]["rss_mib"] if len(points) > 1 else points[-1]["rss_mib"],
        "idle_rss_mib": points[-1]["rss_mib"],
        "growth_second_half_mib_per_min": round(slope_mib_per_min(points[:-1]), 2),
        "points": points,
    }
    print(json.dumps(summary))
    sys.exit(1 if counters["failed"] else 0)


if __name__ == "__main__":
    main()
