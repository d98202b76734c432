#!/usr/bin/env bash
# Training throughput, Rust (tch, length-bucketed batches, fused attention) vs Python transformers
# (dynamic padding), same encoder, data, batch, max length and threads. Prints both and the ratio.
#   scripts/bench-train.sh [STEPS=30] [THREADS=2]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STEPS="${1:-30}"; THREADS="${2:-2}"
scripts/setup.sh >/dev/null
scripts/setup-ref-venv.sh >/dev/null
source .cache/env.sh
cargo build -q --release --bin trainer
rust=$(./target/release/trainer bench --steps "$STEPS" --threads "$THREADS" --device cpu 2>/dev/null | tail -n1)
rust_plain=$(./target/release/trainer bench --steps "$STEPS" --threads "$THREADS" --device cpu --no-bucketing 2>/dev/null | tail -n1)
py=$(.venv-ref/bin/python scripts/bench_train_transformers.py --model "$GOEMOTIONS_BASE_MODEL" \
  --data "$GOEMOTIONS_DATA_DIR/train.tsv" --steps "$STEPS" --threads "$THREADS" 2>/dev/null | tail -n1)
echo "$rust"; echo "$rust_plain"; echo "$py"
r=$(echo "$rust" | grep -oE '[0-9.]+ samples/s' | cut -d' ' -f1)
p=$(echo "$py" | grep -oE '[0-9.]+ samples/s' | cut -d' ' -f1)
python3 -c "print(f'ratio rust/python: {float($r)/float($p):.2f}x (target >= 1.3x)')"
