#!/usr/bin/env bash
# Training throughput, like for like: `trainer bench` (Rust, tch) against the same model in
# Python transformers (scripts/bench_train_transformers.py): same encoder, data, batch size, max
# length, threads, precision, warm-up, optimizer semantics, and exactly the same batches (the
# Python side replays the batch order the trainer wrote), in two pairs — length-bucketed and
# plain shuffled batches. Tokenization is outside the timed loop on both sides. The trainer also
# prints where its step time goes (data, forward, backward, optimizer). Each of the four runs is repeated REPEATS times, interleaved; prints the median and
# the spread (min–max) of samples/s and real tokens/s, and the Rust/Python ratios.
#   scripts/bench-train.sh [STEPS=30] [THREADS=2] [REPEATS=3] [PRECISION=fp32] [DEVICE=cpu]
# BENCH_PYTHON_ENV="VAR=value ..." runs the Python side under those variables, e.g. the glibc malloc
# thresholds the trainer sets for itself (trainer/src/malloc.rs):
#   BENCH_PYTHON_ENV="MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824" scripts/bench-train.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STEPS="${1:-30}"; THREADS="${2:-2}"; REPEATS="${3:-3}"; PRECISION="${4:-fp32}"; DEVICE="${5:-cpu}"
scripts/setup.sh >/dev/null
scripts/setup-ref-venv.sh >/dev/null
# shellcheck disable=SC1091
source .cache/env.sh
cargo build -q --release --bin trainer
out="$(mktemp)"
order="$(mktemp)"
trap 'rm -f "$out" "$order"' EXIT
for r in $(seq 1 "$REPEATS"); do
  for batching in bucketed plain; do
    flag=""; [ "$batching" = plain ] && flag="--no-bucketing"
    line=$(./target/release/trainer bench --steps "$STEPS" --threads "$THREADS" --device "$DEVICE" \
      --precision "$PRECISION" --write-batches "$order" $flag 2>>"$out.phases" | tail -n1)
    echo "rust $batching $line" | tee -a "$out"
    # shellcheck disable=SC2086
    line=$(env ${BENCH_PYTHON_ENV:-} .venv-ref/bin/python scripts/bench_train_transformers.py --model "$GOEMOTIONS_BASE_MODEL" \
      --data "$GOEMOTIONS_DATA_DIR/train.tsv" --steps "$STEPS" --threads "$THREADS" --device "$DEVICE" \
      --precision "$PRECISION" --batching "$batching" --batches "$order" 2>/dev/null | tail -n1)
    echo "python $batching $line" | tee -a "$out"
  done
done
echo "where the trainer's step time goes (each run):"
grep -h "time per phase" "$out.phases" | sed 's/^/  /'
rm -f "$out.phases"
python3 - "$out" "$STEPS" "$THREADS" "$PRECISION" "$DEVICE" "${BENCH_PYTHON_ENV:-}" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    side, batching = line.split()[:2]
    sps = float(re.search(r"([0-9.]+) samples/s", line).group(1))
    tps = float(re.search(r"([0-9.]+) real tokens/s", line).group(1))
    rows.setdefault((side, batching), []).append((sps, tps))
print(f"\nsteps {sys.argv[2]}, threads {sys.argv[3]}, precision {sys.argv[4]}, device {sys.argv[5]}, batch 32, max-len 128"
      + (f", python under {sys.argv[6]}" if sys.argv[6] else ""))
print("| side | batching | samples/s median (min–max) | real tokens/s median (min–max) | runs |")
print("|---|---|---:|---:|---:|")
med = {}
for (side, batching), v in sorted(rows.items()):
    s = [x[0] for x in v]; t = [x[1] for x in v]
    med[(side, batching)] = statistics.median(s)
    print(f"| {side} | {batching} | {statistics.median(s):.1f} ({min(s):.1f}–{max(s):.1f}) | "
          f"{statistics.median(t):.0f} ({min(t):.0f}–{max(t):.0f}) | {len(v)} |")
for batching in ("bucketed", "plain"):
    r, p = rows[("rust", batching)], rows[("python", batching)]
    ratio = med[("rust", batching)] / med[("python", batching)]
    # Within noise when the ranges of the two sides overlap.
    overlap = min(x[0] for x in r) <= max(x[0] for x in p) and min(x[0] for x in p) <= max(x[0] for x in r)
    # Each round runs Rust then Python back to back, so the ratio within a round is less exposed
    # to the machine's drift between rounds than the ratio of medians.
    rounds = [a[0] / b[0] for a, b in zip(r, p)]
    print(f"ratio rust/python ({batching} vs {batching}): {ratio:.2f}x"
          + (" (ranges overlap: within noise)" if overlap else "") + " — goal >= 1.3x; "
          + f"per round: median {statistics.median(rounds):.2f}x (min–max {min(rounds):.2f}–{max(rounds):.2f})")
PY
