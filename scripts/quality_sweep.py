#!/usr/bin/env python3
"""Quality sweep for issue 25: train recipe variants with several seeds, select on dev only,
read the test split once per finalist, and print one table of every run.

Selection runs never see the test split: they train on a data folder whose test.tsv is the dev
split (so the job's "test" figures are dev figures), with no baseline. `--finalist NAME` scores
a finished run's checkpoint on the real test split once; the result is kept and never recomputed.
`--ensemble NAME:RUN+RUN...` evaluates the mean of runs' checkpoints (thresholds tuned on dev).

Runs are resumable: results go to OUT/results.jsonl, a finished (variant, seed) is skipped.

  scripts/quality_sweep.py run default:1,2 distil:1,2        # variants by name, seeds after ':'
  scripts/quality_sweep.py run --jobs 3 focal:1,2 asl:1,2    # three runs at a time (one GPU, say)
  scripts/quality_sweep.py ensemble teacher=default-s1+default-s2
  scripts/quality_sweep.py finalist distil-s1                 # test split, once
  scripts/quality_sweep.py finalist --best 2                  # the 2 best untested runs on dev
  scripts/quality_sweep.py table

Variants are named in VARIANTS below (flags for `trainer train`); a variant's flags may name
`{ensemble:NAME}` for an ensemble's member checkpoints (one --teacher each), `{init:NAME}`
for them as starts (one --init-from each: a weight average) and `{start:RUN}` for one run's
checkpoint as the start; `{seed}` in a name is the run's seed, `{parent}` its seed // 100 (a run
with seed 701 goes on from its parent's seed-7 run).
Environment: TRAINER (default target/release/trainer), SWEEP_OUT (default output/sweep),
GOEMOTIONS_DATA_DIR (default .cache/data/goemotions), SWEEP_THREADS (default: all CPUs),
SWEEP_PRECISION (fp32, or bf16: the training precision of every run whose variant names none;
default fp32), SWEEP_DEADLINE (Unix time: runs still going then are stopped and not recorded,
none starts after it), GOEMOTIONS_DEVICE (the trainer's device; the table names it).
"""
import json
import os
import platform
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINER = os.environ.get("TRAINER", os.path.join(ROOT, "target/release/trainer"))
OUT = os.path.abspath(os.environ.get("SWEEP_OUT", os.path.join(ROOT, "output/sweep")))
DATA = os.path.abspath(os.environ.get("GOEMOTIONS_DATA_DIR", os.path.join(ROOT, ".cache/data/goemotions")))
PRECISION = os.environ.get("SWEEP_PRECISION", "fp32")
THREADS = os.environ.get("SWEEP_THREADS")
DEADLINE = float(os.environ.get("SWEEP_DEADLINE") or 0)
RESULTS = os.path.join(OUT, "results.jsonl")
RESULTS_LOCK = threading.Lock()
REGISTRY = os.path.join(OUT, "registry")

