#!/usr/bin/env bash
# The test suite, from a fresh machine: set-up (venv + torch, model, data, s3s-fs, moto, buf,
# grpcio), the gate (rustfmt, clippy with warnings as errors), offline validation of the
# Kubernetes overlays, the binaries the end-to-end tests start, every test of the workspace, then
# the stack's cases in containers (swarm mode) when a Docker daemon answers.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh --with-s3 --with-clients
# shellcheck disable=SC1091
source .cache/env.sh
# The stack's base and tools images take the network, not the CPU: built while the code compiles.
images_job=""
if docker info >/dev/null 2>&1; then
  scripts/docker-images.sh tools > .cache/docker-tools.log 2>&1 &
  images_job=$!
fi
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
scripts/validate-k8s.sh | grep -v '^INFO'
cargo build --bins
cargo test --workspace --no-fail-fast "$@" 2>&1
if [ -n "$images_job" ]; then
  wait "$images_job" || echo "base/tools images failed (below); container-cases.sh builds them again"
  cat .cache/docker-tools.log
fi
scripts/container-cases.sh dev
