#!/usr/bin/env bash
# Builds the stack's images on this Docker Engine without pulling anything: the Debian base
# (debootstrap + docker import, scripts/docker/base-image.sh), then the predictor and trainer
# images from runtime trees of binaries built here (the Dockerfiles' `prebuilt` targets), and the
# Python tools image (moto S3 server, load client). Prints each image's size, what takes the space
# and the build times.
#   scripts/docker-images.sh [PROFILE=release|dev|tools] [TAG=latest]
# PROFILE dev takes the binaries `cargo build --bins` made (the test suite's; opt-level 1 for our
# crates, stripped of debug info); release builds optimised ones. tools builds only the base and
# the tools image (network, hardly any CPU: the test suite builds them while it compiles).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PROFILE="${1:-release}"; TAG="${2:-latest}"
BASE=goemotions/debian:bookworm
# shellcheck disable=SC1091
source .cache/env.sh
t0=$(date +%s)
scripts/docker/base-image.sh "$BASE"
t_base=$(( $(date +%s) - t0 ))
# Each image gets only the files its Dockerfile copies as its build context (a tar on stdin):
# the whole checkout with both runtime trees is over 1 GB to send for every image.
build_from() { # DOCKERFILE TAG "PATHS..." [docker build args...]
  local file="$1" tag="$2" paths="$3"; shift 3
  # shellcheck disable=SC2086
  tar -c --owner=0 --group=0 "$file" $paths \
    | docker build -q -f "$file" --build-arg BASE_IMAGE="$BASE" -t "$tag" "$@" - >/dev/null
}
TOOLS_CONTEXT="proto/goemotions deploy/compose/tools"
if [ "$PROFILE" = tools ]; then
  t0=$(date +%s)
  build_from deploy/docker/tools.Dockerfile "goemotions-tools:$TAG" "$TOOLS_CONTEXT"
  echo "$BASE (${t_base} s) and goemotions-tools:$TAG ($(( $(date +%s) - t0 )) s) built"
  exit 0
fi

t0=$(date +%s)
case "$PROFILE" in
  release) cargo build -q --release --bins; dir=target/release ;;
  dev) cargo build -q --bins; dir=target/debug ;;
  *) echo "docker-images: PROFILE is release, dev or tools" >&2; exit 2 ;;
esac
t_bins=$(( $(date +%s) - t0 ))

t0=$(date +%s)
for bin in predictor trainer; do
  tree="deploy/docker/prebuilt/$bin"
  scripts/assemble-runtime.sh "$tree" "$dir/$bin" >/dev/null
  strip --strip-debug "$tree/bin/$bin"
done
# The trainer carries the encoder it fine-tunes and the splits it trains on (CC BY 4.0).
mkdir -p deploy/docker/prebuilt/trainer/models deploy/docker/prebuilt/trainer/data
cp -r "$GOEMOTIONS_BASE_MODEL" deploy/docker/prebuilt/trainer/models/
cp -r "$GOEMOTIONS_DATA_DIR" deploy/docker/prebuilt/trainer/data/
t_trees=$(( $(date +%s) - t0 ))

build() { # NAME DOCKERFILE "CONTEXT PATHS" [docker build args...]
  local name="$1" file="$2" paths="$3"; shift 3
  local t0; t0=$(date +%s)
  build_from "$file" "goemotions-$name:$TAG" "$paths" "$@"
  echo "$name $(( $(date +%s) - t0 ))"
}
times=$(
  build predictor deploy/docker/predictor.Dockerfile deploy/docker/prebuilt/predictor --target prebuilt
  build trainer deploy/docker/trainer.Dockerfile deploy/docker/prebuilt/trainer --target prebuilt
  build tools deploy/docker/tools.Dockerfile "$TOOLS_CONTEXT"
)
size() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1/1e6}'; }
du_mb() { du -sm "$1" | cut -f1; }
echo
echo "| image | size | build (s) | what takes the space |"
echo "|---|---:|---:|---|"
echo "| $BASE | $(size "$BASE") | $t_base | Debian bookworm minbase + ca-certificates |"
lib_mb=$(du_mb deploy/docker/prebuilt/predictor/lib); bin_mb=$(du_mb deploy/docker/prebuilt/predictor/bin)
echo "| goemotions-predictor:$TAG | $(size "goemotions-predictor:$TAG") | $(echo "$times" | awk '$1=="predictor"{print $2}') | libtorch (CPU) ${lib_mb} MB, predictor ${bin_mb} MB, base |"
lib_mb=$(du_mb deploy/docker/prebuilt/trainer/lib); bin_mb=$(du_mb deploy/docker/prebuilt/trainer/bin)
echo "| goemotions-trainer:$TAG | $(size "goemotions-trainer:$TAG") | $(echo "$times" | awk '$1=="trainer"{print $2}') | libtorch ${lib_mb} MB, encoder $(du_mb deploy/docker/prebuilt/trainer/models) MB, data $(du_mb deploy/docker/prebuilt/trainer/data) MB, trainer ${bin_mb} MB, base |"
echo "| goemotions-tools:$TAG | $(size "goemotions-tools:$TAG") | $(echo "$times" | awk '$1=="tools"{print $2}') | Python 3.11, moto, grpcio |"
echo
echo "binaries ($PROFILE): ${t_bins}s; runtime trees: ${t_trees}s"
