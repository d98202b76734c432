#!/usr/bin/env python3
"""Explanation cost and fairness, the measuring half of scripts/bench-explain.sh (which starts the
predictor and repeats the runs). Two modes:

  grpc    against a running predictor, with grpcio stubs generated from proto/:
          1. Explain alone: sequential calls (one text, one label, --steps points) → p50 / p99;
          2. Classify alone: --clients threads of sequential one-text unary calls → p50 / p99;
          3. mixed: the same Classify load plus --explainers threads of sequential Explain
             calls → Classify p50 / p99 beside (2), and Explain p50 / p99 under load.
  captum  the reference: Captum's IntegratedGradients on the same checkpoint in transformers, same
          text, label, steps (one batch) and threads → p50 / p99; and the floor under any
          implementation on these kernels: one bare forward and backward of the same --steps
          points in one batch, in transformers (no Captum) → p50 / p99. With --precision bf16
          both run under torch.autocast(bfloat16) (matrix products in bf16, norms in fp32), as a
          PyTorch user runs bf16 inference.

Prints one JSON object."""
import argparse
import json
import sys
import threading
import time


def percentiles(xs):
    xs = sorted(xs)
    if not xs:
        return {"n": 0}
    pick = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]
    return {"n": len(xs), "p50_ms": pick(0.5) * 1e3, "p99_ms": pick(0.99) * 1e3}


def grpc_mode(args):
    sys.path.insert(0, args.stubs)
    import grpc
    from goemotions.v1 import predictor_pb2 as pb, predictor_pb2_grpc as rpc

    channel = grpc.insecure_channel(args.addr.replace("http://", ""))
    stub = rpc.PredictorStub(channel)
    texts = [line.split("\t")[0] for line in open(args.texts, encoding="utf-8")][:2000]
    explain_req = pb.ExplainRequest(text=args.text, labels=[args.label], steps=args.steps)
    first = stub.Explain(explain_req)
    for _ in range(3):
        stub.Explain(explain_req)
        stub.Classify(pb.ClassifyRequest(texts=[texts[0]]))

    def loop(call, stop, out):
        i = 0
        while not stop.is_set():
            t = time.perf_counter()
            call(i)
            out.append(time.perf_counter() - t)
            i += 1

    def classify(i):
        stub.Classify(pb.ClassifyRequest(texts=[texts[i % len(texts)]]))

    def explain(_):
        stub.Explain(explain_req)

    def phase(classifiers, explainers):
        stop = threading.Event()
        c_lat, e_lat = [], []
        threads = [threading.Thread(target=loop, args=(classify, stop, c_lat)) for _ in range(classifiers)]
        threads += [threading.Thread(target=loop, args=(explain, stop, e_lat)) for _ in range(explainers)]
        for t in threads:
            t.start()
        time.sleep(args.seconds)
        stop.set()
        for t in threads:
            t.join()
        return c_lat, e_lat

    _, alone = phase(0, 1)
    classify_alone, _ = phase(args.clients, 0)
    classify_mixed, explain_mixed = phase(args.clients, args.explainers)
    print(json.dumps({
        "num_tokens": first.num_tokens,
        "words": len(first.words),
        "explain_alone": percentiles(alone),
        "classify_alone": percentiles(classify_alone),
        "classify_mixed": percentiles(classify_mixed),
        "explain_mixed": percentiles(explain_mixed),
    }))


def captum_mode(args):
    import torch
    from captum.attr import IntegratedGradients
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(args.threads)
    model = AutoModelForSequenceClassification.from_pretrained(args.checkpoint, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint, trust_remote_code=True)
    label = model.config.label2id[args.label]
    enc = tokenizer(args.text, return_tensors="pt")
    ids = enc["input_ids"]
    special = tokenizer.get_special_tokens_mask(ids[0].tolist(), already_has_special_tokens=True)
    baseline_ids = torch.tensor([[t if s else tokenizer.pad_token_id for t, s in zip(ids[0].tolist(), special)]])
    mask = torch.ones_like(ids)
    embed = model.get_input_embeddings()

    def forward(inputs_embeds):
        return model(inputs_embeds=inputs_embeds, attention_mask=mask.expand(inputs_embeds.shape[0], -1)).logits

    ig = IntegratedGradients(forward)

    def once():
        with torch.no_grad():
            x, b = embed(ids), embed(baseline_ids)
        ig.attribute(x, baselines=b, target=label, n_steps=args.steps, method="gausslegendre")

    def bare():
        with torch.no_grad():
            x, b = embed(ids), embed(baseline_ids)
        alphas = torch.linspace(0, 1, args.steps).view(-1, 1, 1)
        points = (b + alphas * (x - b)).requires_grad_(True)
        torch.autograd.grad(forward(points)[:, label].sum(), points)

    def timed(call):
        lat = []
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            for _ in range(3):
                call()
            end = time.perf_counter() + args.seconds / 2
            while time.perf_counter() < end:
                t = time.perf_counter()
                call()
                lat.append(time.perf_counter() - t)
        return percentiles(lat)

    print(json.dumps({"num_tokens": ids.shape[1], "captum": timed(once), "floor": timed(bare)}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["grpc", "captum"])
    ap.add_argument("--addr", default="127.0.0.1:50051")
    ap.add_argument("--stubs")
    ap.add_argument("--checkpoint")
    ap.add_argument("--texts", default=".cache/data/goemotions/test.tsv")
    ap.add_argument("--text", required=True)
    ap.add_argument("--label", default="gratitude")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--explainers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="captum mode: the reference's precision")
    args = ap.parse_args()
    grpc_mode(args) if args.mode == "grpc" else captum_mode(args)


if __name__ == "__main__":
    main()