# name -> (what it is, extra `trainer train` flags). The default recipe's flags are the defaults.
ASL = ["--loss", "asl", "--loss-gamma", "4", "--asl-clip", "0.05"]
LONG = ["--epochs", "5", "--lr", "5e-5", "--patience", "2"]
VARIANTS = {
    "default": ("default recipe (BCE, sqrt positive weights, 3 epochs, lr 1e-4)", []),
    "default-bf16": ("default recipe trained in bf16", ["--precision", "bf16"]),
    "default-fp32": ("default recipe trained in fp32", ["--precision", "fp32"]),
    "focal": ("focal loss, gamma 2", ["--loss", "focal", "--loss-gamma", "2"]),
    "asl": ("asymmetric loss, gamma- 4, clip 0.05", ASL),
    "smooth": ("label smoothing 0.1", ["--label-smoothing", "0.1"]),
    "llrd": ("layer-wise lr decay 0.85", ["--layer-lr-decay", "0.85"]),
    "long": ("5 epochs at lr 5e-5", LONG),
    "asl-llrd": ("asymmetric loss (as asl) with layer-wise lr decay 0.85", ASL + ["--layer-lr-decay", "0.85"]),
    "asl-smooth": ("asymmetric loss (as asl) with label smoothing 0.1", ASL + ["--label-smoothing", "0.1"]),
    "asl-long": ("asymmetric loss (as asl), 5 epochs at lr 5e-5 (as long)", ASL + LONG),
    "rdrop": ("R-Drop, consistency weight 1 (two dropout passes per batch)", ["--rdrop-weight", "1"]),
    "distil": ("distilled from the 'teacher' ensemble, weight 0.5", ["{ensemble:teacher}", "--distill-weight", "0.5"]),
    "self-distil": ("distilled from one default-recipe run (the 'self' ensemble), weight 0.5", ["{ensemble:self}", "--distill-weight", "0.5"]),
    "distil-heavy": ("distilled from the 'teacher' ensemble, weight 0.8", ["{ensemble:teacher}", "--distill-weight", "0.8"]),
    "asl-distil": ("asymmetric loss (as asl), distilled from the 'asl' ensemble, weight 0.5",
                   ASL + ["{ensemble:asl}", "--distill-weight", "0.5"]),
    "asl-rdrop": ("asymmetric loss (as asl) with R-Drop, consistency weight 1", ASL + ["--rdrop-weight", "1"]),
    "asl-ema": ("asymmetric loss (as asl), weights' moving average (decay 0.999) evaluated and published",
                ASL + ["--ema-decay", "0.999"]),
    "asl-rdrop-ema": ("asymmetric loss (as asl) with R-Drop (as asl-rdrop) and the weights' moving average (as asl-ema)",
                      ASL + ["--rdrop-weight", "1", "--ema-decay", "0.999"]),
    "asl-rdrop-ema-distil": ("as asl-rdrop-ema, distilled from the 'rdrop-ema' ensemble (asl-rdrop-ema runs), weight 0.5",
                             ASL + ["--rdrop-weight", "1", "--ema-decay", "0.999", "{ensemble:rdrop-ema}",
                                    "--distill-weight", "0.5"]),
    "asl-rdrop-ema-distil-heavy": ("as asl-rdrop-ema, distilled from the 'parents' ensemble (asl-rdrop-ema runs), weight 0.9 "
                                   "(the soft targets weigh nine times the labels)",
                                   ASL + ["--rdrop-weight", "1", "--ema-decay", "0.999", "{ensemble:parents}",
                                          "--distill-weight", "0.9"]),
    "asl-rdrop-ema-oof-distil": ("as asl-rdrop-ema, distilled out of fold from the 'oof3' ensemble (asl-rdrop-ema-fold0of3 to "
                                 "fold2of3: each training text scored by the teacher that held it out), weight 0.5",
                                 ASL + ["--rdrop-weight", "1", "--ema-decay", "0.999", "{ensemble:oof3}",
                                        "--distill-weight", "0.5"]),
    "asl-rdrop-ema-soup": ("the mean of the weights of the 'soup-sN' ensemble's members (asl-rdrop-ema runs; N is this "
                           "run's seed), nothing trained: tuned on dev and published as one MiniLM",
                           ["{init:soup-s{seed}}", "--epochs", "0"]),
    "asl-rdrop-ema-child": ("as asl-rdrop-ema, one more epoch at lr 2e-5 from asl-rdrop-ema-sP (P = seed // 100: "
                            "e.g. seeds 701 and 702 go on from seed 7's run)",
                            ASL + ["--rdrop-weight", "1", "--ema-decay", "0.999", "{start:asl-rdrop-ema-s{parent}}",
                                   "--epochs", "1", "--lr", "2e-5"]),
    "asl-rdrop-ema-child-soup": ("the mean of the weights of the 'children-sN' ensemble's members (asl-rdrop-ema-child "
                                 "runs of one parent, seed N), nothing trained: tuned on dev and published as one MiniLM",
                                 ["{init:children-s{seed}}", "--epochs", "0"]),
    "asl-distil4": ("asymmetric loss (as asl), distilled from the 'asl4' ensemble (asl and asl-rdrop, 2 seeds each), weight 0.5",
                    ASL + ["{ensemble:asl4}", "--distill-weight", "0.5"]),
}

