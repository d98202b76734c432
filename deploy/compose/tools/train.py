#!/usr/bin/env python3
"""Submits a training job to the trainer over gRPC (StartTraining with its bearer token) and
watches it to the end (WatchJob). Prints one JSON line: job id, final state, published version,
seconds. Exits 1 unless the job SUCCEEDED.

    python train.py TRAINER_ADDR TOKEN [--train-limit N] [--epochs N] [--seed N]
"""
import argparse
import json
import sys
import time

import grpc
from goemotions.v1 import trainer_pb2, trainer_pb2_grpc


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("addr")
    p.add_argument("token")
    p.add_argument("--train-limit", type=int, default=200)
    p.add_argument("--dev-limit", type=int, default=100)
    p.add_argument("--test-limit", type=int, default=50)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args()
    started = time.monotonic()
    meta = [("authorization", f"Bearer {args.token}")]
    with grpc.insecure_channel(args.addr) as channel:
        grpc.channel_ready_future(channel).result(timeout=120)
        stub = trainer_pb2_grpc.TrainerStub(channel)
        hyper = trainer_pb2.Hyperparameters(train_limit=args.train_limit, dev_limit=args.dev_limit,
                                            test_limit=args.test_limit, epochs=args.epochs, seed=args.seed)
        job_id = stub.StartTraining(trainer_pb2.TrainingSpec(hyperparameters=hyper), metadata=meta,
                                    timeout=60).job_id
        last = None
        for event in stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job_id), metadata=meta, timeout=1800):
            last = event.job
    state = trainer_pb2.JobState.Name(last.state) if last else "UNKNOWN"
    print(json.dumps({"job": job_id, "state": state, "version": last.model_version if last else "",
                      "error": last.error if last else "", "seconds": round(time.monotonic() - started, 1)}))
    sys.exit(0 if state == "JOB_STATE_SUCCEEDED" else 1)


if __name__ == "__main__":
    main()
