#!/usr/bin/env python3
"""Python reference for the training benchmark: `transformers` BertForSequenceClassification on the
same encoder and data, shuffled batches with dynamic padding, AdamW + clipping, BCE multi-label loss.
Prints samples/s over --steps steps after 3 untimed warm-up steps."""
import argparse
import random
import time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--data", required=True, help="train.tsv")
ap.add_argument("--steps", type=int, default=30)
ap.add_argument("--batch-size", type=int, default=32)
ap.add_argument("--max-length", type=int, default=128)
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(42)
rows = [line.rstrip("\n").split("\t") for line in open(args.data, encoding="utf-8")]
random.Random(42).shuffle(rows)
tok = AutoTokenizer.from_pretrained(args.model)
model = AutoModelForSequenceClassification.from_pretrained(
    args.model, num_labels=28, problem_type="multi_label_classification"
)
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
warmup, timed = 3, args.steps
start, samples = None, 0
for step in range(warmup + timed):
    if step == warmup:
        start, samples = time.perf_counter(), 0
    batch = rows[(step * args.batch_size) % len(rows):][: args.batch_size]
    enc = tok([r[0] for r in batch], padding=True, truncation=True, max_length=args.max_length, return_tensors="pt")
    y = torch.zeros(len(batch), 28)
    for i, r in enumerate(batch):
        for lab in r[1].split(","):
            y[i, int(lab)] = 1.0
    loss = model(**enc, labels=y).loss
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    samples += len(batch)
elapsed = time.perf_counter() - start
print(f"python-transformers train: {samples / elapsed:.1f} samples/s over {timed} steps "
      f"(batch {args.batch_size}, max-len {args.max_length}, threads {args.threads}, dynamic padding)")
