#!/usr/bin/env python3
"""Calls the predictor over the Open Inference Protocol (KServe v2) with NVIDIA's Triton client
(`pip install 'tritonclient[grpc]'`), which knows nothing of this project:

    python examples/python/oip_triton.py 127.0.0.1:50051 goemotions "I'm so happy!" "This is awful."

Prints one JSON object: health, server and model metadata, and per text its predicted labels and
the 28 scores (label-id order).
"""
import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient


def main():
    url, model, texts = sys.argv[1], sys.argv[2], sys.argv[3:]
    client = grpcclient.InferenceServerClient(url=url)
    meta = client.get_model_metadata(model, as_json=True)
    text = grpcclient.InferInput("text", [len(texts)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    outputs = [grpcclient.InferRequestedOutput("scores"), grpcclient.InferRequestedOutput("labels")]
    result = client.infer(model, [text], outputs=outputs, parameters={"top_k": 2})
    scores = result.as_numpy("scores")
    labels = [json.loads(b) for b in result.as_numpy("labels")]
    print(json.dumps({
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "other_model_ready": client.is_model_ready(model + "-other"),
        "server": client.get_server_metadata(as_json=True),
        "model": meta,
        "version": result.get_response().model_version,
        "results": [{"labels": l, "scores": s.tolist()} for l, s in zip(labels, scores)],
    }))


if __name__ == "__main__":
    main()
