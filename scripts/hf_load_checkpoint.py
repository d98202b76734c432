#!/usr/bin/env python3
"""Loads a checkpoint written by this project with Python `transformers` the ways a Hugging Face
user would, and checks each against the Rust model's scores (`trainer score`, what the predictor
serves) on the same texts:

    python scripts/hf_load_checkpoint.py CHECKPOINT_DIR [--trainer target/release/trainer] [--texts test.tsv] [--limit 200]

- `AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)` and
  `pipeline("text-classification", model=dir, trust_remote_code=True, top_k=None)` must give the
  same sigmoid scores (max |difference| ≤ 1e-4);
- a mean-pooled checkpoint (`"classifier_pooling": "mean"`, the default) ships its modeling code
  (`auto_map`); loading it without `trust_remote_code=True` must fail loudly rather than fall back
  to BERT's [CLS] pooler, which scores differently. A CLS checkpoint is a plain
  `BertForSequenceClassification` and loads without remote code.

Prints one line per check and exits 1 when any fails. Needs torch and transformers."""
import argparse
import json
import subprocess
import sys

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

TEXTS = [
    "I'm so happy that I finally passed the deep learning exam!",
    "This is the worst customer service I have ever experienced.",
    "Wow, I did not see that coming. What happened?",
    "ok",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--trainer", default="target/release/trainer")
    ap.add_argument("--texts", help="GoEmotions TSV whose first --limit texts are scored (default: four examples)")
    ap.add_argument("--limit", type=int, default=200)
    args = ap.parse_args()
    texts = TEXTS
    if args.texts:
        texts = [line.split("\t")[0] for line in open(args.texts, encoding="utf-8")][: args.limit]
    config = json.load(open(f"{args.checkpoint}/config.json"))
    pooling = config.get("classifier_pooling", "cls")
    failures = []

    def check(name, ok, detail):
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
        if not ok:
            failures.append(name)

    rust = json.loads(
        subprocess.run([args.trainer, "score", "--checkpoint", args.checkpoint, "--device", "cpu", *texts],
                       check=True, capture_output=True, text=True).stdout
    )["scores"]
    rust = torch.tensor(rust)

    model = AutoModelForSequenceClassification.from_pretrained(args.checkpoint, trust_remote_code=True).eval()
    labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    check("labels", labels[27] == "neutral" and len(labels) == 28, f"{labels[:3]}… {labels[27]} at 27")
    tok = AutoTokenizer.from_pretrained(args.checkpoint, trust_remote_code=True)
    with torch.inference_mode():
        scores = torch.cat([torch.sigmoid(model(**tok(t, return_tensors="pt", truncation=True,
                                                       max_length=config.get("max_length", 128))).logits)
                            for t in texts])
    diff = (scores - rust).abs().max().item()
    check("AutoModelForSequenceClassification", diff <= 1e-4,
          f"{type(model).__name__}, max |transformers - rust| over {len(texts)} texts × {len(labels)} labels {diff:.2e}")

    pipe = pipeline("text-classification", model=args.checkpoint, trust_remote_code=True, top_k=None)
    by_name = pipe(texts, truncation=True)
    piped = torch.tensor([[next(d["score"] for d in row if d["label"] == name) for name in labels] for row in by_name])
    diff = (piped - rust).abs().max().item()
    check("pipeline", diff <= 1e-4, f"max |pipeline - rust| {diff:.2e}")

    try:
        plain = AutoModelForSequenceClassification.from_pretrained(args.checkpoint).eval()
        with torch.inference_mode():
            plain_scores = torch.cat([torch.sigmoid(plain(**tok(t, return_tensors="pt")).logits) for t in texts])
        plain_diff = (plain_scores - rust).abs().max().item()
        if pooling == "mean":
            check("plain load refused", False, f"loaded without remote code, max |Δ| {plain_diff:.3f} (silently wrong)")
        else:
            check("plain load (cls)", plain_diff <= 1e-4, f"max |Δ| {plain_diff:.2e}")
    except Exception as e:  # transformers raises ValueError asking for trust_remote_code
        message = str(e).splitlines()[0][:160]
        check("plain load refused" if pooling == "mean" else "plain load (cls)", pooling == "mean",
              f"{type(e).__name__}: {message}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
