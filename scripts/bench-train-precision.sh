#!/usr/bin/env bash
# Training speed in bf16 against fp32 on this machine: `trainer bench` (the trainer's own training
# step: same encoder, data, batches, batch size, max length, threads), the two precisions
# interleaved REPEATS times. Prints each run, the median and spread (min–max) of samples/s per
# precision, and the bf16/fp32 ratio with its per-round values. What `--precision auto` trains in
# on a CPU is decided from this and from full-recipe F1 (README "Precision").
#   scripts/bench-train-precision.sh [STEPS=60] [THREADS=2] [REPEATS=3]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STEPS="${1:-60}"; THREADS="${2:-2}"; REPEATS="${3:-3}"
scripts/setup.sh >/dev/null
# shellcheck disable=SC1091
source .cache/env.sh
cargo build -q --release --bin trainer
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
flags=$(grep -o -w -E 'avx512_bf16|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ' || true)
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); bf16 flags: ${flags:-none}"
for r in $(seq 1 "$REPEATS"); do
  for precision in fp32 bf16; do
    line=$(./target/release/trainer bench --steps "$STEPS" --threads "$THREADS" --device cpu \
      --precision "$precision" 2>/dev/null | tail -n1)
    echo "round $r $precision $line" | tee -a "$out"
  done
done
python3 - "$out" <<'EOF'
import re, statistics, sys
runs = {"fp32": [], "bf16": []}
for line in open(sys.argv[1]):
    m = re.match(r"round (\d+) (\w+) rust-tch train: ([\d.]+) samples/s", line)
    if m:
        runs[m.group(2)].append(float(m.group(3)))
print("| precision | samples/s median (min–max) | runs |\n|---|---:|---:|")
for p, v in runs.items():
    print(f"| {p} | {statistics.median(v):.1f} ({min(v):.1f}–{max(v):.1f}) | {len(v)} |")
ratios = [b / f for f, b in zip(runs["fp32"], runs["bf16"])]
apart = min(runs["bf16"]) > max(runs["fp32"]) or max(runs["bf16"]) < min(runs["fp32"])
print(f"ratio bf16/fp32 (medians): {statistics.median(runs['bf16']) / statistics.median(runs['fp32']):.2f}x "
      f"({'ranges apart' if apart else 'ranges overlap: within noise'}); per round: "
      + ", ".join(f"{r:.2f}" for r in ratios))
EOF
