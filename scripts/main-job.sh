#!/usr/bin/env bash
# The main job, from a fresh machine: set-up, release build, fine-tune on the full GoEmotions
# train split (+ the TF-IDF baseline), publish the checkpoint to the file:// registry under
# output/registry (alias "latest"), write output/report/{report.md,report.json,per_label_f1.svg,reliability.svg},
# then serve the new checkpoint with the predictor and classify sample texts over gRPC.
#
# Extra arguments go to `trainer train` (see `target/release/trainer train --help`), e.g.
#   scripts/main-job.sh --train-limit 2000 --epochs 1      # a quick run
# Environment: everything `trainer train --help` lists (GOEMOTIONS_*), TORCH_VARIANT=cuda for GPUs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh
# shellcheck disable=SC1091
source .cache/env.sh
cargo build --release --bin trainer --bin predictor

REGISTRY="${GOEMOTIONS_REGISTRY:-$ROOT/output/registry}"
MODEL_NAME="${GOEMOTIONS_MODEL_NAME:-goemotions}"
mkdir -p output
./target/release/trainer train --registry "$REGISTRY" --model-name "$MODEL_NAME" "$@"

ADDR=127.0.0.1:${PREDICTOR_PORT:-50051}
./target/release/predictor serve --model "$REGISTRY/models/$MODEL_NAME/aliases/latest" \
  --listen "$ADDR" --metrics-listen 127.0.0.1:${PREDICTOR_METRICS_PORT:-9090} > output/predictor.log 2>&1 &
PREDICTOR_PID=$!
trap 'kill $PREDICTOR_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  ./target/release/predictor info --addr "http://$ADDR" > output/model-info.txt 2>/dev/null && break
  kill -0 $PREDICTOR_PID 2>/dev/null || { cat output/predictor.log; echo "predictor exited" >&2; exit 1; }
  sleep 0.5
done
head -n 2 output/model-info.txt
./target/release/predictor classify --addr "http://$ADDR" \
  "I'm so happy that I finally passed the deep learning exam!" \
  "This is the worst customer service I have ever experienced." \
  "Wow, I did not see that coming. What happened?" \
  "Thank you so much, you really made my day." \
  "I'm scared about the results tomorrow."
kill -TERM $PREDICTOR_PID
wait $PREDICTOR_PID || true
trap - EXIT
echo "report: output/report/report.md"
