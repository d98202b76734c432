#!/usr/bin/env bash
# Batch scoring throughput: `predictor batch` on the GoEmotions test texts (as JSON Lines) beside
# the fastest Python sides a user would write on the same texts, checkpoint and threads: the
# length-sorted PyTorch loop in bf16 (bench_infer_transformers.py --loop-only) and ONNX Runtime
# dynamic int8 (bench_infer_quantized.py, which also gives PyTorch fp32, the quality reference).
# Each side counts its scoring loop, tokenization included, model loading excluded (ours: reading,
# tokenizing, scoring, labelling and writing the parts: the summary's "while scoring" rate).
# Ours runs once per precision of PRECISIONS (default "fp32 bf16"; bf16 needs a CPU with
# AVX512-BF16 or AMX to pay). Quality guard: test macro-F1 at the checkpoint's thresholds, computed
# from our output files, beside PyTorch fp32's (within 0.005). Runs interleaved REPEATS times;
# median and spread (min–max).
#   scripts/bench-batch.sh [CHECKPOINT=output/registry/models/goemotions/aliases/latest] [REPEATS=3] [THREADS=2]
#   PRECISIONS="fp32 bf16"
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${1:-$ROOT/output/registry/models/goemotions/aliases/latest}"
REPEATS="${2:-3}"; THREADS="${3:-2}"; PRECISIONS="${PRECISIONS:-fp32 bf16}"
scripts/setup.sh >/dev/null
scripts/setup-ref-venv.sh >/dev/null
# shellcheck disable=SC1091
source .cache/env.sh
cargo build -q --release --bin trainer --bin predictor
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
version=$(./target/release/trainer score --checkpoint "$MODEL" --device cpu x 2>/dev/null \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')
ckpt="$(dirname "$(dirname "$MODEL")")/versions/$version"
python3 - "$GOEMOTIONS_DATA_DIR/test.tsv" "$work/test.jsonl" <<'PY'
import json, sys
with open(sys.argv[2], "w", encoding="utf-8") as out:
    for i, line in enumerate(open(sys.argv[1], encoding="utf-8")):
        text, labels, _ = line.rstrip("\n").split("\t")
        out.write(json.dumps({"id": str(i), "text": text, "gold": labels}) + "\n")
PY
out="$work/runs.txt"
for r in $(seq 1 "$REPEATS"); do
for precision in $PRECISIONS; do
  rm -rf "$work/out"
  ./target/release/predictor batch --model "$ckpt" --input "$work/test.jsonl" --id-column id \
    --output "$work/out" --device cpu --threads "$THREADS" --precision "$precision" > "$work/summary.txt" 2> "$work/batch.log"
  rate=$(grep -o '[0-9.]* rows/s while scoring' "$work/summary.txt" | cut -d' ' -f1)
  f1=$(python3 - "$work/test.jsonl" "$work/out" "$ckpt/manifest.json" <<'PY'
import glob, json, sys
labels = json.load(open(sys.argv[3]))["labels"]
gold = {}
for line in open(sys.argv[1]):
    row = json.loads(line)
    gold[row["id"]] = {labels[int(x)] for x in row["gold"].split(",")}
pred = {}
for path in glob.glob(sys.argv[2] + "/part-*.jsonl"):
    for line in open(path):
        row = json.loads(line)
        pred[row["id"]] = set(row["labels"])
assert set(pred) == set(gold), "every test text scored once"
f1s = []
for name in labels:
    tp = sum(1 for i in gold if name in pred[i] and name in gold[i])
    fp = sum(1 for i in gold if name in pred[i] and name not in gold[i])
    fn = sum(1 for i in gold if name not in pred[i] and name in gold[i])
    f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
print(f"{sum(f1s) / len(f1s):.4f}")
PY
)
  echo "rust batch $precision: $rate texts/s; macro-F1 $f1" | tee -a "$out"
done
  .venv-ref/bin/python scripts/bench_infer_transformers.py --checkpoint "$ckpt" --loop-only --precision bf16 \
    --texts "$GOEMOTIONS_DATA_DIR/test.tsv" --threads "$THREADS" 2>/dev/null | tail -n1 | tee -a "$out"
  .venv-ref/bin/python scripts/bench_infer_quantized.py --checkpoint "$ckpt" --texts "$GOEMOTIONS_DATA_DIR/test.tsv" \
    --threads "$THREADS" --sides torch-fp32,onnx-int8 2>/dev/null | grep "texts/s" | tee -a "$out"
done
python3 - "$out" "$THREADS" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    side = line.split(":")[0]
    rows.setdefault(side + " (texts/s)", []).append(float(re.search(r": ([0-9.]+) texts/s", line).group(1)))
    f1 = re.search(r"macro-F1 ([0-9.]+)", line)
    if f1:
        rows.setdefault(side + " test macro-F1", []).append(float(f1.group(1)))
print(f"\nthreads {sys.argv[2]}, GoEmotions test split (5,427 texts), one pass per run")
print("| measure | median (min–max) | runs |\n|---|---:|---:|")
med = {k: statistics.median(v) for k, v in rows.items()}
for k, v in rows.items():
    p = 4 if "macro-F1" in k else 1
    print(f"| {k} | {med[k]:.{p}f} ({min(v):.{p}f}–{max(v):.{p}f}) | {len(v)} |")
refs = [k for k in rows if k.endswith("(texts/s)") and not k.startswith("rust") and "fp32" not in k]
best = max(refs, key=lambda k: med[k])
for mine in [k for k in rows if k.startswith("rust") and k.endswith("(texts/s)")]:
    ours = rows[mine]
    name = mine.split(" (")[0]
    for ref in refs + ["torch-fp32 (texts/s)"]:
        q = rows[ref]
        overlap = min(ours) <= max(q) and min(q) <= max(ours)
        print(f"ratio {name} / {ref.split(' (')[0]}: {med[mine] / med[ref]:.2f}x"
              + (" (ranges overlap: within noise)" if overlap else "") + (" [best Python side]" if ref == best else ""))
    delta = med[name + " test macro-F1"] - med["torch-fp32 test macro-F1"]
    print(f"quality guard ({name} macro-F1 minus PyTorch fp32's): {delta:+.4f} " + ("met" if delta >= -0.005 else "MISSED"))
PY