# Out-of-fold teachers: the asl-rdrop-ema recipe on every fold of train but one.
for _k in range(3):
    VARIANTS[f"asl-rdrop-ema-fold{_k}of3"] = (
        f"as asl-rdrop-ema, trained on every fold of train but fold {_k} of 3 (an out-of-fold teacher)",
        ASL + ["--rdrop-weight", "1", "--ema-decay", "0.999", "--holdout-fold", f"{_k}/3"])


def load_results():
    if not os.path.exists(RESULTS):
        return []
    with open(RESULTS) as f:
        return [json.loads(line) for line in f if line.strip()]


def append_result(record):
    os.makedirs(OUT, exist_ok=True)
    with RESULTS_LOCK, open(RESULTS, "a") as f:
        f.write(json.dumps(record) + "\n")


def seconds_left():
    """Seconds before SWEEP_DEADLINE (None without one)."""
    return DEADLINE - time.time() if DEADLINE else None


def selection_data():
    """A data folder whose test split is a copy of the dev split (ids suffixed, as ids must be
    unique across splits): selection runs never read test."""
    folder = os.path.join(OUT, "data-dev-as-test")
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(DATA):
        link = os.path.join(folder, name)
        if name == "test.tsv":
            if os.path.islink(link):
                os.remove(link)
            with open(os.path.join(DATA, "dev.tsv")) as src, open(link + ".tmp", "w") as dst:
                for line in src:
                    cols = line.rstrip("\n").split("\t")
                    cols[-1] += "-dev-copy"
                    dst.write("\t".join(cols) + "\n")
            os.replace(link + ".tmp", link)
            continue
        target = os.path.join(DATA, name)
        if os.path.islink(link) and os.readlink(link) == target:
            continue
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(target, link)
    return folder


def run_uri(run):
    return f"{REGISTRY}/models/{run}/aliases/latest"


def ensemble_members(name, results):
    for r in results:
        if r.get("kind") == "ensemble" and r["name"] == name:
            return r["members"]
    sys.exit(f"quality_sweep: no ensemble named {name!r}: run `ensemble {name}=RUN+RUN` first")


def run_done(run, results):
    return any(r.get("kind") == "run" and r["run"] == run for r in results)


def finished_run(run, results):
    """`run` as a one-member list, once it has finished."""
    if not run_done(run, results):
        sys.exit(f"quality_sweep: no run named {run!r} to start from: run it first")
    return [run]


# placeholder -> (the trainer option given once per checkpoint, the runs it names)
PLACEHOLDERS = (("{ensemble:", "--teacher", ensemble_members),
                ("{init:", "--init-from", ensemble_members),
                ("{start:", "--init-from", finished_run))


