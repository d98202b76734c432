#!/usr/bin/env bash
# The chaos report: adversarial cases against real predictor and trainer processes and real S3
# servers (s3s-fs, moto), loopback only, bounded in count and time (≈ 6 minutes on 2 cores).
# Prints a markdown table case → expected → observed; exits non-zero if a case failed.
#   scripts/chaos.sh [predictor|trainer|all] [WORK_DIR]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh --with-s3 >/dev/null
# shellcheck disable=SC1091
source .cache/env.sh
cargo build -q --bins
exec ./target/debug/chaos "$@"
