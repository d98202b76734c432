#!/usr/bin/env python3
"""Calls the predictor's Open Inference Protocol HTTP API (--http-listen) with the KServe Python
SDK (`pip install kserve`), which knows nothing of this project, using its defaults: tensors
set with `set_data_from_numpy` travel in the binary tensor data extension.

    python examples/python/oip_kserve.py http://127.0.0.1:8080 goemotions "I'm so happy!" "This is awful."

Prints one JSON object: server and model readiness, the model name (the SDK's response keeps
no version), and per text its predicted labels and every label's score (label-id order).
"""
import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def main():
    base_url, model, texts = sys.argv[1], sys.argv[2], sys.argv[3:]
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
    text = InferInput("text", [len(texts)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    request = InferRequest(model_name=model, infer_inputs=[text], parameters={"top_k": 2})
    response = await client.infer(base_url, request, model_name=model)
    scores = response.get_output_by_name("scores").as_numpy()
    labels = [json.loads(b) for b in response.get_output_by_name("labels").as_numpy()]
    print(json.dumps({
        "ready": await client.is_server_ready(base_url),
        "model_ready": await client.is_model_ready(base_url, model),
        "model_name": response.model_name,
        "results": [{"labels": l, "scores": s.tolist()} for l, s in zip(labels, scores)],
    }))
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
