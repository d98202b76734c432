#!/usr/bin/env python3
"""Where an explanation's time goes on these kernels: one bare forward and backward (gradients
for the inputs only) of STEPS integration points in one batch, in `transformers` on the CPU, in
fp32 and under torch.autocast(bfloat16); prints p50 of forward alone and of forward + backward,
then torch.profiler's top operators for forward + backward in each precision.

    .venv-ref/bin/python scripts/profile_explain.py CHECKPOINT_DIR [--steps 32] [--threads 2]

Why it exists: it showed libtorch's CPU flash-attention backward costing several times more in
bf16 than in fp32 (so the predictor's bf16 backward passes take the written-out attention)."""
import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import AutoModelForSequenceClassification, AutoTokenizer

TEXT = "Thank you so much for helping me with this, I really appreciate your time!"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = AutoModelForSequenceClassification.from_pretrained(args.checkpoint, trust_remote_code=True).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint, trust_remote_code=True)
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    mask = torch.ones_like(ids)
    with torch.no_grad():
        x = model.get_input_embeddings()(ids)
    alphas = torch.linspace(0, 1, args.steps).view(-1, 1, 1)

    def once(bf16, backward):
        points = (alphas * x).detach().requires_grad_(backward)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if backward:
                out = model(inputs_embeds=points, attention_mask=mask.expand(args.steps, -1)).logits
                torch.autograd.grad(out[:, 0].sum(), points)
            else:
                with torch.no_grad():
                    model(inputs_embeds=points, attention_mask=mask.expand(args.steps, -1))

    print(f"{ids.shape[1]} tokens, {args.steps} points, {args.threads} threads")
    for bf16 in (False, True):
        for backward in (False, True):
            for _ in range(3):
                once(bf16, backward)
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                once(bf16, backward)
                times.append(time.perf_counter() - t)
            times.sort()
            print(f"{'bf16' if bf16 else 'fp32'} {'forward + backward' if backward else 'forward'}: "
                  f"p50 {times[len(times) // 2] * 1e3:.1f} ms")
    for bf16 in (False, True):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                once(bf16, True)
        print(f"\n{'bf16' if bf16 else 'fp32'} forward + backward, 5 calls:")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()
