#!/usr/bin/env python3
"""Calls the predictor over the Open Inference Protocol (KServe v2) with NVIDIA's Triton client
(`pip install 'tritonclient[grpc,http]'`), which knows nothing of this project, over gRPC (the
predictor's --listen) or HTTP/JSON (its --http-listen):

    python examples/python/oip_triton.py 127.0.0.1:50051 goemotions "I'm so happy!" "This is awful."
    python examples/python/oip_triton.py --http 127.0.0.1:8080 goemotions "I'm so happy!"
    python examples/python/oip_triton.py --http --json 127.0.0.1:8080 goemotions "I'm so happy!"

Over HTTP the client's defaults send and receive tensors in the binary tensor data extension;
`--json` asks for JSON tensors instead. Prints one JSON object: health, server and model
metadata, and per text its predicted labels and every label's score (label-id order).
"""
import json
import sys

import numpy as np


def main():
    args = sys.argv[1:]
    http = args[0] == "--http"
    if http:
        import tritonclient.http as client_lib

        args = args[1:]
    else:
        import tritonclient.grpc as client_lib
    as_json_tensors = args[0] == "--json"
    if as_json_tensors:
        args = args[1:]
    url, model, texts = args[0], args[1], args[2:]
    client = client_lib.InferenceServerClient(url=url)
    as_json = {} if http else {"as_json": True}
    meta = client.get_model_metadata(model, **as_json)
    text = client_lib.InferInput("text", [len(texts)], "BYTES")
    data = np.array([t.encode() for t in texts], dtype=np.object_)
    binary = {"binary_data": False} if as_json_tensors else {}
    text.set_data_from_numpy(data, **binary)
    outputs = [client_lib.InferRequestedOutput("scores", **binary), client_lib.InferRequestedOutput("labels", **binary)]
    result = client.infer(model, [text], outputs=outputs, parameters={"top_k": 2})
    scores = result.as_numpy("scores")
    labels = [json.loads(b) for b in result.as_numpy("labels")]
    response = result.get_response()
    print(json.dumps({
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "other_model_ready": client.is_model_ready(model + "-other"),
        "server": client.get_server_metadata(**as_json),
        "model": meta,
        "version": response["model_version"] if http else response.model_version,
        "results": [{"labels": l, "scores": s.tolist()} for l, s in zip(labels, scores)],
    }))


if __name__ == "__main__":
    main()
