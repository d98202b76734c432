#!/usr/bin/env bash
# Guards the gRPC contract: `buf lint` on proto/ and `buf breaking` against the last released
# contract, proto/released/goemotions-v1.binpb (a buf image). A change that would break existing
# callers (a removed or renumbered field, a changed type, a renamed method...) fails here, and so
# in CI. When a new contract version is released on purpose: scripts/proto-check.sh --release.
#   scripts/proto-check.sh [--release] [PROTO_DIR=proto]
# BUF_BIN: the buf binary (scripts/setup.sh --with-clients installs it).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RELEASE=0
[ "${1:-}" = "--release" ] && { RELEASE=1; shift; }
PROTO="${1:-$ROOT/proto}"
BUF="${BUF_BIN:-$ROOT/.cache/tools/buf/bin/buf}"
[ -x "$BUF" ] || { echo "proto-check: no buf at $BUF (scripts/setup.sh --with-clients)" >&2; exit 2; }
AGAINST="$ROOT/proto/released/goemotions-v1.binpb"
cd "$PROTO"
"$BUF" lint
if [ "$RELEASE" = 1 ]; then
  "$BUF" build -o "$AGAINST"
  echo "released contract written to $AGAINST"
else
  "$BUF" breaking --against "$AGAINST"
fi
echo "contract OK: lint clean, compatible with proto/released/goemotions-v1.binpb"
