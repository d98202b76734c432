#!/usr/bin/env bash
# A separate venv with the full PyPI torch 2.11.0 + transformers + scikit-learn + Captum, for the
# Python reference scripts, benchmarks and checks (not needed by the build or the suite).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -x "$ROOT/.venv-ref/bin/python" ] || python3 -m venv "$ROOT/.venv-ref"
"$ROOT/.venv-ref/bin/python" -c "import torch, transformers, sklearn, onnxruntime, onnx, captum" 2>/dev/null \
  || "$ROOT/.venv-ref/bin/pip" install -q torch==2.11.0 transformers safetensors scikit-learn numpy onnxruntime onnx captum
echo "$ROOT/.venv-ref ready"
