#!/usr/bin/env python3
"""Loads a checkpoint written by this project with Python `transformers` and checks that it scores
texts like the Rust model does.

    python scripts/hf_load_checkpoint.py CHECKPOINT_DIR [--trainer target/release/trainer]

`AutoModelForSequenceClassification.from_pretrained(dir)` loads every tensor (HF names). With
`"classifier_pooling": "mean"` in config.json (this project's default) the head must see the
masked mean of the last hidden states instead of BERT's [CLS] pooler; `MeanPooledClassifier`
below is the loader snippet for that. With "cls" the plain transformers model is used as is.
Needs torch and transformers (scripts/setup-ref-venv.sh). Exit code 1 when scores differ."""
import argparse
import json
import subprocess
import sys

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

TEXTS = [
    "I'm so happy that I finally passed the deep learning exam!",
    "This is the worst customer service I have ever experienced.",
    "Wow, I did not see that coming. What happened?",
    "ok",
]


class MeanPooledClassifier(torch.nn.Module):
    """BertForSequenceClassification weights, mean-pooled head (classifier_pooling = "mean")."""

    def __init__(self, hf_model):
        super().__init__()
        self.hf = hf_model

    def forward(self, input_ids, attention_mask, **_):
        hidden = self.hf.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return self.hf.classifier(self.hf.dropout(pooled))


def load(path):
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    pooling = getattr(model.config, "classifier_pooling", "cls")
    if pooling == "mean":
        return MeanPooledClassifier(model).eval(), model.config
    return (lambda **enc: model(**enc).logits), model.config


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--trainer", default="target/release/trainer")
    args = ap.parse_args()
    model, config = load(args.checkpoint)
    assert config.id2label[27] == "neutral", config.id2label
    tok = AutoTokenizer.from_pretrained(args.checkpoint)
    with torch.inference_mode():
        hf = []
        for text in TEXTS:
            enc = tok(text, return_tensors="pt", truncation=True, max_length=128)
            hf.append(torch.sigmoid(model(**enc))[0].tolist())
    rust = json.loads(
        subprocess.run([args.trainer, "score", "--checkpoint", args.checkpoint, "--device", "cpu", *TEXTS],
                       check=True, capture_output=True, text=True).stdout
    )["scores"]
    diff = max(abs(a - b) for row_h, row_r in zip(hf, rust) for a, b in zip(row_h, row_r))
    print(f"labels: {[config.id2label[i] for i in range(len(config.id2label))][:3]}… neutral at 27")
    print(f"max |transformers - rust| over {len(TEXTS)} texts × {len(hf[0])} labels: {diff:.2e}")
    sys.exit(0 if diff < 1e-4 else 1)


if __name__ == "__main__":
    main()
