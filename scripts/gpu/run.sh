#!/usr/bin/env bash
# The GPU run, shipped inside the bundle that scripts/gpu-bundle.sh builds. On a machine with
# Python + torch (and transformers for the reference side) and no network, it:
#   1. trains the default recipe (3 epochs, full data) with the trainer on DEVICE, publishes to a
#      local registry and writes the report;
#   2. measures training throughput, trainer vs transformers on the same device, model, data,
#      batch size, max length, precision (each of --precisions) and exactly the same batches (the
#      Python side replays the batch file the trainer wrote), length-bucketed and plain, REPEATS
#      timed windows each in one process (median and spread); on CUDA also the trainer in bf16 with
#      the dispatcher's attention (what the direct memory-efficient kernel buys);
#   3. serves the checkpoint with the predictor on DEVICE (each precision) and on the CPU: texts/s
#      at 8 streams and idle single-text latency, REPEATS runs each;
#   4. with --sweep, the quality sweep (scripts/quality_sweep.py) of SWEEP_PLAN: recipe variants
#      with several seeds, selected on dev only, several at a time, stopped at the deadline;
#   5. with --phases ...,profile (CUDA): where the trainer's step time goes on the device — the
#      phase split with every launch synchronous and per-kernel GPU time (Nsight Compute) over
#      about one training step of the trainer and of transformers; with sdpa, the per-call cost of
#      bf16 attention for each mask form and backend, over changing and fixed shapes
#      (sdpa_overhead.py); with nsys, where the trainer's host time goes in CUDA API calls.
# A phase that fails is logged and the next one runs. Every figure goes into
# RESULTS_DIR/summary.md (+ summary.json, report/, logs/).
#
#   run.sh RESULTS_DIR [--device cuda|cpu] [--small] [--sweep] [--bench-steps N] [--repeats N]
#                      [--deadline-secs N] [--phases train,bench,predictor,sweep,sdpa,nsys,profile]
#                      [--batchings bucketed,plain] [--precisions fp32,bf16]
#                      [--predictor-seconds N] [--predictor-on cuda,cpu]
# Environment: PYTHON (a Python with torch; default python3), TORCH_LIB (libtorch lib/ folder,
# instead of asking Python), SWEEP_PLAN (quality_sweep.py steps separated by ';', e.g.
# "run --jobs 3 default:1,2; ensemble teacher=default-s1+default-s2; run distil:1,2"), SWEEP_OUT
# (its results folder: keep it across calls to resume), SWEEP_PRECISION, SWEEP_THREADS.
# --small: tiny limits (the test runs the bundle this way on CPU so it never rots).
# --deadline-secs: optional work (the sweep, the TF32 pair) is skipped or cut to end by then.
# --precisions: the bench and predictor pairs to run (default fp32,bf16 on CUDA, fp32 on CPU).
# --predictor-seconds: length of each predictor throughput run (default 20); --predictor-on: the
# devices the predictor is measured on (default the device, and the CPU too when that is a GPU).
# --phases: which phases run (default train,bench,predictor, plus sweep with --sweep); the
# predictor needs a trained checkpoint from this results folder.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RES="${1:?usage: run.sh RESULTS_DIR [--device cuda|cpu] [--small] [--sweep] [--bench-steps N] [--repeats N] [--deadline-secs N]}"
shift
DEVICE=cuda; SMALL=0; SWEEP=0; PREDICTOR_SECONDS=; PREDICTOR_ON=; STEPS=300; REPEATS=3; DEADLINE=0; PHASES=train,bench,predictor; BATCHINGS=bucketed,plain; PRECISIONS=
T0=$(date +%s)
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --small) SMALL=1; shift ;;
    --sweep) SWEEP=1; shift ;;
    --bench-steps) STEPS="$2"; shift 2 ;;
    --repeats) REPEATS="$2"; shift 2 ;;
    --deadline-secs) DEADLINE="$2"; shift 2 ;;
    --phases) PHASES="$2"; shift 2 ;;
    --batchings) BATCHINGS="$2"; shift 2 ;;
    --precisions) PRECISIONS="$2"; shift 2 ;;
    --predictor-seconds) PREDICTOR_SECONDS="$2"; shift 2 ;;
    --predictor-on) PREDICTOR_ON="$2"; shift 2 ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -n "$PRECISIONS" ] || { PRECISIONS=fp32; [ "$DEVICE" != cpu ] && PRECISIONS=fp32,bf16; }
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
BENCH_SECONDS=20
IDLE=200
if [ "$SMALL" = 1 ]; then
  LIMITS=(--train-limit 200 --dev-limit 100 --test-limit 100)
  EPOCHS=(--epochs 1)
  STEPS=3; REPEATS=1; BENCH_SECONDS=5; IDLE=20
