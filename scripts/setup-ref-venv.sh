#!/usr/bin/env bash
# A separate venv with the full PyPI torch 2.11.0 + transformers + scikit-learn, for the Python
# reference scripts and benchmarks (not needed by the build or the tests).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -x "$ROOT/.venv-ref/bin/python" ] || python3 -m venv "$ROOT/.venv-ref"
"$ROOT/.venv-ref/bin/python" -c "import torch, transformers, sklearn, onnxruntime, onnx" 2>/dev/null \
  || "$ROOT/.venv-ref/bin/pip" install -q torch==2.11.0 transformers safetensors scikit-learn numpy onnxruntime onnx
echo "$ROOT/.venv-ref ready"
