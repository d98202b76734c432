#!/usr/bin/env bash
# How the predictor's cost grows with load, per precision, on this machine's CPU:
#   - throughput and per-text p50/p99 latency against concurrent streams (1 2 4 8 16 32), each
#     stream a client with one text in flight (it sends the next text when the answer arrives);
#   - the same at 8 streams against text length: short (≤ 12 tokens), the test split's median
#     length, and 128-token texts (joined test texts, truncated at the limit);
#   - cold start: process start to the first answered GetModelInfo, from disk and from S3 (s3s-fs
#     on loopback), COLD_RUNS times each (polled every 20 ms; includes one `predictor info` spawn);
#   - peak RSS under load.
# Writes output/bench-load/{results.json,load.svg} and prints markdown tables.
#   scripts/bench-load.sh [CHECKPOINT=output/registry/models/goemotions/aliases/latest] [THREADS=2] [PRECISIONS=fp32,bf16] [SECONDS=5] [COLD_RUNS=3]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${1:-$ROOT/output/registry/models/goemotions/aliases/latest}"
THREADS="${2:-2}"; PRECISIONS="${3:-fp32,bf16}"; SECONDS_PER_POINT="${4:-5}"; COLD_RUNS="${5:-3}"
scripts/setup.sh --with-s3 >/dev/null
scripts/setup-ref-venv.sh >/dev/null
# shellcheck disable=SC1091
source .cache/env.sh
cargo build -q --release --bin trainer --bin predictor
P=./target/release/predictor
OUT=output/bench-load
mkdir -p "$OUT"
WORK="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
version=$(./target/release/trainer score --checkpoint "$MODEL" --device cpu x 2>/dev/null \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')
registry="$(dirname "$(dirname "$(dirname "$(dirname "$MODEL")")")")"
model_name="$(basename "$(dirname "$(dirname "$MODEL")")")"
ckpt="$registry/models/$model_name/versions/$version"
.venv-ref/bin/python scripts/bench_load.py texts "$ckpt" "$GOEMOTIONS_DATA_DIR/test.tsv" "$WORK" 2>/dev/null

# The same version behind a real S3 API: s3s-fs serves the files of bucket folder `bench`.
mkdir -p "$WORK/s3/bench/models/$model_name/versions" "$WORK/s3/bench/models/$model_name/aliases"
cp -r "$ckpt" "$WORK/s3/bench/models/$model_name/versions/"
printf '{"version": "%s", "updated_at": "2026-11-26T00:00:00Z"}' "$version" \
  > "$WORK/s3/bench/models/$model_name/aliases/latest.json"
s3port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
.cache/tools/bin/s3s-fs --host 127.0.0.1 --port "$s3port" --access-key bench --secret-key bench-secret "$WORK/s3" \
  > "$WORK/s3s.log" 2>&1 &
pids+=($!)
until (echo > "/dev/tcp/127.0.0.1/$s3port") 2>/dev/null; do sleep 0.05; done
s3env=(AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
       AWS_ENDPOINT_URL="http://127.0.0.1:$s3port" AWS_ALLOW_HTTP=true)

results="$WORK/results.jsonl"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start_predictor() { # PRECISION MODEL_URI [env assignments...]; sets $pid, $addr, $ready_s
  local precision="$1" uri="$2"; shift 2
  local p; p=$(port)
  addr="http://127.0.0.1:$p"
  local t0; t0=$(date +%s.%N)
  env "$@" "$P" serve --model "$uri" --listen "127.0.0.1:$p" --metrics-listen 127.0.0.1:0 --threads "$THREADS" \
    --device cpu --precision "$precision" > "$WORK/predictor.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  until "$P" info --addr "$addr" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { cat "$WORK/predictor.log" >&2; exit 1; }
    sleep 0.02
  done
  ready_s=$(python3 -c "import time; print(round(time.time() - $t0, 3))")
}
measure() { # KIND PRECISION STREAMS TEXTS_FILE LABEL
  local line
  line=$("$P" bench --addr "$addr" --texts "$4" --streams "$3" --in-flight 1 --max-seconds "$SECONDS_PER_POINT" \
    --idle-requests 0 --pid "$pid" 2>/dev/null | tr '\n' ' ')
  python3 - "$1" "$2" "$3" "$5" "$line" >> "$results" <<'PY'
import json, re, sys
kind, precision, streams, label, line = sys.argv[1:]
num = lambda pat: float(re.search(pat, line).group(1))
row = {"kind": kind, "precision": precision, "streams": int(streams), "texts": label,
       "texts_per_second": num(r"= ([0-9.]+) texts/s"), "p50_ms": num(r"stream latency p50 ([0-9.]+) ms"),
       "p99_ms": num(r"stream latency p50 [0-9.]+ ms p99 ([0-9.]+) ms"), "peak_rss_kb": int(num(r"peak RSS: (\d+) kB"))}
print(json.dumps(row))
PY
}

for precision in ${PRECISIONS//,/ }; do
  for r in $(seq 1 "$COLD_RUNS"); do
    start_predictor "$precision" "$MODEL"
    echo "{\"kind\": \"cold\", \"precision\": \"$precision\", \"source\": \"disk\", \"seconds\": $ready_s}" >> "$results"
    if [ "$r" = "$COLD_RUNS" ]; then
      for n in 1 2 4 8 16 32; do measure streams "$precision" "$n" "$GOEMOTIONS_DATA_DIR/test.tsv" test; done
      for c in short median long; do measure length "$precision" 8 "$WORK/$c.txt" "$c"; done
    fi
    kill "$pid"; wait "$pid" 2>/dev/null || true
    start_predictor "$precision" "s3://bench/models/$model_name/aliases/latest" "${s3env[@]}"
    echo "{\"kind\": \"cold\", \"precision\": \"$precision\", \"source\": \"s3\", \"seconds\": $ready_s}" >> "$results"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
echo "predictor load curves, $(date -u +%Y-%m-%d), threads $THREADS, $(nproc) CPUs, version $version"
.venv-ref/bin/python scripts/bench_load.py report "$results" "$OUT"
