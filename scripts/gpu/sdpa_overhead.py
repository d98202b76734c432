#!/usr/bin/env python3
"""Which attention-mask form makes bf16 scaled_dot_product_attention slow per call on this GPU?

The trainer (tch) passes a boolean key mask [batch, 1, 1, seq]; transformers passes a float additive
mask [batch, 1, seq, seq] under autocast. On an H100 (2026-11-26) the trainer's bf16 steps cost far
more host time than its fp32 steps while the GPU idled. This times forward+backward of MiniLM-sized
attention (batch 32, 12 heads, head dim 32, dropout 0.1) for each mask form and SDPA backend choice,
over changing sequence lengths as length-bucketed batches have (every call a shape not seen before
in the common case: a backend that plans per shape pays for it here) and over one fixed shape
(per-call cost with every cache warm), with synchronous timing per call.

Prints one line per (shapes, mask, backend): median and p90 milliseconds per forward+backward.
"""
import argparse
import random
import statistics
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


def masks(kind, lengths, seq, dtype, device):
    valid = torch.arange(seq, device=device)[None, :] < lengths[:, None]
    if kind == "none":
        return None
    if kind == "bool-key":
        return valid[:, None, None, :]
    additive = torch.zeros(valid.shape, dtype=dtype, device=device).masked_fill(~valid, torch.finfo(dtype).min)
    if kind == "float-key":
        return additive[:, None, None, :]
    return additive[:, None, None, :].expand(-1, 1, seq, seq)  # "float-full", as transformers builds it


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=60)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    device, dtype = torch.device("cuda"), torch.bfloat16
    rng = random.Random(0)
    backends = {
        "default": None,
        "cudnn": [SDPBackend.CUDNN_ATTENTION],
        "efficient": [SDPBackend.EFFICIENT_ATTENTION],
        "math": [SDPBackend.MATH],
    }
    combos = [(shapes, kind, name) for shapes in ("changing", "fixed") for kind in ("bool-key", "float-key", "float-full", "none")
              for name in backends]
    for shapes, kind, name in combos:
        # Changing: (batch, length) drawn afresh for every combination, so no combination finds
        # shapes another one already planned; fixed: batch 32, length 64 throughout.
        if shapes == "changing":
            plan = [(rng.randint(1, args.batch * 2), rng.randint(8, 128)) for _ in range(args.calls)]
        else:
            plan = [(args.batch, 64)] * args.calls
        choice = backends[name]
        times = []
        try:
            for i, (batch, seq) in enumerate(plan):
                q, k, v = (torch.randn(batch, 12, seq, 32, device=device, dtype=dtype, requires_grad=True)
                           for _ in range(3))
                lengths = torch.randint(max(1, seq // 2), seq + 1, (batch,), device=device)
                mask = masks(kind, lengths, seq, dtype, device)
                torch.cuda.synchronize()
                start = time.perf_counter()
                if choice is None:
                    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.1)
                else:
                    with sdpa_kernel(choice):
                        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.1)
                out.float().sum().backward()
                torch.cuda.synchronize()
                if i >= 5:
                    times.append((time.perf_counter() - start) * 1e3)
            times.sort()
            print(f"shapes {shapes:8s} mask {kind:10s} backend {name:9s}: median {statistics.median(times):.3f} ms, "
                  f"p90 {times[int(0.9 * (len(times) - 1))]:.3f} ms per forward+backward", flush=True)
        except RuntimeError as e:
            print(f"shapes {shapes:8s} mask {kind:10s} backend {name:9s}: not available ({str(e).splitlines()[0][:80]})",
                  flush=True)


if __name__ == "__main__":
    main()
