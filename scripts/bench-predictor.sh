#!/usr/bin/env bash
# Predictor throughput and latency through gRPC (N concurrent streams over the GoEmotions test
# texts, then idle single-text unary calls) and its peak RSS, beside the Python references on the
# same checkpoint, texts and threads. Loopback only, bounded in count and time.
#   scripts/bench-predictor.sh [CHECKPOINT=output/registry/models/goemotions/aliases/latest] [STREAMS=8]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${1:-$ROOT/output/registry/models/goemotions/aliases/latest}"
STREAMS="${2:-8}"
scripts/setup.sh >/dev/null
scripts/setup-ref-venv.sh >/dev/null
source .cache/env.sh
cargo build -q --release --bins
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
./target/release/predictor serve --model "$MODEL" --listen "127.0.0.1:$port" --metrics-listen 127.0.0.1:0 \
  --threads 2 --device cpu > output/bench-predictor.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
until ./target/release/predictor info --addr "http://127.0.0.1:$port" >/dev/null 2>&1; do sleep 0.2; done
./target/release/predictor bench --addr "http://127.0.0.1:$port" --texts "$GOEMOTIONS_DATA_DIR/test.tsv" \
  --streams "$STREAMS" --pid "$pid"
kill $pid; wait $pid 2>/dev/null || true; trap - EXIT
dir=$(./target/release/trainer score --checkpoint "$MODEL" --device cpu x 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')
ckpt="$(dirname "$(dirname "$MODEL")")/versions/$dir"
.venv-ref/bin/python scripts/bench_infer_transformers.py --checkpoint "$ckpt" --texts "$GOEMOTIONS_DATA_DIR/test.tsv" --threads 2 2>/dev/null