fi
[ -n "$PREDICTOR_SECONDS" ] && BENCH_SECONDS="$PREDICTOR_SECONDS"
[ -n "$PREDICTOR_ON" ] || { PREDICTOR_ON="$DEVICE"; [ "$DEVICE" != cpu ] && PREDICTOR_ON="$DEVICE,cpu"; }
"$T" --version > "$RES/logs/versions.txt"
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' >> "$RES/logs/versions.txt" 2>&1 || true
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$RES/logs/gpu.txt" 2>&1 || true

[ "$SWEEP" = 1 ] && PHASES="$PHASES,sweep"
have_transformers=0
"$PY" -c 'import transformers' 2>/dev/null && have_transformers=1
phase() { [[ ",$PHASES," == *",$1,"* ]]; }

if phase train; then
echo "== 1. training (device $DEVICE)" >&2
start=$(date +%s.%N)
"$T" train --device "$DEVICE" --threads "$THREADS" --registry "$WORK/registry" --report-dir "$RES/report" \
  --progress-interval-secs 20 "${LIMITS[@]}" "${EPOCHS[@]}" > "$RES/logs/train.out" 2> "$RES/logs/train.log" \
  || { tail -n 30 "$RES/logs/train.log" >&2; fail "training failed (logs/train.log)"; }
echo "$start $(date +%s.%N)" > "$RES/logs/train.wall"
fi

# Seconds left before the deadline (a large number without one).
left() { if [ "$DEADLINE" -gt 0 ]; then echo $(( DEADLINE - ($(date +%s) - T0) )); else echo 1000000; fi; }

