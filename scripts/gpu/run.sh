#!/usr/bin/env bash
# The GPU run, shipped inside the bundle that scripts/gpu-bundle.sh builds. On a machine with
# Python + torch (and transformers for the reference side) and no network, it:
#   1. trains the default recipe (3 epochs, full data) with the trainer on DEVICE, publishes to a
#      local registry and writes the report;
#   2. measures training throughput, trainer vs transformers on the same device, model, data,
#      batch size, max length, precision (the precision the trainer resolved) and batching
#      (length-bucketed vs bucketed, plain vs plain);
#   3. serves the checkpoint with the predictor on DEVICE and on the CPU: texts/s at 8 streams and
#      idle single-text latency;
#   4. with --sweep, trains up to 4 recipe variants (selected on dev only).
# Every figure goes into RESULTS_DIR/summary.md (+ summary.json, report/, logs/).
#
#   run.sh RESULTS_DIR [--device cuda|cpu] [--small] [--sweep] [--bench-steps N]
# Environment: PYTHON (a Python with torch; default python3), TORCH_LIB (libtorch lib/ folder,
# instead of asking Python).
# --small: tiny limits (the test runs the bundle this way on CPU so it never rots).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RES="${1:?usage: run.sh RESULTS_DIR [--device cuda|cpu] [--small] [--sweep] [--bench-steps N]}"
shift
DEVICE=cuda; SMALL=0; SWEEP=0; STEPS=200
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --small) SMALL=1; shift ;;
    --sweep) SWEEP=1; shift ;;
    --bench-steps) STEPS="$2"; shift 2 ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$RES/logs"
RES="$(cd "$RES" && pwd)"
PY="${PYTHON:-python3}"
fail() { echo "run.sh: $*" >&2; exit 1; }

# libtorch: the machine's own torch package (its lib/ holds libtorch_cpu.so and, on GPU
# machines, libtorch_cuda.so, which the binaries open at start), or TORCH_LIB when given.
if [ -z "${TORCH_LIB:-}" ]; then
  TORCH_DIR="$("$PY" -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null)" \
    || fail "$PY cannot import torch (set PYTHON to a Python with torch, or TORCH_LIB to libtorch's lib/)"
  TORCH_LIB="$TORCH_DIR/lib"
fi
[ -f "$TORCH_LIB/libtorch_cpu.so" ] || fail "no libtorch_cpu.so in $TORCH_LIB"
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

WORK="$RES/work"
mkdir -p "$WORK/bin" "$WORK/data"
python3 - "$HERE" "$WORK" <<'PYEOF'
import gzip, lzma, os, shutil, sys
here, work = sys.argv[1:]
for name in os.listdir(f"{here}/bin"):
    packed = name.endswith(".xz")
    dst = f"{work}/bin/{name[:-3] if packed else name}"
    with (lzma.open if packed else open)(f"{here}/bin/{name}", "rb") as i, open(dst, "wb") as o:
        shutil.copyfileobj(i, o)
    os.chmod(dst, 0o755)
for name in os.listdir(f"{here}/data"):
    src = f"{here}/data/{name}"
    if name.endswith(".gz"):
        with gzip.open(src, "rb") as i, open(f"{work}/data/{name[:-3]}", "wb") as o:
            shutil.copyfileobj(i, o)
    else:
        shutil.copy(src, f"{work}/data/{name}")
PYEOF
T="$WORK/bin/trainer"
P="$WORK/bin/predictor"
export GOEMOTIONS_DATA_DIR="$WORK/data" GOEMOTIONS_BASE_MODEL="$HERE/model" RUST_LOG="${RUST_LOG:-info}"
THREADS="$(nproc)"
LIMITS=()
EPOCHS=()
BENCH_SECONDS=60
IDLE=300
if [ "$SMALL" = 1 ]; then
  LIMITS=(--train-limit 200 --dev-limit 100 --test-limit 100)
  EPOCHS=(--epochs 1)
  STEPS=3; BENCH_SECONDS=5; IDLE=20
fi
"$T" --version > "$RES/logs/versions.txt"
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' >> "$RES/logs/versions.txt" 2>&1 || true
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$RES/logs/gpu.txt" 2>&1 || true

echo "== 1. training (device $DEVICE)" >&2
start=$(date +%s.%N)
"$T" train --device "$DEVICE" --threads "$THREADS" --registry "$WORK/registry" --report-dir "$RES/report" \
  --progress-interval-secs 20 "${LIMITS[@]}" "${EPOCHS[@]}" > "$RES/logs/train.out" 2> "$RES/logs/train.log" \
  || { tail -n 30 "$RES/logs/train.log" >&2; fail "training failed (logs/train.log)"; }
