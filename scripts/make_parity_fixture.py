#!/usr/bin/env python3
"""Writes common/tests/fixtures/parity.safetensors: reference outputs of Python `transformers` for a
few fixed sentences, which the Rust parity test compares against (it needs no Python itself).

Usage: python scripts/make_parity_fixture.py MODEL_DIR [OUT]
(needs torch, transformers, safetensors; run once, commit the output)."""
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, BertForSequenceClassification

SENTENCES = [
    "I'm so happy that I finally passed the deep learning exam!",
    "This is the worst thing that has ever happened to me.",
    "Wow, I did not expect that at all...",
    "ok",
    "Thanks a lot, you really made my day :)",
]
NUM_LABELS = 28


def main() -> None:
    model_dir = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else "common/tests/fixtures/parity.safetensors"
    torch.manual_seed(1234)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = BertForSequenceClassification.from_pretrained(
        model_dir, num_labels=NUM_LABELS, problem_type="multi_label_classification"
    ).eval()
    # A deterministic, non-trivial head so logits are compared, not just zeros.
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 0.2)
        model.classifier.bias.uniform_(-0.5, 0.5)
    tensors = {
        "classifier.weight": model.classifier.weight.detach().clone(),
        "classifier.bias": model.classifier.bias.detach().clone(),
    }
    with torch.inference_mode():
        for i, text in enumerate(SENTENCES):
            enc = tok(text, return_tensors="pt", truncation=True, max_length=128)
            out_ = model(**enc, output_hidden_states=True)
            hidden = out_.hidden_states[-1][0]
            mean = hidden.mean(dim=0, keepdim=True)
            tensors[f"s{i}.input_ids"] = enc["input_ids"][0].to(torch.int64)
            tensors[f"s{i}.last_hidden_state"] = hidden.contiguous()
            tensors[f"s{i}.logits_cls"] = out_.logits[0].contiguous()
            tensors[f"s{i}.logits_mean"] = model.classifier(mean)[0].contiguous()
    save_file(tensors, out, metadata={"sentences": "\n".join(SENTENCES)})
    print(f"wrote {out} ({len(tensors)} tensors)")


if __name__ == "__main__":
    main()
