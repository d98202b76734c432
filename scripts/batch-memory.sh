#!/usr/bin/env bash
# Memory of `predictor batch` over a large input: ROWS rows made by repeating the GoEmotions test
# texts (default 1,000,000), scored with THREADS threads; the process's RSS is sampled every
# INTERVAL seconds and printed as a curve (elapsed s, rows scored, RSS MB), then start / peak /
# end and the slope over the second half. Bounded: stops the job after MAX_SECONDS (default 3600).
#   scripts/batch-memory.sh [CHECKPOINT=output/registry/models/goemotions/aliases/latest] [ROWS=1000000] [THREADS=2]
#   INTERVAL=15 MAX_SECONDS=3600 OUTPUT_FORMAT=jsonl PRECISION=auto
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${1:-$ROOT/output/registry/models/goemotions/aliases/latest}"
ROWS="${2:-1000000}"; THREADS="${3:-2}"
INTERVAL="${INTERVAL:-15}"; MAX_SECONDS="${MAX_SECONDS:-3600}"; OUTPUT_FORMAT="${OUTPUT_FORMAT:-jsonl}"; PRECISION="${PRECISION:-auto}"
scripts/setup.sh >/dev/null
# shellcheck disable=SC1091
source .cache/env.sh
cargo build -q --release --bin predictor
work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
python3 - "$GOEMOTIONS_DATA_DIR/test.tsv" "$work/in.jsonl" "$ROWS" <<'PY'
import json, sys
texts = [line.split("\t")[0] for line in open(sys.argv[1], encoding="utf-8")]
with open(sys.argv[2], "w", encoding="utf-8") as out:
    for i in range(int(sys.argv[3])):
        out.write(json.dumps({"id": i, "text": texts[i % len(texts)]}) + "\n")
PY
echo "input: $ROWS rows ($(du -h "$work/in.jsonl" | cut -f1)), threads $THREADS, precision $PRECISION, output $OUTPUT_FORMAT"
./target/release/predictor batch --model "$MODEL" --input "$work/in.jsonl" --id-column id --output "$work/out" \
  --output-format "$OUTPUT_FORMAT" --precision "$PRECISION" --device cpu --threads "$THREADS" --log-interval-secs "$INTERVAL" \
  > "$work/summary.txt" 2> "$work/batch.log" &
pid=$!
start=$(date +%s)
printf '%8s %10s %8s\n' seconds rows RSS_MB | tee "$work/curve.txt"
while kill -0 "$pid" 2>/dev/null; do
  rss=$(awk '/^VmRSS/{print int($2/1024)}' "/proc/$pid/status" 2>/dev/null || true)
  rows=$(grep -o 'rows=[0-9]*' "$work/batch.log" | tail -n1 | cut -d= -f2 || true)
  [ -n "$rss" ] && printf '%8d %10s %8d\n' $(( $(date +%s) - start )) "${rows:-0}" "$rss" | tee -a "$work/curve.txt"
  if [ $(( $(date +%s) - start )) -ge "$MAX_SECONDS" ]; then echo "stopping at MAX_SECONDS"; kill "$pid"; break; fi
  sleep "$INTERVAL"
done
wait "$pid" || true
cat "$work/summary.txt"
python3 - "$work/curve.txt" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
t = [int(r[0]) for r in rows]; rss = [int(r[2]) for r in rows]
if len(rss) >= 4:
    half = len(rss) // 2
    slope = (rss[-1] - rss[half]) / max(1, t[-1] - t[half]) * 60
    print(f"RSS: first sample {rss[0]} MB, peak {max(rss)} MB, last {rss[-1]} MB; "
          f"second half {rss[half]} -> {rss[-1]} MB ({slope:+.1f} MB/min)")
PY
