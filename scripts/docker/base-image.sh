#!/usr/bin/env bash
# Makes the Debian bookworm base image where no registry can be pulled from: debootstrap (minbase
# + ca-certificates, from Debian's packages) into a folder, then `docker import`. The result stands
# in for debian:bookworm-slim in the Dockerfiles (--build-arg BASE_IMAGE=...). The image trusts
# the certificate authorities this host added locally (/usr/local/share/ca-certificates, e.g. an
# egress proxy's), so builds that fetch over HTTPS (pip in tools.Dockerfile) work where the host's
# do. Idempotent: does nothing when the image exists.
#   scripts/docker/base-image.sh [IMAGE=goemotions/debian:bookworm] [MIRROR=http://deb.debian.org/debian]
set -euo pipefail
IMAGE="${1:-goemotions/debian:bookworm}"
MIRROR="${2:-http://deb.debian.org/debian}"
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "$IMAGE exists"; exit 0
fi
command -v debootstrap >/dev/null || {
  echo "base-image: installing debootstrap (Debian package)" >&2
  apt-get install -y -q debootstrap >/dev/null || { echo "base-image: apt-get install debootstrap failed" >&2; exit 1; }
}
ROOTFS="$(mktemp -d)"
trap 'rm -rf "$ROOTFS"' EXIT
echo "base-image: debootstrap bookworm (minbase) from $MIRROR" >&2
debootstrap --variant=minbase --include=ca-certificates bookworm "$ROOTFS" "$MIRROR" >/dev/null
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
  chroot "$ROOTFS" update-ca-certificates >/dev/null 2>&1 || { echo "base-image: update-ca-certificates failed" >&2; exit 1; }
fi
# What a slim base holds: no package caches or lists, no docs.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
  "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/*
echo "deb $MIRROR bookworm main" > "$ROOTFS/etc/apt/sources.list"
tar -C "$ROOTFS" -c . | docker import --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
echo "$IMAGE: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
