#!/usr/bin/env bash
# Predictor throughput and latency through gRPC (N concurrent streams over the GoEmotions test
# texts, then idle single-text unary calls) and its peak RSS, beside the Python references on the
# same checkpoint, texts and threads (the transformers pipeline with batch 32, a length-sorted
# plain PyTorch loop with batch 32, batch-1 latency). Loopback only, bounded in count and time.
# Runs are repeated REPEATS times, interleaved; prints each run, then median and spread (min–max).
# PRECISION bf16 serves in bf16 and runs the Python references with the model cast to bf16.
# Also what a Python user would pick to go faster (scripts/bench_infer_quantized.py, same texts and
# threads): the mean-pooled PyTorch fp32 loop, ONNX Runtime fp32 and dynamic int8, PyTorch
# quantize_dynamic int8, each with its test
# macro-F1 at the stored thresholds beside fp32's (the quality guard: within 0.005).
#   scripts/bench-predictor.sh [CHECKPOINT=output/registry/models/goemotions/aliases/latest] [STREAMS=8] [REPEATS=3] [THREADS=2] [PRECISION=fp32]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${1:-$ROOT/output/registry/models/goemotions/aliases/latest}"
STREAMS="${2:-8}"; REPEATS="${3:-3}"; THREADS="${4:-2}"; PRECISION="${5:-fp32}"
scripts/setup.sh >/dev/null
scripts/setup-ref-venv.sh >/dev/null
# shellcheck disable=SC1091
source .cache/env.sh
cargo build -q --release --bin trainer --bin predictor
mkdir -p output
version=$(./target/release/trainer score --checkpoint "$MODEL" --device cpu x 2>/dev/null \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')
ckpt="$(dirname "$(dirname "$MODEL")")/versions/$version"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
for r in $(seq 1 "$REPEATS"); do
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  ./target/release/predictor serve --model "$MODEL" --listen "127.0.0.1:$port" --metrics-listen 127.0.0.1:0 \
    --threads "$THREADS" --device cpu --precision "$PRECISION" > output/bench-predictor.log 2>&1 &
  pid=$!
  until ./target/release/predictor info --addr "http://127.0.0.1:$port" >/dev/null 2>&1; do sleep 0.2; done
  line=$(./target/release/predictor bench --addr "http://127.0.0.1:$port" --texts "$GOEMOTIONS_DATA_DIR/test.tsv" \
    --streams "$STREAMS" --pid "$pid" | tr '\n' ' ')
  kill $pid; wait $pid 2>/dev/null || true
  echo "rust $line" | tee -a "$out"
  line=$(.venv-ref/bin/python scripts/bench_infer_transformers.py --checkpoint "$ckpt" \
    --texts "$GOEMOTIONS_DATA_DIR/test.tsv" --threads "$THREADS" --precision "$PRECISION" 2>/dev/null | tail -n1)
  echo "python $line" | tee -a "$out"
  .venv-ref/bin/python scripts/bench_infer_quantized.py --checkpoint "$ckpt" --texts "$GOEMOTIONS_DATA_DIR/test.tsv" \
    --threads "$THREADS" 2>/dev/null | grep "texts/s" | sed 's/^/quantized /' | tee -a "$out"
done
python3 - "$out" "$STREAMS" "$THREADS" "$PRECISION" <<'PY'
import re, statistics, sys
rows = {}
def add(key, value):
    rows.setdefault(key, []).append(float(value))
for line in open(sys.argv[1]):
    if line.startswith("rust"):
        add("predictor, 8 streams (texts/s)", re.search(r"= ([0-9.]+) texts/s", line).group(1))
        add("predictor idle single-text p99 (ms)", re.search(r"idle single-text p50 [0-9.]+ ms p99 ([0-9.]+) ms", line).group(1))
        add("predictor peak RSS (MB)", int(re.search(r"peak RSS: (\d+) kB", line).group(1)) / 1024)
    elif line.startswith("quantized"):
        side = line.split()[1].rstrip(":")
        add(f"{side} (texts/s)", re.search(r": ([0-9.]+) texts/s", line).group(1))
        add(f"{side} test macro-F1 minus fp32's", re.search(r"delta ([-+0-9.]+)", line).group(1))
    else:
        add("python pipeline batch 32 (texts/s)", re.search(r"pipeline\(batch 32\): ([0-9.]+)", line).group(1))
        add("python length-sorted loop batch 32 (texts/s)", re.search(r"loop\(batch 32\): ([0-9.]+)", line).group(1))
        add("python batch-1 p99 (ms)", re.search(r"p99 ([0-9.]+) ms", line).group(1))
        add("python peak RSS (MB)", re.search(r"peak RSS ([0-9.]+) MB", line).group(1))
print(f"\nstreams {sys.argv[2]}, threads {sys.argv[3]}, precision {sys.argv[4]} (both sides), GoEmotions test split (5,427 texts)")
print("| measure | median (min–max) | runs |\n|---|---:|---:|")
med = {}
for k, v in rows.items():
    med[k] = statistics.median(v)
    prec = 4 if "macro-F1" in k else 1
    print(f"| {k} | {med[k]:.{prec}f} ({min(v):.{prec}f}–{max(v):.{prec}f}) | {len(v)} |")
p = rows["predictor, 8 streams (texts/s)"]
for ref in ("python length-sorted loop batch 32 (texts/s)", "python pipeline batch 32 (texts/s)",
            "torch-fp32 (texts/s)", "onnx-fp32 (texts/s)", "onnx-int8 (texts/s)", "torch-int8 (texts/s)"):
    q = rows.get(ref)
    if not q:
        continue
    guard = ref.replace(" (texts/s)", " test macro-F1 minus fp32's")
    quality = "" if guard not in med else (" [quality guard " + ("met" if med[guard] >= -0.005 else "MISSED")
                                           + f": {med[guard]:+.4f}]")
    overlap = min(p) <= max(q) and min(q) <= max(p)
    print(f"ratio predictor / {ref.split(' (')[0]}: {med['predictor, 8 streams (texts/s)'] / med[ref]:.2f}x"
          + (" (ranges overlap: within noise)" if overlap else "") + quality)
PY