if phase bench; then
echo "== 2. training throughput, trainer vs transformers (${REPEATS} x ${STEPS} steps)" >&2
: > "$RES/logs/bench-train.txt"
py_device=cpu; [ "$DEVICE" != cpu ] && py_device=cuda
rust_bench() { # VARIANT BATCHING [extra trainer flags...]; appends one row per timed window
  local variant="$1" batching="$2"; shift 2
  local flag=(); [ "$batching" = plain ] && flag=(--no-bucketing)
  "$T" bench --device "$DEVICE" --threads "$THREADS" --steps "$STEPS" "${flag[@]}" "$@" 2>> "$RES/logs/bench.log" \
    | grep samples/s | sed "s/^/rust $batching $variant /" >> "$RES/logs/bench-train.txt" \
    || echo "rust bench $variant $batching failed" >&2
}
# Both sides time REPEATS windows in one process, replaying the same batches: the first window
# pays for shapes seen for the first time (per-shape attention plans), later ones do not. One pair
# per batching and precision (the variant column names the precision).
for precision in ${PRECISIONS//,/ }; do
  for batching in ${BATCHINGS//,/ }; do
    rust_bench "$precision" "$batching" --precision "$precision" --repeats "$REPEATS" \
      --write-batches "$WORK/batches-$batching.json"
    if [ "$have_transformers" = 1 ] && [ -s "$WORK/batches-$batching.json" ]; then
      "$PY" "$HERE/scripts/bench_train_transformers.py" --model "$HERE/model" --data "$WORK/data/train.tsv" \
        --steps "$STEPS" --repeats "$REPEATS" --threads "$THREADS" --device "$py_device" \
        --precision "$precision" --batching "$batching" --batches "$WORK/batches-$batching.json" \
        2>> "$RES/logs/bench.log" | grep samples/s | sed "s/^/python $batching $precision /" >> "$RES/logs/bench-train.txt" \
        || echo "python bench $batching $precision failed" >&2
    fi
  done
done
if [ "$DEVICE" != cpu ] && [[ ",$PRECISIONS," == *",bf16,"* ]]; then
  # What the attention kernel choice is worth in bf16 (the dispatcher picks cuDNN, which plans per
  # shape), same batches, two windows: cold, warm.
  rust_bench bf16-sdpa-dispatcher bucketed --precision bf16 --repeats 2 --attention sdpa
fi

fi

if phase predictor; then
echo "== 3. predictor on $PREDICTOR_ON" >&2
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
: > "$RES/logs/bench-predictor.txt"
for where in ${PREDICTOR_ON//,/ }; do
  precisions=$PRECISIONS; [ "$where" = cpu ] && precisions=fp32
  for precision in ${precisions//,/ }; do
    p1=$(port); p2=$(port)
    "$P" serve --model "$WORK/registry/models/goemotions/aliases/latest" --device "$where" --threads "$THREADS" \
      --precision "$precision" --listen "127.0.0.1:$p1" --metrics-listen "127.0.0.1:$p2" \
      > "$RES/logs/predictor-$where-$precision.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 240); do "$P" info --addr "http://127.0.0.1:$p1" > /dev/null 2>&1 && break; sleep 0.5; done
    for _ in $(seq 1 "$REPEATS"); do
      line=$("$P" bench --addr "http://127.0.0.1:$p1" --texts "$WORK/data/test.tsv" --streams 8 \
        --max-seconds "$BENCH_SECONDS" --idle-requests "$IDLE" --pid "$pid" 2>> "$RES/logs/bench.log" | tr '\n' ' ') \
        || echo "predictor bench on $where $precision failed" >&2
      echo "$where $precision $line" >> "$RES/logs/bench-predictor.txt"
    done
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  done
done

fi

if phase sdpa && [ "$DEVICE" != cpu ]; then
  echo "== 5a. per-call cost of bf16 attention per mask form and backend" >&2
  timeout 150 "$PY" "$HERE/scripts/sdpa_overhead.py" >> "$RES/logs/profile.txt" 2>> "$RES/logs/bench.log" \
    || echo "sdpa_overhead.py failed" >&2
fi

if phase nsys && [ "$DEVICE" != cpu ]; then
  NSYS="$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -n1 || true)"
  if [ -n "$NSYS" ]; then
    echo "== 5b. CUDA API time of the trainer's bench (bf16, one cold window)" >&2
    timeout 150 "$NSYS" profile -t cuda,cudnn,cublas -o "$WORK/nsys-rust" --force-overwrite true --stats=true \
      "$T" bench --device "$DEVICE" --threads "$THREADS" --steps 100 > "$RES/logs/nsys-rust.txt" 2>&1 \
      || echo "nsys failed" >&2
    { echo "nsys, trainer bench 100 steps bf16 (cuda_api_sum, top rows):"
      grep -A 22 "cuda_api_sum" "$RES/logs/nsys-rust.txt" | head -n 24
      grep -A 14 "cuda_gpu_kern_sum" "$RES/logs/nsys-rust.txt" | head -n 16; } >> "$RES/logs/profile.txt" || true
  else
    echo "no nsys on this machine" >> "$RES/logs/profile.txt"
  fi
fi

if phase profile && [ "$DEVICE" != cpu ]; then
  echo "== 5. profile: phase split with synchronous launches, per-kernel GPU time" >&2
  for precision in bf16 fp32; do
    CUDA_LAUNCH_BLOCKING=1 "$T" bench --device "$DEVICE" --threads "$THREADS" --steps 100 --precision "$precision" \
      2>&1 | grep -E "time per phase|samples/s" | sed "s/^/launch-blocking $precision: /" >> "$RES/logs/profile.txt" || true
  done
  NCU="$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n1 || true)"
  if [ -n "$NCU" ]; then
    # About one step after the warm-up: skip the first 2,500 kernels, time the next 1,500.
    ncu_run() { # NAME command...
      local name="$1"; shift
      timeout 100 "$NCU" --clock-control none --metrics gpu__time_duration.sum --csv --launch-skip 2500 \
        --launch-count 1500 "$@" > "$RES/logs/ncu-$name.csv" 2> "$RES/logs/ncu-$name.log" || echo "ncu $name failed" >&2
    }
    ncu_run rust "$T" bench --device "$DEVICE" --threads "$THREADS" --precision bf16 --steps 20 --write-batches "$WORK/batches-ncu.json"
    [ "$have_transformers" = 1 ] && ncu_run python "$PY" "$HERE/scripts/bench_train_transformers.py" --model "$HERE/model" \
      --data "$WORK/data/train.tsv" --steps 20 --threads "$THREADS" --device cuda --precision bf16 --batches "$WORK/batches-ncu.json"
    python3 - "$RES/logs" >> "$RES/logs/profile.txt" <<'PYEOF' || echo "ncu summary failed" >&2
import csv, io, os, sys
logs = sys.argv[1]
for side in ("rust", "python"):
    path = f"{logs}/ncu-{side}.csv"
    if not os.path.exists(path):
        continue
    text = open(path, errors="replace").read()
    start = text.find('"ID"')
    if start < 0:
        print(f"ncu {side}: no kernel rows"); continue
    totals, counts = {}, {}
    for row in csv.DictReader(io.StringIO(text[start:])):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = row["Kernel Name"][:90]
        value = float(row["Metric Value"].replace(",", ""))
        scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}.get(row.get("Metric Unit", "nsecond"), 1e-3)
        totals[name] = totals.get(name, 0.0) + value * scale
        counts[name] = counts.get(name, 0) + 1
    total = sum(totals.values())
    print(f"ncu {side}: {sum(counts.values())} kernels, {total / 1000:.2f} ms GPU time in all; top 12 by time:")
    for name, us in sorted(totals.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {us / 1000:8.3f} ms {counts[name]:5d}x  {name}")
PYEOF
  else
    echo "no ncu on this machine" >> "$RES/logs/profile.txt"
  fi
fi

if phase sweep; then
  # scripts/quality_sweep.py, step by step (';' between steps): runs selected on dev only, a
  # results.jsonl that survives a rerun (SWEEP_OUT, default RESULTS_DIR/sweep; a finished run is
  # never trained again), stopped at the deadline.
  # Default: what the CPU rounds left open (docs/quality-rounds.md) — more seeds of the recipe that
  # reached the goal: two R-Drop + weight-average teachers, then students that weigh their
  # ensemble's soft targets nine to one.
  plan="${SWEEP_PLAN:-run --jobs 2 asl-rdrop-ema:1,2; ensemble parents=asl-rdrop-ema-s1+asl-rdrop-ema-s2; run --jobs 3 asl-rdrop-ema-distil-heavy:1,2,3}"
  if [ "$SMALL" = 1 ]; then
    plan="${SWEEP_PLAN:-run --jobs 2 default:1 focal:1}"
    export GOEMOTIONS_TRAIN_LIMIT=200 GOEMOTIONS_DEV_LIMIT=100 GOEMOTIONS_TEST_LIMIT=100 GOEMOTIONS_MAX_STEPS=5
  fi
  export TRAINER="$T" SWEEP_OUT="${SWEEP_OUT:-$RES/sweep}" GOEMOTIONS_DEVICE="$DEVICE"
  export SWEEP_PRECISION="${SWEEP_PRECISION:-fp32}" SWEEP_THREADS="${SWEEP_THREADS:-$(( THREADS / 2 > 0 ? THREADS / 2 : 1 ))}"
  [ "$DEADLINE" -gt 0 ] && export SWEEP_DEADLINE=$(( T0 + DEADLINE - 10 ))
  echo "== 4. quality sweep, $(left)s left: $plan" >&2
  IFS=';' read -r -a steps <<< "$plan"
  for step in "${steps[@]}"; do
    read -r -a words <<< "$step"
    [ "${#words[@]}" -gt 0 ] || continue
    "$PY" "$HERE/scripts/quality_sweep.py" "${words[@]}" >> "$RES/logs/sweep.log" 2>&1 \
      || echo "sweep step failed: $step (logs/sweep.log)" >&2
  done
  "$PY" "$HERE/scripts/quality_sweep.py" table > "$RES/sweep-table.md" 2>> "$RES/logs/sweep.log" || true
fi

python3 - "$RES" "$WORK" "$DEVICE" "$HERE" <<'PYEOF'
import glob, json, os, re, statistics, sys, time
res, work, device, here = sys.argv[1:]
logs = f"{res}/logs"
read = lambda p: open(p).read() if os.path.exists(p) else ""
def num(pat, line):
    m = re.search(pat, line)
    return float(m.group(1)) if m else None
gpu = read(f"{logs}/gpu.txt").strip() or "none (CPU run)"
summary = {
    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    "gpu": gpu, "device": device, "precision": None,
    "commit": read(f"{here}/COMMIT").strip(), "versions": read(f"{logs}/versions.txt").strip(),
    "training": None, "train_throughput": [], "predictor": [], "sweep": [],
    "profile": read(f"{logs}/profile.txt"),
}
if os.path.exists(f"{res}/report/report.json"):
    report = json.load(open(f"{res}/report/report.json"))
    ft = report["fine_tuned"]
    start, end = map(float, read(f"{logs}/train.wall").split())
    summary["device"], summary["precision"] = report["device"], report["precision"]
    summary["training"] = {
        "wall_seconds": end - start, "train_seconds": ft["train_seconds"],
        "samples_per_second": ft["train_samples_per_second"],
        "test_macro_f1_per_label": ft["at_per_label"]["macro_f1"],
        "test_micro_f1_global": ft["at_global"]["micro_f1"],
        "global_threshold": ft["global_threshold"], "examples": report.get("split_sizes"),
        "epochs": len(report["history"]), "best_epoch": report["best_epoch"],
        "dev_macro_f1_per_epoch": [h.get("dev_macro_f1") for h in report["history"]],
    }
runs = {}
for line in read(f"{logs}/bench-train.txt").splitlines():
    side, batching, variant = line.split()[:3]
    runs.setdefault((side, batching, variant), []).append(line)
for (side, batching, variant), lines in runs.items():
    def stat(pat):
        v = [x for x in (num(pat, l) for l in lines) if x is not None]
        return {"median": statistics.median(v), "min": min(v), "max": max(v), "first": v[0]} if v else None
    summary["train_throughput"].append({
        "side": side, "batching": batching, "variant": variant, "runs": len(lines),
        "samples_per_second": stat(r"([0-9.]+) samples/s"),
        "real_tokens_per_second": stat(r"([0-9.]+) real tokens/s"),
        "padded_tokens_per_second": stat(r"([0-9.]+) padded tokens/s"),
        "precision": (re.search(r"precision (\w+)", lines[0]) or [None, None])[1]})
pred = {}
for line in read(f"{logs}/bench-predictor.txt").splitlines():
    where, precision = line.split()[:2]
    pred.setdefault((where, precision), []).append(line)
for (where, precision), lines in pred.items():
    def stat(pat):
        v = [x for x in (num(pat, l) for l in lines) if x is not None]
        return {"median": statistics.median(v), "min": min(v), "max": max(v)} if v else None
    summary["predictor"].append({
        "device": where, "precision": precision, "runs": len(lines),
        "texts_per_second_8_streams": stat(r"= ([0-9.]+) texts/s"),
        "idle_p50_ms": stat(r"idle single-text p50 ([0-9.]+) ms"),
        "idle_p99_ms": stat(r"idle single-text p50 [0-9.]+ ms p99 ([0-9.]+) ms"),
        "peak_rss": (re.search(r"peak RSS: (\S+ \S+)", lines[-1]) or [None, None])[1]})
sweep_out = os.environ.get("SWEEP_OUT", f"{res}/sweep")
for line in read(f"{sweep_out}/results.jsonl").splitlines():
    r = json.loads(line)
    if r.get("kind") == "run":
        summary["sweep"].append({k: r.get(k) for k in ("run", "variant", "seed", "precision", "dev_macro_f1",
                                                       "dev_micro_f1_global", "wall_seconds")})
summary["sweep_table"] = read(f"{res}/sweep-table.md")
json.dump(summary, open(f"{res}/summary.json", "w"), indent=2)
t = summary["training"]
fmt = lambda s: f"{s['median']:.1f} ({s['min']:.1f}–{s['max']:.1f})" if s else "–"
out = [f"# GPU run — {summary['date']}", "", f"GPU: {gpu}; device {summary['device']}; precision {summary['precision']}; commit {summary['commit']}", ""]
if t:
    out += ["## Default recipe, full data", "", "| wall time (s) | train samples/s | test macro-F1 (per-label) | test micro-F1 (global) | epochs (best) | dev macro-F1 per epoch |", "|---:|---:|---:|---:|---:|---|",
            f"| {t['wall_seconds']:.0f} | {t['samples_per_second']:.1f} | {t['test_macro_f1_per_label']:.4f} | {t['test_micro_f1_global']:.4f} (t={t['global_threshold']:.2f}) | {t['epochs']} ({t['best_epoch']}) | {t['dev_macro_f1_per_epoch']} |", ""]
out += ["## Training throughput (same model, data, batches, batch 32, max-len 128, precision; median (min–max) over timed windows, the first one cold)", "",
       "| side | batching | variant | precision | samples/s | first window samples/s | real tokens/s | padded tokens/s | windows |", "|---|---|---|---|---:|---:|---:|---:|---:|"]
for r in summary["train_throughput"]:
    first = f"{r['samples_per_second']['first']:.1f}" if r["samples_per_second"] else "–"
    out.append(f"| {r['side']} | {r['batching']} | {r['variant']} | {r['precision']} | {fmt(r['samples_per_second'])} | {first} | {fmt(r['real_tokens_per_second'])} | {fmt(r['padded_tokens_per_second'])} | {r['runs']} |")
by = {(r["side"], r["batching"], r["variant"]): r["samples_per_second"] for r in summary["train_throughput"]}
for (side, batching, variant), rs in by.items():
    ps = by.get(("python", batching, variant))
    if side == "rust" and ps:
        overlap = rs["min"] <= ps["max"] and ps["min"] <= rs["max"]
        out.append(f"\nratio trainer/transformers ({batching}, {variant}): {rs['median'] / ps['median']:.2f}x"
                   + (" (ranges overlap: within noise)" if overlap else " (ranges apart)"))
base, other = by.get(("rust", "bucketed", "bf16")), by.get(("rust", "bucketed", "bf16-sdpa-dispatcher"))
if base and other:
    out.append(f"\nbf16, direct memory-efficient attention vs the dispatcher's choice (bucketed): first window "
               f"{base['first'] / other['first']:.2f}x, best window {base['max'] / other['max']:.2f}x")
f32, b16 = by.get(("rust", "bucketed", "fp32")), by.get(("rust", "bucketed", "bf16"))
if f32 and b16:
    out.append(f"\ntrainer fp32 vs bf16 (bucketed): {f32['median'] / b16['median']:.2f}x")
out += ["", "## Predictor (8 streams over the test split, then idle single-text calls)", "",
        "| device | precision | texts/s | idle p50 (ms) | idle p99 (ms) | peak RSS | runs |", "|---|---|---:|---:|---:|---|---:|"]
for r in summary["predictor"]:
    out.append(f"| {r['device']} | {r['precision']} | {fmt(r['texts_per_second_8_streams'])} | {fmt(r['idle_p50_ms'])} | {fmt(r['idle_p99_ms'])} | {r['peak_rss']} | {r['runs']} |")
if summary["sweep_table"]:
    out += ["", "## Quality sweep (scripts/quality_sweep.py: selected on dev; test only for finalists)", "",
            summary["sweep_table"].rstrip()]
if summary["profile"]:
    out += ["", "## Profile", "", "```", summary["profile"].rstrip(), "```"]
open(f"{res}/summary.md", "w").write("\n".join(out) + "\n")
print("\n".join(out))
PYEOF