echo "$start $(date +%s.%N)" > "$RES/logs/train.wall"

echo "== 2. training throughput, trainer vs transformers" >&2
have_transformers=0
"$PY" -c 'import transformers' 2>/dev/null && have_transformers=1
: > "$RES/logs/bench-train.txt"
for batching in bucketed plain; do
  flag=(); [ "$batching" = plain ] && flag=(--no-bucketing)
  line=$("$T" bench --device "$DEVICE" --threads "$THREADS" --steps "$STEPS" "${flag[@]}" 2>> "$RES/logs/bench.log" | tail -n1)
  echo "rust $batching $line" >> "$RES/logs/bench-train.txt"
  precision=$(echo "$line" | sed -n 's/.*precision \([a-z0-9]*\).*/\1/p')
  if [ "$have_transformers" = 1 ]; then
    py_device=cpu; [ "$DEVICE" != cpu ] && py_device=cuda
    line=$("$PY" "$HERE/scripts/bench_train_transformers.py" --model "$HERE/model" --data "$WORK/data/train.tsv" \
      --steps "$STEPS" --threads "$THREADS" --device "$py_device" --precision "${precision:-fp32}" \
      --batching "$batching" 2>> "$RES/logs/bench.log" | tail -n1)
    echo "python $batching $line" >> "$RES/logs/bench-train.txt"
  fi
done

echo "== 3. predictor on $DEVICE and on cpu" >&2
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
: > "$RES/logs/bench-predictor.txt"
for where in "$DEVICE" cpu; do
  [ "$where" = cpu ] && [ "$DEVICE" = cpu ] && [ -s "$RES/logs/bench-predictor.txt" ] && break
  p1=$(port); p2=$(port)
  "$P" serve --model "$WORK/registry/models/goemotions/aliases/latest" --device "$where" --threads "$THREADS" \
    --listen "127.0.0.1:$p1" --metrics-listen "127.0.0.1:$p2" > "$RES/logs/predictor-$where.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 240); do "$P" info --addr "http://127.0.0.1:$p1" > /dev/null 2>&1 && break; sleep 0.5; done
  line=$("$P" bench --addr "http://127.0.0.1:$p1" --texts "$WORK/data/test.tsv" --streams 8 \
    --max-seconds "$BENCH_SECONDS" --idle-requests "$IDLE" --pid "$pid" 2>> "$RES/logs/bench.log" | tr '\n' ' ')
  echo "$where $line" >> "$RES/logs/bench-predictor.txt"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
done

if [ "$SWEEP" = 1 ]; then
  echo "== 4. recipe sweep (selected on dev)" >&2
  variants=("lr-2e-4:--lr 2e-4" "lr-5e-5-4ep:--lr 5e-5 --epochs 4" "pos-weight-sqrt:--pos-weight sqrt" "seed-7:--seed 7")
  budget=()
  [ "$SMALL" = 1 ] && { variants=("${variants[@]:0:2}"); budget=(--max-steps 5); }
  for v in "${variants[@]}"; do
    name="${v%%:*}"; read -r -a extra <<< "${v#*:}"
    "$T" train --device "$DEVICE" --threads "$THREADS" --registry "$WORK/registry" --model-name "sweep-$name" \
      --alias - --baseline false --report-dir "$RES/sweep/$name" "${LIMITS[@]}" "${budget[@]}" "${extra[@]}" \
      > "$RES/logs/sweep-$name.out" 2> "$RES/logs/sweep-$name.log" || echo "sweep $name failed" >&2
  done
fi

python3 - "$RES" "$WORK" "$DEVICE" "$HERE" <<'PYEOF'
import glob, json, os, re, statistics, sys, time
res, work, device, here = sys.argv[1:]
logs = f"{res}/logs"
read = lambda p: open(p).read() if os.path.exists(p) else ""
report = json.load(open(f"{res}/report/report.json"))
ft = report["fine_tuned"]
start, end = map(float, read(f"{logs}/train.wall").split())
gpu = read(f"{logs}/gpu.txt").strip() or "none (CPU run)"
summary = {
    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    "gpu": gpu, "device": report["device"], "precision": report["precision"],
    "commit": read(f"{here}/COMMIT").strip(), "versions": read(f"{logs}/versions.txt").strip(),
    "training": {
        "wall_seconds": end - start, "train_seconds": ft["train_seconds"],
        "samples_per_second": ft["train_samples_per_second"],
        "test_macro_f1_per_label": ft["at_per_label"]["macro_f1"],
        "test_micro_f1_global": ft["at_global"]["micro_f1"],
        "global_threshold": ft["global_threshold"], "examples": report.get("split_sizes"),
        "epochs": len(report["history"]), "best_epoch": report["best_epoch"],
    },
    "train_throughput": [], "predictor": [], "sweep": [],
}
for line in read(f"{logs}/bench-train.txt").splitlines():
    side, batching = line.split()[:2]
    num = lambda pat: float(m.group(1)) if (m := re.search(pat, line)) else None
    summary["train_throughput"].append({
        "side": side, "batching": batching, "samples_per_second": num(r"([0-9.]+) samples/s"),
        "real_tokens_per_second": num(r"([0-9.]+) real tokens/s"),
        "padded_tokens_per_second": num(r"([0-9.]+) padded tokens/s"),
        "precision": (re.search(r"precision (\w+)", line) or [None, None])[1]})
