#!/usr/bin/env bash
# Memory soak of the predictor: for each precision, a fresh predictor (release build, default
# flags but the precision and the threads) serving CHECKPOINT gets SECONDS of mixed traffic from
# Python grpcio clients (random batch sizes 1–64, random lengths 3–160 words, some streams;
# scripts/soak_memory.py), then 30 s idle. Prints RSS every 10 s, a summary table (start, peak,
# end, idle RSS, growth over the second half in MiB/min) and writes output/soak/<precision>.json
# plus output/soak/rss.svg. The manifests' memory request/limit come from this soak's peaks.
#   scripts/soak-memory.sh [CHECKPOINT] [SECONDS=600] [PRECISIONS=fp32,bf16] [THREADS=2]
# Without CHECKPOINT it trains a small one (the model's size, not its quality, sets memory).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${1:-}"; SECONDS_TOTAL="${2:-600}"; PRECISIONS="${3:-fp32,bf16}"; THREADS="${4:-2}"
scripts/setup.sh --with-clients >/dev/null
# shellcheck disable=SC1091
source .cache/env.sh
cargo build -q --release --bin trainer --bin predictor
OUT=output/soak
mkdir -p "$OUT"
WORK="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
if [ -z "$MODEL" ]; then
  ./target/release/trainer train --train-limit 200 --dev-limit 100 --test-limit 50 --epochs 1 --baseline false \
    --threads "$THREADS" --device cpu --registry "$WORK/registry" --report-dir "$WORK/report" >/dev/null 2>&1
  MODEL="$WORK/registry/models/goemotions/aliases/latest"
fi
"$GRPC_PYTHON" -m grpc_tools.protoc -I proto --python_out="$WORK" --grpc_python_out="$WORK" \
  proto/goemotions/v1/predictor.proto
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs; $(date -u +%Y-%m-%d)"
failed=0
IFS=',' read -r -a precisions <<< "$PRECISIONS"
for precision in "${precisions[@]}"; do
  p=$(port)
  ./target/release/predictor serve --model "$MODEL" --listen "127.0.0.1:$p" --metrics-listen "127.0.0.1:$(port)" \
    --device cpu --threads "$THREADS" --precision "$precision" > "$WORK/predictor-$precision.log" 2>&1 &
  pid=$!
  until ./target/release/predictor info --addr "http://127.0.0.1:$p" >/dev/null 2>&1; do sleep 0.2; done
  echo "== $precision (pid $pid), ${SECONDS_TOTAL}s of traffic, then 30 s idle"
  PYTHONPATH="$WORK" "$GRPC_PYTHON" scripts/soak_memory.py "127.0.0.1:$p" "$pid" "$GOEMOTIONS_DATA_DIR/test.tsv" \
    "$SECONDS_TOTAL" | tee "$WORK/soak-$precision.out" || failed=1
  tail -n1 "$WORK/soak-$precision.out" > "$OUT/$precision.json"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
done
python3 - "$OUT" "${precisions[@]}" <<'PYEOF'
import json, sys
out, precisions = sys.argv[1], sys.argv[2:]
runs = {p: json.load(open(f"{out}/{p}.json")) for p in precisions}
print("\n| precision | texts | failed calls | start RSS | peak RSS | end RSS | after 30 s idle | growth, 2nd half |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for p, r in runs.items():
    print(f"| {p} | {r['texts']} | {r['failed_calls']} | {r['start_rss_mib']:.0f} MiB | {r['peak_rss_mib']:.0f} MiB | "
          f"{r['end_rss_mib']:.0f} MiB | {r['idle_rss_mib']:.0f} MiB | {r['growth_second_half_mib_per_min']:+.1f} MiB/min |")
# RSS against time, one line per precision.
w, h, pad = 640, 300, 50
tmax = max(pt["t"] for r in runs.values() for pt in r["points"]) or 1
rmax = max(pt["rss_mib"] for r in runs.values() for pt in r["points"]) * 1.1 or 1
colours = ["#1f77b4", "#d62728", "#2ca02c"]
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
       f'<line x1="{pad}" y1="{h-pad}" x2="{w-10}" y2="{h-pad}" stroke="black"/>',
       f'<line x1="{pad}" y1="10" x2="{pad}" y2="{h-pad}" stroke="black"/>',
       f'<text x="{w/2}" y="{h-15}" text-anchor="middle">seconds</text>',
       f'<text x="12" y="{h/2}" transform="rotate(-90 12 {h/2})" text-anchor="middle">RSS (MiB)</text>']
for i in range(5):
    y = h - pad - i * (h - pad - 10) / 4
    svg.append(f'<text x="{pad-4}" y="{y+4}" text-anchor="end">{rmax*i/4:.0f}</text>')
    x = pad + i * (w - pad - 10) / 4
    svg.append(f'<text x="{x}" y="{h-pad+14}" text-anchor="middle">{tmax*i/4:.0f}</text>')
for k, (p, r) in enumerate(runs.items()):
    pts = " ".join(f"{pad + pt['t']/tmax*(w-pad-10):.1f},{h-pad - pt['rss_mib']/rmax*(h-pad-10):.1f}" for pt in r["points"])
    c = colours[k % len(colours)]
    svg.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{pts}"/>')
    svg.append(f'<text x="{w-120}" y="{20+14*k}" fill="{c}">{p}</text>')
svg.append("</svg>")
open(f"{out}/rss.svg", "w").write("\n".join(svg))
print(f"\nwrote {out}/rss.svg")
PYEOF
[ "$failed" = 0 ] || { echo "a soak had failed calls (see failed_calls and last_error above)" >&2; exit 1; }
