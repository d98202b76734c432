#!/usr/bin/env bash
# Assembles a binary's runtime file tree — the same tree the container images hold — and proves
# it complete: OUT/bin/<binary>, OUT/lib/torch/lib/* and OUT/lib/nvidia/*/lib/* (only the
# libraries ldd resolves into the torch install). The binaries find libtorch through their rpath
# ($ORIGIN/../lib/torch/lib), with no LD_LIBRARY_PATH.
#
#   scripts/assemble-runtime.sh OUT [BINARY=target/release/predictor]
#   scripts/assemble-runtime.sh --check OUT CHECKPOINT_URI   # also serve a request from OUT
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHECK=0
if [ "${1:-}" = --check ]; then CHECK=1; shift; fi
OUT="${1:?usage: assemble-runtime.sh [--check] OUT [BINARY | CHECKPOINT_URI]}"
if [ "$CHECK" = 1 ]; then BIN="$ROOT/target/release/predictor"; MODEL="${2:?checkpoint URI}"; else BIN="${2:-$ROOT/target/release/predictor}"; fi
[ -x "$BIN" ] || { echo "assemble-runtime: $BIN not built (cargo build --release)" >&2; exit 1; }
name="$(basename "$BIN")"
rm -rf "$OUT" && mkdir -p "$OUT/bin"
cp "$BIN" "$OUT/bin/$name"
# Copy every library resolved inside a site-packages tree, keeping its layout below site-packages.
ldd "$BIN" | awk '/=> \// {print $3}' | while read -r lib; do
  real="$(readlink -f "$lib")"
  case "$real" in
    */site-packages/*)
      rel="${real#*/site-packages/}"
      mkdir -p "$OUT/lib/$(dirname "$rel")"
      cp "$real" "$OUT/lib/$rel"
      ;;
  esac
done
# Everything must resolve inside OUT (or the base system), never in the build's venv.
missing=$(env -u LD_LIBRARY_PATH ldd "$OUT/bin/$name" | grep -E "not found" || true)
outside=$(env -u LD_LIBRARY_PATH ldd "$OUT/bin/$name" | awk '/=> \// {print $3}' | grep site-packages | grep -v "^$OUT" || true)
if [ -n "$missing" ] || [ -n "$outside" ]; then
  echo "assemble-runtime: unresolved or outside libraries:" >&2; echo "$missing$outside" >&2; exit 1
fi
echo "runtime tree: $OUT ($(du -sh "$OUT" | cut -f1))"
[ "$CHECK" = 1 ] || exit 0

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
env -u LD_LIBRARY_PATH "$OUT/bin/predictor" serve --model "$MODEL" --listen "127.0.0.1:$port" \
  --metrics-listen "127.0.0.1:$mport" --device cpu > "$OUT.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if env -u LD_LIBRARY_PATH "$OUT/bin/predictor" classify --addr "http://127.0.0.1:$port" "what a great day" 2>/dev/null; then
    echo "served a request from $OUT"; exit 0
  fi
  sleep 0.3
done
cat "$OUT.log" >&2
echo "assemble-runtime: the assembled predictor did not serve" >&2
exit 1
