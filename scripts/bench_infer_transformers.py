#!/usr/bin/env python3
"""Python references for the predictor benchmark on the same checkpoint and texts: the
`transformers` pipeline (batch 32), a length-sorted plain PyTorch loop (batch 32, inference_mode),
batch-1 latency, and the process's peak RSS. --precision bf16 casts the model to bfloat16."""
import argparse
import resource
import time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

ap = argparse.ArgumentParser()
ap.add_argument("--checkpoint", required=True)
ap.add_argument("--texts", required=True)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--limit", type=int, default=0)
ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
ap.add_argument("--loop-only", action="store_true", help="only the length-sorted loop (no pipeline, no batch-1 latency)")
args = ap.parse_args()
torch.set_num_threads(args.threads)
texts = [line.split("\t")[0] for line in open(args.texts, encoding="utf-8")]
if args.limit:
    texts = texts[: args.limit]
tok = AutoTokenizer.from_pretrained(args.checkpoint, trust_remote_code=True)
# trust_remote_code: mean-pooled checkpoints ship their modeling code (what the predictor computes).
model = AutoModelForSequenceClassification.from_pretrained(args.checkpoint, trust_remote_code=True).eval()
if args.precision == "bf16":
    model = model.to(torch.bfloat16)

if args.loop_only:
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    t = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(order), 32):
            enc = tok([texts[i] for i in order[s:s + 32]], padding=True, truncation=True, max_length=128,
                      return_tensors="pt")
            torch.sigmoid(model(**enc).logits.float())
    print(f"python length-sorted loop(batch 32, {args.precision}): {len(texts) / (time.perf_counter() - t):.1f} texts/s")
    raise SystemExit(0)

pipe = pipeline("text-classification", model=model, tokenizer=tok, top_k=None, function_to_apply="sigmoid",
                batch_size=32, truncation=True, max_length=128)
t = time.perf_counter()
pipe(texts)
pipe_rate = len(texts) / (time.perf_counter() - t)

order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
t = time.perf_counter()
with torch.inference_mode():
    for s in range(0, len(order), 32):
        batch = [texts[i] for i in order[s:s + 32]]
        enc = tok(batch, padding=True, truncation=True, max_length=128, return_tensors="pt")
        torch.sigmoid(model(**enc).logits.float())
loop_rate = len(texts) / (time.perf_counter() - t)

lat = []
with torch.inference_mode():
    for text in texts[:300]:
        t = time.perf_counter()
        enc = tok(text, truncation=True, max_length=128, return_tensors="pt")
        torch.sigmoid(model(**enc).logits)
        lat.append((time.perf_counter() - t) * 1000)
lat.sort()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"python pipeline(batch 32): {pipe_rate:.1f} texts/s; length-sorted loop(batch 32): {loop_rate:.1f} texts/s; "
      f"batch-1 p50 {lat[len(lat)//2]:.2f} ms p99 {lat[int(len(lat)*0.99)]:.2f} ms; peak RSS {rss:.0f} MB")
