#!/usr/bin/env python3
"""Why the predictor offers no int8: dynamic int8 spelled out with the ops tch 0.24 can reach
(per-token activation quantization, then `_int_mm` — oneDNN's s8s8→s32 matmul, AMX/VNNI where the
CPU has them — then rescaling) against the bf16 `linear` the predictor runs, at MiniLM's shapes
(672 rows ≈ a batch of 32 texts of 21 tokens; fused q/k/v, attention output, FFN in and out).
Prints, per shape, the median of 7 windows for: bf16 linear, the whole int8 path, its quantization
step alone and `_int_mm` alone, and the relative max error of each against fp32.

    .venv-ref/bin/python scripts/bench_int8_linear.py [--threads 2] [--rows 672]
"""
import argparse
import time

import torch
import torch.nn.functional as F


def median_time(fn, calls=50, windows=7):
    for _ in range(5):
        fn()
    times = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return sorted(times)[windows // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=672)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"rows {args.rows}, threads {args.threads}, torch {torch.__version__}")
    print("| in × out | bf16 linear µs | int8 path µs | quantize µs | _int_mm µs | err bf16 | err int8 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for k, n in [(384, 1152), (384, 384), (384, 1536), (1536, 384)]:
        x = torch.randn(args.rows, k).bfloat16()
        w = torch.randn(n, k) * 0.05
        b = torch.randn(n).bfloat16()
        w_bf16 = w.bfloat16()
        w_scale = w.abs().amax(1) / 127
        w_q = (w / w_scale[:, None]).round().clamp(-127, 127).to(torch.int8).t().contiguous()
        b_fp32 = b.float()

        def quantize():
            scale = (x.abs().amax(-1, keepdim=True).float() / 127).clamp_min(1e-8)
            return (x.float() / scale).round_().clamp_(-127, 127).to(torch.int8), scale

        def int8_linear():
            x_q, scale = quantize()
            y = torch._int_mm(x_q, w_q).float()
            return y.mul_(scale).mul_(w_scale).add_(b_fp32).bfloat16()

        x_q, _ = quantize()
        with torch.inference_mode():
            reference = F.linear(x.float(), w, b.float())
            err = lambda y: ((y.float() - reference).abs().max() / reference.abs().max()).item()
            row = [median_time(lambda: F.linear(x, w_bf16, b)), median_time(int8_linear),
                   median_time(quantize), median_time(lambda: torch._int_mm(x_q, w_q))]
            print(f"| {k} × {n} | " + " | ".join(f"{t * 1e6:.0f}" for t in row)
                  + f" | {err(F.linear(x, w_bf16, b)):.4f} | {err(int8_linear()):.4f} |")


if __name__ == "__main__":
    main()