for line in read(f"{logs}/bench-predictor.txt").splitlines():
    where = line.split()[0]
    num = lambda pat: float(m.group(1)) if (m := re.search(pat, line)) else None
    summary["predictor"].append({
        "device": where, "texts_per_second_8_streams": num(r"= ([0-9.]+) texts/s"),
        "idle_p50_ms": num(r"idle single-text p50 ([0-9.]+) ms"),
        "idle_p99_ms": num(r"idle single-text p50 [0-9.]+ ms p99 ([0-9.]+) ms"),
        "peak_rss": (re.search(r"peak RSS: (\S+ \S+)", line) or [None, None])[1]})
for path in sorted(glob.glob(f"{res}/sweep/*/report.json")):
    r = json.load(open(path))
    manifest = glob.glob(f"{work}/registry/models/sweep-{os.path.basename(os.path.dirname(path))}/versions/*/manifest.json")
    dev = json.load(open(manifest[0]))["metrics"].get("dev.macro_f1.per_label") if manifest else None
    summary["sweep"].append({"variant": os.path.basename(os.path.dirname(path)), "dev_macro_f1": dev,
                             "test_macro_f1": r["fine_tuned"]["at_per_label"]["macro_f1"]})
json.dump(summary, open(f"{res}/summary.json", "w"), indent=2)
t = summary["training"]
out = [f"# GPU run — {summary['date']}", "", f"GPU: {gpu}; device {summary['device']}; precision {summary['precision']}; commit {summary['commit']}", "",
       "## Default recipe, full data", "", "| wall time (s) | train samples/s | test macro-F1 (per-label) | test micro-F1 (global) | epochs (best) |", "|---:|---:|---:|---:|---:|",
       f"| {t['wall_seconds']:.0f} | {t['samples_per_second']:.1f} | {t['test_macro_f1_per_label']:.4f} | {t['test_micro_f1_global']:.4f} (t={t['global_threshold']:.2f}) | {t['epochs']} ({t['best_epoch']}) |", "",
       "## Training throughput (same model, data, batch 32, max-len 128, precision, batching)", "",
       "| side | batching | precision | samples/s | real tokens/s | padded tokens/s |", "|---|---|---|---:|---:|---:|"]
for r in summary["train_throughput"]:
    out.append(f"| {r['side']} | {r['batching']} | {r['precision']} | {r['samples_per_second']} | {r['real_tokens_per_second']} | {r['padded_tokens_per_second']} |")
by = {(r["side"], r["batching"]): r["samples_per_second"] for r in summary["train_throughput"]}
for b in ("bucketed", "plain"):
    if by.get(("rust", b)) and by.get(("python", b)):
        out.append(f"\nratio trainer/transformers ({b}): {by[('rust', b)] / by[('python', b)]:.2f}x")
out += ["", "## Predictor (8 streams over the test split, then idle single-text calls)", "",
        "| device | texts/s | idle p50 (ms) | idle p99 (ms) | peak RSS |", "|---|---:|---:|---:|---|"]
for r in summary["predictor"]:
    out.append(f"| {r['device']} | {r['texts_per_second_8_streams']} | {r['idle_p50_ms']} | {r['idle_p99_ms']} | {r['peak_rss']} |")
if summary["sweep"]:
    out += ["", "## Recipe sweep (select on dev; test shown for information)", "", "| variant | dev macro-F1 | test macro-F1 |", "|---|---:|---:|"]
    for r in summary["sweep"]:
        out.append(f"| {r['variant']} | {r['dev_macro_f1']} | {r['test_macro_f1']:.4f} |")
open(f"{res}/summary.md", "w").write("\n".join(out) + "\n")
print("\n".join(out))
PYEOF
