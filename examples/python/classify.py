#!/usr/bin/env python3
"""Calls the predictor from Python with grpcio and stubs generated from proto/ (see the README):

    python -m grpc_tools.protoc -I proto --python_out=gen --grpc_python_out=gen proto/goemotions/v1/predictor.proto
    PYTHONPATH=gen python examples/python/classify.py 127.0.0.1:50051 "I'm so happy!" "This is awful."

Prints one JSON line per text: its predicted labels and every label's score by name.
"""
import json
import sys

import grpc
from goemotions.v1 import predictor_pb2, predictor_pb2_grpc


def main():
    addr, texts = sys.argv[1], sys.argv[2:]
    with grpc.insecure_channel(addr) as channel:
        stub = predictor_pb2_grpc.PredictorStub(channel)
        info = stub.GetModelInfo(predictor_pb2.GetModelInfoRequest(), timeout=10)
        reply = stub.Classify(
            predictor_pb2.ClassifyRequest(texts=texts, options=predictor_pb2.ClassifyOptions(return_all_scores=True)),
            timeout=30,
        )
        for text, result in zip(texts, reply.results):
            print(json.dumps({
                "text": text,
                "model_version": reply.model_version,
                "labels": [label.name for label in result.labels],
                "scores": {name: round(score, 6) for name, score in zip(info.labels, result.scores)},
            }))


if __name__ == "__main__":
    main()
