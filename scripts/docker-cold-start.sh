#!/usr/bin/env bash
# Cold start of the predictor image to its first answer, and its memory, on this Docker Engine.
# Each run: `docker run` of the image as deployed (read-only root filesystem, uid 10001, a tmpfs
# /tmp, the registry folder mounted read-only and the alias `latest` followed), then the first
# Classify answered over gRPC from the host (polled every 50 ms; the clock starts before
# `docker run`); RSS of the predictor process (/proc/PID/status) after the first answer and after
# 500 more texts of mixed lengths. Prints each run, then median [min–max] over RUNS.
#   scripts/docker-cold-start.sh REGISTRY_DIR [RUNS=3] [IMAGE=goemotions-predictor:latest]
# REGISTRY_DIR holds models/goemotions/aliases/latest.json (a trainer's --registry folder).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REGISTRY="$(cd "${1:?usage: docker-cold-start.sh REGISTRY_DIR [RUNS] [IMAGE]}" && pwd)"
RUNS="${2:-3}"; IMAGE="${3:-goemotions-predictor:latest}"
CLIENT="$ROOT/target/release/predictor"
[ -x "$CLIENT" ] || CLIENT="$ROOT/target/debug/predictor"
[ -x "$CLIENT" ] || { echo "docker-cold-start: build the predictor first (cargo build --release)" >&2; exit 1; }
[ -f "$REGISTRY/models/goemotions/aliases/latest.json" ] || { echo "docker-cold-start: no alias latest under $REGISTRY" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.3f", b - a}'; }
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
addr="http://127.0.0.1:$port"
texts=("thanks!" "I hate this so much, it ruined my whole week and I am still angry about it" "wow" \
  "so proud of you, that was the best speech I have heard in years and everyone in the room agreed" "ok")
results=()
for run in $(seq 1 "$RUNS"); do
  t0=$(now)
  cid=$(docker run -d --rm --read-only --tmpfs /tmp -p "127.0.0.1:$port:50051" \
    -v "$REGISTRY:/registry:ro" -e GOEMOTIONS_ALLOW_UNAUTHENTICATED=true \
    "$IMAGE" serve --model /registry/models/goemotions/aliases/latest)
  trap 'docker rm -f "$cid" >/dev/null 2>&1 || true' EXIT
  until "$CLIENT" classify --addr "$addr" "cold start" >/dev/null 2>&1; do
    if ! docker inspect "$cid" >/dev/null 2>&1; then echo "docker-cold-start: the container exited" >&2; exit 1; fi
    if awk -v s="$(since "$t0")" 'BEGIN {exit !(s > 300)}'; then echo "docker-cold-start: no answer in 300 s" >&2; exit 1; fi
    sleep 0.05
  done
  first=$(since "$t0")
  pid=$(docker inspect -f '{{.State.Pid}}' "$cid")
  rss_first=$(rss_mb "$pid")
  for _ in $(seq 1 100); do "$CLIENT" classify --addr "$addr" "${texts[@]}" >/dev/null 2>&1; done
  rss_after=$(rss_mb "$pid")
  user=$(docker exec "$cid" id -u)
  docker rm -f "$cid" >/dev/null
  printf 'run %d: first answer %.2f s after docker run; RSS %s MiB after it, %s MiB after 500 texts (uid %s)\n' \
    "$run" "$first" "$rss_first" "$rss_after" "$user"
  results+=("$first $rss_first $rss_after")
done
printf '%s\n' "${results[@]}" | python3 -c '
import statistics, sys
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
for i, name, unit in ((0, "cold start to first answer", "s"), (1, "RSS after the first answer", "MiB"), (2, "RSS after 500 texts", "MiB")):
    v = [r[i] for r in rows]
    print(f"{name}: median {statistics.median(v):.2f} {unit} [{min(v):.2f}–{max(v):.2f}] over {len(v)} runs")
'