def expand(flags, results, seed):
    """A variant's flags with each `{ensemble:NAME}` as one --teacher per member, each
    `{init:NAME}` as one --init-from per member and each `{start:RUN}` as one --init-from;
    `{seed}` in a name is the run's seed, `{parent}` its seed // 100."""
    out = []
    for flag in flags:
        for placeholder, option, runs in PLACEHOLDERS:
            if flag.startswith(placeholder):
                name = flag[len(placeholder):-1].replace("{seed}", str(seed)).replace("{parent}", str(seed // 100))
                for run in runs(name, results):
                    out += [option, run_uri(run)]
                break
        else:
            out.append(flag)
    return out


def trainer_env():
    env = dict(os.environ)
    if THREADS:
        env["GOEMOTIONS_THREADS"] = THREADS
    return env


def train(variant, seed, data):
    results = load_results()
    run = f"{variant}-s{seed}"
    if run_done(run, results):
        print(f"== {run}: done already", flush=True)
        return
    left = seconds_left()
    if left is not None and left < 30:
        print(f"== {run}: not started, the deadline is near", flush=True)
        return
    what, flags = VARIANTS[variant]
    precision = flags[flags.index("--precision") + 1] if "--precision" in flags else PRECISION
    report_dir = os.path.join(OUT, "reports", run)
    cmd = [TRAINER, "train", "--data-dir", data, "--registry", REGISTRY,
           "--model-name", run, "--alias", "latest", "--baseline", "false",
           "--report-dir", report_dir, "--seed", str(seed),
           *([] if "--precision" in flags else ["--precision", PRECISION]),
           *expand(flags, results, seed)]
    print(f"== {run}: {what}\n   {' '.join(cmd)}", flush=True)
    os.makedirs(os.path.join(OUT, "logs"), exist_ok=True)
    started = time.time()
    with open(os.path.join(OUT, "logs", f"{run}.log"), "w") as log:
        try:
            subprocess.run(cmd, check=True, env=trainer_env(), stdout=log, stderr=subprocess.STDOUT, timeout=left)
        except subprocess.TimeoutExpired:
            print(f"== {run}: stopped at the deadline, not recorded", flush=True)
            return
        except subprocess.CalledProcessError as e:
            print(f"== {run}: failed (exit {e.returncode}), see {log.name}", flush=True)
            return
    seconds = time.time() - started
    with open(os.path.join(report_dir, "report.json")) as f:
        report = json.load(f)
    ft = report["fine_tuned"]
    append_result({
        "kind": "run", "run": run, "variant": variant, "seed": seed, "what": what,
        "flags": flags, "precision": precision, "device": report.get("device"),
        # The job's "test" is the dev split here (see selection_data).
        "dev_macro_f1": ft["at_per_label"]["macro_f1"],
        "dev_micro_f1_global": ft["at_global"]["micro_f1"],
        "best_epoch": report.get("best_epoch"),
        "epochs": [h["dev_macro_f1"] for h in report.get("history", [])],
        "wall_seconds": seconds,
        "version": report.get("model_version"),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
    })
    print(f"== {run}: dev macro-F1 {ft['at_per_label']['macro_f1']:.4f}, {seconds / 60:.1f} min", flush=True)


def ensemble(spec):
    name, members = spec.split("=", 1)
    members = members.split("+")
    results = load_results()
    if any(r.get("kind") == "ensemble" and r["name"] == name for r in results):
        print(f"== ensemble {name}: done already", flush=True)
        return
    path = os.path.join(OUT, f"ensemble-{name}.json")
    cmd = [TRAINER, "ensemble", "--data-dir", selection_data(), "--json", path]
    for m in members:
        cmd += ["--checkpoint", run_uri(m)]
    print(f"== ensemble {name}: {' + '.join(members)}", flush=True)
    started = time.time()
    subprocess.run(cmd, check=True, env=trainer_env())
    with open(path) as f:
        e = json.load(f)
    append_result({
        "kind": "ensemble", "name": name, "members": members,
        "dev_macro_f1": e["dev_macro_f1"], "dev_micro_f1_global": e["dev_micro_f1_global"],
        "wall_seconds": time.time() - started, "machine": machine(), "date": time.strftime("%Y-%m-%d"),
    })


def finalist(run):
    """The test split, once per finalist (a run, or an ensemble by name)."""
    results = load_results()
    if any(r.get("kind") == "test" and r["run"] == run for r in results):
        print(f"== {run}: test read already (kept, not recomputed)", flush=True)
        return
    members = [r["members"] for r in results if r.get("kind") == "ensemble" and r["name"] == run]
    path = os.path.join(OUT, f"test-{run}.json")
    if members:
        cmd = [TRAINER, "ensemble", "--data-dir", DATA, "--test", "--json", path]
        for m in members[0]:
            cmd += ["--checkpoint", run_uri(m)]
        subprocess.run(cmd, check=True, env=trainer_env())
        with open(path) as f:
            t = json.load(f)["test"]
        record = {"macro_f1": t["macro_f1"], "micro_f1_global": t["micro_f1_global"]}
    else:
        report_dir = os.path.join(OUT, "test-reports", run)
        cmd = [TRAINER, "eval", "--checkpoint", run_uri(run), "--data-dir", DATA,
               "--split", "test", "--report-dir", report_dir]
        subprocess.run(cmd, check=True, env=trainer_env())
        with open(os.path.join(report_dir, "report.json")) as f:
            ft = json.load(f)["fine_tuned"]
        record = {"macro_f1": ft["at_per_label"]["macro_f1"], "micro_f1_global": ft["at_global"]["micro_f1"]}
    append_result({"kind": "test", "run": run, **record, "date": time.strftime("%Y-%m-%d")})
    print(f"== {run}: test macro-F1 {record['macro_f1']:.4f}, micro-F1 (global) {record['micro_f1_global']:.4f}")


def best_runs(n):
    """The n runs with the best dev macro-F1 whose test split is still unread (a rule fixed before
    the results are seen, for sessions that cannot look in between)."""
    results = load_results()
    tested = {r["run"] for r in results if r.get("kind") == "test"}
    runs = sorted((r for r in results if r.get("kind") == "run" and r["run"] not in tested),
                  key=lambda r: -r["dev_macro_f1"])
    return [r["run"] for r in runs[:n]]


def machine():
    if os.environ.get("GOEMOTIONS_DEVICE", "auto").startswith("cuda"):
        try:
            gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[0]
            return f"{gpu}, {os.cpu_count()} CPUs"
        except (OSError, subprocess.CalledProcessError, IndexError):
            pass
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        model = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        flags = [x for x in ("avx512_bf16", "amx_bf16") if x in info]
        return f"{model}, {os.cpu_count()} CPUs" + (f" ({', '.join(flags)})" if flags else "")
    except (OSError, StopIteration):
        return platform.machine()


def table():
    results = load_results()
    tests = {r["run"]: r for r in results if r.get("kind") == "test"}
    print("| run | variant | seed | device | precision | dev macro-F1 | dev micro-F1 (global) | epochs (dev macro-F1) | test macro-F1 | test micro-F1 (global) | wall |")
    print("|---|---|---:|---|---|---:|---:|---|---:|---:|---:|")
    for r in results:
        if r.get("kind") == "run":
            t = tests.get(r["run"])
            test = f"{t['macro_f1']:.4f} | {t['micro_f1_global']:.4f}" if t else "— | —"
            epochs = " / ".join(f"{x:.3f}" for x in r["epochs"])
            print(f"| {r['run']} | {r['what']} | {r['seed']} | {r.get('device') or '—'} | {r['precision']} | {r['dev_macro_f1']:.4f} | "
                  f"{r['dev_micro_f1_global']:.4f} | {epochs} | {test} | {r['wall_seconds'] / 60:.1f} min |")
        elif r.get("kind") == "ensemble":
            t = tests.get(r["name"])
            test = f"{t['macro_f1']:.4f} | {t['micro_f1_global']:.4f}" if t else "— | —"
            print(f"| {r['name']} | ensemble of {' + '.join(r['members'])} (not servable at MiniLM speed) | — | — | — | "
                  f"{r['dev_macro_f1']:.4f} | {r['dev_micro_f1_global']:.4f} | — | {test} | {r['wall_seconds'] / 60:.1f} min |")
    finalists = sorted(tests)
    print(f"\nFinalists read on test: {len(finalists)} ({', '.join(finalists) or 'none'}).")
    machines = sorted({r["machine"] for r in results if "machine" in r})
    if machines:
        print(f"Machines: {'; '.join(machines)}.")


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0
    command, args = argv[1], argv[2:]
    if command == "run":
        jobs = 1
        if args[:1] == ["--jobs"] and len(args) >= 2:
            jobs, args = int(args[1]), args[2:]
        runs = []
        for spec in args:
            variant, _, seeds = spec.partition(":")
            if variant not in VARIANTS:
                sys.exit(f"quality_sweep: unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
            runs += [(variant, int(seed)) for seed in (seeds or "1").split(",")]
        data = selection_data()
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for done in [pool.submit(train, variant, seed, data) for variant, seed in runs]:
                done.result()
    elif command == "ensemble":
        for spec in args:
            ensemble(spec)
    elif command == "finalist":
        if args[:1] == ["--best"] and len(args) >= 2:
            args = best_runs(int(args[1])) + args[2:]
        for run in args:
            finalist(run)
    elif command == "table":
        table()
    else:
        sys.exit(f"quality_sweep: unknown command {command!r} (run, ensemble, finalist, table)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
