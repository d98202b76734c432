#!/usr/bin/env bash
# Builds here, into an ignored folder, everything a GPU run needs on a machine with no network
# and at most 64 MiB of files sent: the stripped trainer and predictor (xz-compressed), the base
# encoder with F16 weights (upcast on load), the GoEmotions splits (gzip), the Python reference
# scripts and run.sh, which finds the machine's own libtorch (its torch package's lib/) and runs
# training, benchmarks and the predictor, writing every figure into a given folder.
#
#   scripts/gpu-bundle.sh [--debug] [--no-build] [OUT=target/gpu-bundle]
#   # then, on the GPU machine:   OUT/run.sh RESULTS_DIR [--device cuda] [--sweep]
#   # or here on CPU, quickly:    OUT/run.sh RESULTS_DIR --device cpu --small
#
# --debug bundles the debug binaries uncompressed; --no-build takes the binaries as they are in
# target/ (the test does both, inside `cargo test`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PROFILE=release
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --debug) PROFILE=debug; shift ;;
    --no-build) BUILD=0; shift ;;
    *) break ;;
  esac
done
OUT="${1:-$ROOT/target/gpu-bundle}"
LIMIT_MIB=64

scripts/setup.sh >/dev/null
# shellcheck disable=SC1091
source .cache/env.sh
if [ "$BUILD" = 1 ]; then
  if [ "$PROFILE" = release ]; then cargo build -q --release --bin trainer --bin predictor; else cargo build -q --bin trainer --bin predictor; fi
fi
for b in trainer predictor; do
  [ -x "target/$PROFILE/$b" ] || { echo "gpu-bundle: target/$PROFILE/$b missing (build first)" >&2; exit 1; }
done

rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/model" "$OUT/data" "$OUT/scripts"
for b in trainer predictor; do
  strip -o "$OUT/bin/$b" "target/$PROFILE/$b"
  if [ "$PROFILE" = release ]; then xz -T0 -6 "$OUT/bin/$b"; fi
done
MODEL="$GOEMOTIONS_BASE_MODEL"
python3 scripts/half_safetensors.py "$MODEL/model.safetensors" "$OUT/model/model.safetensors" >/dev/null
for f in config.json tokenizer.json vocab.txt tokenizer_config.json special_tokens_map.json; do
  [ -f "$MODEL/$f" ] && cp "$MODEL/$f" "$OUT/model/"
done
for f in train.tsv dev.tsv test.tsv; do gzip -9 -c "$GOEMOTIONS_DATA_DIR/$f" > "$OUT/data/$f.gz"; done
cp "$GOEMOTIONS_DATA_DIR"/{emotions.txt,ekman_mapping.json,sentiment_dict.json} "$OUT/data/"
cp scripts/bench_train_transformers.py scripts/bench_infer_transformers.py scripts/gpu/sdpa_overhead.py scripts/quality_sweep.py "$OUT/scripts/"
cp scripts/gpu/run.sh "$OUT/run.sh"
chmod +x "$OUT/run.sh"
git describe --always --dirty > "$OUT/COMMIT" 2>/dev/null || echo unknown > "$OUT/COMMIT"

size_mib=$(du -sm "$OUT" | cut -f1)
echo "bundle $OUT: ${size_mib} MiB ($PROFILE binaries)"
if [ "$PROFILE" = release ] && [ "$size_mib" -gt "$LIMIT_MIB" ]; then
  echo "gpu-bundle: ${size_mib} MiB exceeds the ${LIMIT_MIB} MiB a run may carry" >&2
  exit 1
fi
