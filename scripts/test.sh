#!/usr/bin/env bash
# The test suite, from a fresh machine: set-up (venv + torch, model, data, s3s-fs, moto, buf,
# grpcio), the gate (rustfmt, clippy with warnings as errors), offline validation of the
# Kubernetes overlays, the binaries the end-to-end tests start, every test of the workspace, then
# the stack's cases in containers (swarm mode) when a Docker daemon answers.
#
# Clippy runs inside the one build: clippy-driver compiles our crates (lints with warnings as
# errors, then code generation) for every target, and the dependencies compile once. `cargo
# clippy` would first check every dependency in a build of its own, about 8 minutes on 2 cores.
# The variables are exported so every cargo call below (and the scripts and tests that build)
# reuses the same artifacts.
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
RUSTC_WORKSPACE_WRAPPER="$(command -v clippy-driver)" \
  || { echo "test.sh: clippy-driver not found (rustup component add clippy)" >&2; exit 1; }
export RUSTC_WORKSPACE_WRAPPER
# clippy-driver's argument list, as `cargo clippy -- -D warnings` passes it.
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
cargo build --workspace --all-targets
scripts/validate-k8s.sh | grep -v '^INFO'
cargo test --workspace --no-fail-fast "$@" 2>&1
if [ -n "$images_job" ]; then
  wait "$images_job" || echo "base/tools images failed (below); container-cases.sh builds them again"
  cat .cache/docker-tools.log
fi
scripts/container-cases.sh dev
