#!/usr/bin/env bash
# Explanation cost and fairness (issue: token attributions): a predictor on THREADS threads with
# its default workers; per run, scripts/bench_explain.py measures Explain alone (one ~20-token
# text, one label, STEPS points, sequential calls), Classify alone (4 clients of one-text unary
# calls), and both at once (the same Classify load plus one client of sequential Explain calls);
# then the reference, Captum's IntegratedGradients on the same checkpoint in transformers (same
# text, label, steps in one batch, threads) and the floor on those kernels (a bare forward and backward
# of the same points in one batch). Runs are repeated REPEATS times, interleaved; prints
# each run, then median and spread (min–max). Loopback only, SECONDS per phase. PRECISION is the
# predictor's --precision and the reference's (bf16: torch.autocast, like for like).
#   scripts/bench-explain.sh [CHECKPOINT=output/registry/models/goemotions/aliases/latest] [REPEATS=3] [THREADS=2] [STEPS=32] [SECONDS=20] [PRECISION=fp32]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${1:-$ROOT/output/registry/models/goemotions/aliases/latest}"
REPEATS="${2:-3}"; THREADS="${3:-2}"; STEPS="${4:-32}"; SECONDS_PER_PHASE="${5:-20}"; PRECISION="${6:-fp32}"
TEXT="Thank you so much for helping me with this, I really appreciate your time!"
scripts/setup.sh --with-clients >/dev/null
scripts/setup-ref-venv.sh >/dev/null
# shellcheck disable=SC1091
source .cache/env.sh
cargo build -q --release --bin trainer --bin predictor
version=$(./target/release/trainer score --checkpoint "$MODEL" --device cpu x 2>/dev/null \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')
case "$MODEL" in
  */aliases/*) ckpt="$(dirname "$(dirname "$MODEL")")/versions/$version" ;;
  *) ckpt="$MODEL" ;;
esac
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/gen" output
"$GRPC_PYTHON" -m grpc_tools.protoc -I proto --python_out="$work/gen" --grpc_python_out="$work/gen" \
  proto/goemotions/v1/predictor.proto
for r in $(seq 1 "$REPEATS"); do
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  ./target/release/predictor serve --model "$MODEL" --listen "127.0.0.1:$port" --metrics-listen 127.0.0.1:0 \
    --threads "$THREADS" --device cpu --precision "$PRECISION" > output/bench-explain.log 2>&1 &
  pid=$!
  until ./target/release/predictor info --addr "http://127.0.0.1:$port" >/dev/null 2>&1; do sleep 0.2; done
  line=$("$GRPC_PYTHON" scripts/bench_explain.py grpc --addr "127.0.0.1:$port" --stubs "$work/gen" \
    --texts "$GOEMOTIONS_DATA_DIR/test.tsv" --text "$TEXT" --steps "$STEPS" --seconds "$SECONDS_PER_PHASE")
  kill $pid; wait $pid 2>/dev/null || true
  echo "rust $line" | tee -a "$work/runs"
  line=$(.venv-ref/bin/python scripts/bench_explain.py captum --checkpoint "$ckpt" --text "$TEXT" \
    --steps "$STEPS" --threads "$THREADS" --precision "$PRECISION" --seconds "$SECONDS_PER_PHASE" 2>/dev/null | tail -n1)
  echo "python $line" | tee -a "$work/runs"
done
python3 - "$work/runs" "$THREADS" "$STEPS" "$PRECISION" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    side, payload = line.split(" ", 1)
    data = json.loads(payload)
    for phase, v in data.items():
        if isinstance(v, dict) and v.get("n"):
            for q in ("p50_ms", "p99_ms"):
                rows.setdefault(f"{phase} {q[:3]} (ms)", []).append(v[q])
        elif phase == "num_tokens":
            rows.setdefault(f"{side} tokens", []).append(v)
print(f"\nthreads {sys.argv[2]}, {sys.argv[3]} steps, {sys.argv[4]}, one label; Classify: 4 clients of one-text unary calls")
print("| measure | median (min–max) | runs |\n|---|---:|---:|")
for k, v in rows.items():
    print(f"| {k} | {statistics.median(v):.1f} ({min(v):.1f}–{max(v):.1f}) | {len(v)} |")
def ratio(a, b):
    if a in rows and b in rows:
        x, y = rows[a], rows[b]
        overlap = min(x) <= max(y) and min(y) <= max(x)
        print(f"{a} / {b}: {statistics.median(x) / statistics.median(y):.2f}×"
              + (" (ranges overlap: within noise)" if overlap else ""))
ratio("captum p50 (ms)", "explain_alone p50 (ms)")
ratio("floor p50 (ms)", "explain_alone p50 (ms)")
ratio("classify_mixed p99 (ms)", "classify_alone p99 (ms)")
PY
