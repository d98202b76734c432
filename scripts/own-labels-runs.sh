#!/usr/bin/env bash
# GoEmotions as other label sets, trained with the default recipe as their own classifiers (the
# issue "labels as data", item 6 b and c), beside the 28-label model's served groupings:
#   ekman       multi-label, Ekman's 6 emotions + neutral, trained directly
#   single28    single-label, 28-way, the texts with exactly one label
#   sentiment4  single-label, positive / negative / ambiguous / neutral
# Prints one table: test macro-F1 (and accuracy for single-label) of each, and the 28-label model's
# served Ekman and sentiment macro-F1 when REFERENCE_REPORT (its report.json) is given.
#   scripts/own-labels-runs.sh [OUT=output/own-labels] [trainer train flags...]
# On 2 CPU cores each full run takes about as long as the main job's training (~25 min);
# `--train-limit 4000 --epochs 1` is a quick look.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${1:-output/own-labels}"; shift || true
scripts/setup.sh >/dev/null
# shellcheck disable=SC1091
source .cache/env.sh
cargo build -q --release --bin trainer
python3 scripts/relabel_goemotions.py "$GOEMOTIONS_DATA_DIR" "$OUT/data"
for set in ekman single28 sentiment4; do
  target/release/trainer train --data-dir "$OUT/data/$set" --registry "$OUT/registry" \
    --model-name "$set" --report-dir "$OUT/report-$set" --base-model "$GOEMOTIONS_BASE_MODEL" "$@"
done
python3 - "$OUT" "${REFERENCE_REPORT:-}" <<'EOF'
import json, sys
out, reference = sys.argv[1], sys.argv[2]
print(f"\n| label set | problem | test macro-F1 | test accuracy |\n|---|---|---:|---:|")
for name in ("ekman", "single28", "sentiment4"):
    r = json.load(open(f"{out}/report-{name}/report.json"))["fine_tuned"]
    e = r["at_per_label"]
    kind = "single-label" if r.get("single_label") else "multi-label"
    acc = f"{e['subset_accuracy']:.4f}" if r.get("single_label") else "–"
    print(f"| {name} | {kind} | {e['macro_f1']:.4f} | {acc} |")
if reference:
    for g in json.load(open(reference)).get("served_groups", []):
        print(f"| 28-label model, served {g['grouping']} | multi-label | {g['macro_f1']:.4f} | – |")
EOF
