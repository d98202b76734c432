#!/usr/bin/env python3
"""Checks the predictor's Explain answers against Captum's IntegratedGradients, the reference
implementation, on the same checkpoint loaded in `transformers` with its own remote code:

    .venv-ref/bin/python scripts/captum_check.py CHECKPOINT_DIR --addr http://127.0.0.1:50051 \\
        [--predictor target/release/predictor] [--texts test.tsv] [--limit 20] [--steps 50]

For each text, `predictor explain --json` asks the running predictor (serving CHECKPOINT_DIR) for
its predicted labels' word attributions; Captum then integrates the same labels' logits with the
same baseline (every token's word embedding replaced by [PAD]'s, [CLS] and [SEP] kept), the same
number of steps and the same method (Gauss-Legendre, Captum's default), its token attributions
summed per word with the tokenizer's word ids. Checks, per text and label:

- equal: max |ours - Captum's| over the words <= --tolerance (1e-3) x the norm of Captum's;
- complete: |sum(ours) - (logit - baseline logit)| <= 1 % of |logit - baseline logit|
  (for gaps under 0.05 logits, where 1 % is below float noise, 5e-4 absolute).

Prints one line per text and label, then a summary; exits 1 when any check fails. Needs
.venv-ref (scripts/setup-ref-venv.sh: torch, transformers, captum)."""
import argparse
import inspect
import json
import subprocess
import sys

import torch
from captum.attr import IntegratedGradients
from transformers import AutoModelForSequenceClassification, AutoTokenizer

TEXTS = [
    "Thank you so much, this really helped me!",
    "I'm so sorry for your loss, that's heartbreaking.",
    "Wow, I did not see that coming. What happened?",
    "This is the worst thing I've ever read 😡",
]


def captum_words(model, tokenizer, text, label, steps, max_length):
    enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)
    ids = enc["input_ids"]
    special = tokenizer.get_special_tokens_mask(ids[0].tolist(), already_has_special_tokens=True)
    baseline_ids = torch.tensor([[t if s else tokenizer.pad_token_id for t, s in zip(ids[0].tolist(), special)]])
    embed = model.get_input_embeddings()
    with torch.no_grad():
        x, b = embed(ids), embed(baseline_ids)
    mask = torch.ones_like(ids)

    def logits(inputs_embeds):
        return model(inputs_embeds=inputs_embeds, attention_mask=mask.expand(inputs_embeds.shape[0], -1)).logits

    ig = IntegratedGradients(logits)
    attributions = ig.attribute(x, baselines=b, target=label, n_steps=steps, method="gausslegendre")
    per_token = attributions.sum(-1)[0].double()
    words = {}
    for t, w in enumerate(enc.word_ids()):
        if w is not None and not special[t]:
            words[w] = words.get(w, 0.0) + per_token[t].item()
    return [words[w] for w in sorted(words)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--addr", default="http://127.0.0.1:50051")
    ap.add_argument("--predictor", default="target/release/predictor")
    ap.add_argument("--texts", help="GoEmotions TSV whose first --limit texts are explained (default: four examples)")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--tolerance", type=float, default=1e-3)
    args = ap.parse_args()
    texts = TEXTS
    if args.texts:
        texts = [line.split("\t")[0] for line in open(args.texts, encoding="utf-8")][: args.limit]
    torch.set_num_threads(2)
    model = AutoModelForSequenceClassification.from_pretrained(args.checkpoint, trust_remote_code=True).eval()
    if "inputs_embeds" not in inspect.signature(model.forward).parameters:
        sys.exit(f"{args.checkpoint}: its modeling_goemotions.py predates inputs_embeds (published before Explain); "
                 "copy common/hf/modeling_goemotions.py into a copy of the folder (the weights are unchanged)")
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint, trust_remote_code=True)
    max_length = json.load(open(f"{args.checkpoint}/manifest.json"))["max_length"]
    failures, worst_equal, worst_complete, checked = [], 0.0, 0.0, 0
    for text in texts:
        ours = json.loads(
            subprocess.run(
                [args.predictor, "explain", "--addr", args.addr, "--json", "--steps", str(args.steps), text],
                check=True, capture_output=True, text=True,
            ).stdout
        )
        for label in ours["labels"]:
            theirs = captum_words(model, tokenizer, text, label["id"], args.steps, max_length)
            mine = label["attributions"]
            if len(mine) != len(theirs):
                failures.append(f"{text!r} {label['name']}: {len(mine)} words here, {len(theirs)} in Captum's")
                continue
            norm = max(sum(v * v for v in theirs) ** 0.5, 1e-12)
            equal = max(abs(a - b) for a, b in zip(mine, theirs)) / norm
            gap = label["logit"] - label["baseline_logit"]
            off = abs(sum(mine) - gap)
            allowed = 0.01 * abs(gap) if abs(gap) >= 0.05 else 5e-4
            worst_equal = max(worst_equal, equal)
            worst_complete = max(worst_complete, off / max(abs(gap), 1e-12))
            checked += 1
            ok = equal <= args.tolerance and off <= allowed
            top = max(range(len(mine)), key=lambda i: mine[i]) if mine else None
            top_word = ours["words"][top]["text"] if top is not None else "-"
            print(f"{'ok  ' if ok else 'FAIL'} {label['name']:<14} relative difference {equal:.2e}, "
                  f"completeness {off:.2e} of {abs(gap):.3f} (top word {top_word!r}) | {text[:60]!r}", flush=True)
            if not ok:
                failures.append(f"{text!r} {label['name']}")
    print(f"{checked} explanations checked against Captum ({args.steps} steps): worst relative difference "
          f"{worst_equal:.2e} (allowed {args.tolerance:g}), worst completeness gap {worst_complete:.2%}")
    if failures or checked == 0:
        print("FAILED: " + "; ".join(failures or ["nothing was checked"]))
        sys.exit(1)


if __name__ == "__main__":
    main()
