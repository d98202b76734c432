#!/usr/bin/env python3
"""How the decision thresholds are chosen, measured on dev only (issue 25).

For each run of a quality sweep (a checkpoint in the sweep's registry), scores the dev split
through `trainer score` (fp32, as served; cached) and prints dev macro-F1 under several ways
of choosing per-label thresholds:

  grid      the trainer's rule until the seventh sweep round: each label's F1-maximising
            threshold on the 0.01 grid, the global (micro-F1) threshold for labels with < 20 dev
            positives, a threshold that predicts the label for most texts, or no gain over the
            global one
  exact     as grid, but every distinct dev score is a candidate (no grid)
  nofloor   as grid, without the 20-positive floor
  shrink-K  each label's own threshold moved towards the global one in logit space, weight
            support / (support + K) on its own; no floor (shrink-10 is the trainer's rule now,
            common::metrics::tune_thresholds)

Each rule is measured on the full dev split (in-sample: what the trainer reports) and
cross-fitted: dev in 5 random folds, each fold predicted with thresholds tuned on the other
four, macro-F1 of the pooled predictions, over several random fold splits — the honest
estimate of what a rule gives on unseen texts (at 4/5 of the dev support).

It also measures per-label temperature scaling (sigmoid(logit / T), T per label fitted on dev
log-loss, as `--calibration`): dev macro-F1 with thresholds re-tuned on the scaled scores (what
the trainer did until the seventh round) against the unscaled thresholds mapped through each label's temperature
(a per-label monotone map, so each label's predictions are unchanged).

Scores are studied uncalibrated: where a checkpoint has a calibration folded into its head, its
scores are mapped back (sigmoid((logit − b) · T)), as the trainer tunes thresholds before calibration.

`--test` also scores the test split and prints, for each rule tuned on the full dev split, the
test macro-F1: it reads the test split, so use it only on runs already read on test as finalists.

  .venv-ref/bin/python scripts/threshold_study.py asl-s1 asl-s2  # runs of output/sweep; needs numpy
  .venv-ref/bin/python scripts/threshold_study.py --test asl-s1  # + test macro-F1 per rule
Environment: TRAINER, SWEEP_OUT, GOEMOTIONS_DATA_DIR as for quality_sweep.py; STUDY_SPLITS
(random 5-fold splits, default 3).
"""
import json
import os
import subprocess
import sys

import numpy as np

from quality_sweep import DATA, OUT, REGISTRY, TRAINER, run_uri

SPLITS = int(os.environ.get("STUDY_SPLITS", "3"))
FOLDS = 5
GRID = np.arange(1, 100, dtype=np.float64) / 100.0
MIN_SUPPORT = 20  # the 20-positive floor of the trainer's earlier rule
RULES = ["grid", "exact", "nofloor", "shrink-10", "shrink-30"]


def read_split(name):
    names = [l.strip() for l in open(os.path.join(DATA, "emotions.txt"), encoding="utf-8") if l.strip()]
    texts, rows = [], []
    with open(os.path.join(DATA, f"{name}.tsv"), encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 2:
                sys.exit(f"threshold_study: {DATA}/{name}.tsv line {n}: expected text<TAB>labels")
            texts.append(fields[0])
            rows.append([int(j) for j in fields[1].split(",")])
    y = np.zeros((len(texts), len(names)), dtype=bool)
    for i, labels in enumerate(rows):
        y[i, labels] = True
    return texts, y


def run_scores(run, split, texts):
    """The run's fp32 scores of a split, from `trainer score` (cached under
    SWEEP_OUT/<split>-scores), uncalibrated."""
    cache = os.path.join(OUT, f"{split}-scores", f"{run}.json")
    if not os.path.exists(cache):
        checkpoint = run_uri(run)
        if not os.path.exists(checkpoint + ".json"):
            sys.exit(f"threshold_study: no checkpoint for run {run!r} at {checkpoint}")
        out = subprocess.run([TRAINER, "score", "--precision", "fp32", "--checkpoint", checkpoint, "--"] + texts,
                             capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"threshold_study: trainer score failed for {run}: {out.stderr[-2000:]}")
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        with open(cache, "w") as f:
            f.write(out.stdout)
    with open(cache) as f:
        scored = json.load(f)
    scores = np.array(scored["scores"], dtype=np.float64)
    calibration = manifest(run, scored["version"]).get("calibration") or {}
    if calibration.get("applied"):
        # Served: sigmoid(z / T + b) (b = 0 without shifts); back: z = (z' - b) * T.
        temperatures = np.array(calibration["temperatures"])
        shifts = np.array(calibration.get("shifts") or [0.0] * len(temperatures))
        scores = sigmoid((logit(scores) - shifts) * temperatures)
    return scores


def manifest(run, version):
    path = os.path.join(REGISTRY, "models", run, "versions", version, "manifest.json")
    with open(path) as f:
        return json.load(f)


def f1(predicted, y, axis):
    """F1 of boolean predictions against targets, reduced along `axis` (0 where nothing is
    predicted or true)."""
    tp = (predicted & y).sum(axis)
    denominator = 2 * tp + (predicted & ~y).sum(axis) + (~predicted & y).sum(axis)
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def f1_at(s, y, thresholds):
    """F1 of one label (scores s, targets y) at each threshold of a 1-D array."""
    return f1(s[None, :] >= thresholds[:, None], y[None, :], 1)


def best(s, y, candidates):
    """The candidate with the highest F1, lowest on ties."""
    f = f1_at(s, y, candidates)
    return candidates[int(np.argmax(f))]


def logit(p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def tune(scores, y, rule):
    """Per-label thresholds under a rule (see the module doc), and the global threshold."""
    n, labels = scores.shape
    global_t = best(scores.ravel(), y.ravel(), GRID)
    thresholds = []
    for j in range(labels):
        s, t_j = scores[:, j], y[:, j]
        support = int(t_j.sum())
        if support == 0:
            thresholds.append(global_t)
            continue
        own = best(s, t_j, np.unique(s) if rule == "exact" else GRID)
        rate = float((s >= own).mean())
        predicts_nearly_all = rate >= 0.5 and rate >= 3 * support / n
        if rule.startswith("shrink-"):
            if predicts_nearly_all:
                thresholds.append(global_t)
                continue
            w = support / (support + float(rule.split("-")[1]))
            thresholds.append(sigmoid(w * logit(own) + (1 - w) * logit(global_t)))
            continue
        no_gain = float(f1_at(s, t_j, own[None])[0]) <= float(f1_at(s, t_j, global_t[None])[0])
        floor = support < MIN_SUPPORT and rule != "nofloor"
        thresholds.append(global_t if (floor or predicts_nearly_all or no_gain) else own)
    return np.array(thresholds), global_t


def macro_f1_of(predicted, y):
    return float(np.mean(f1(predicted, y, 0)))


def macro_f1(scores, y, thresholds):
    return macro_f1_of(scores >= thresholds, y)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def fit_temperatures(scores, y):
    """One temperature per label minimising dev log-loss (a log-spaced search)."""
    z = logit(scores)
    temperatures = np.exp(np.linspace(-3.0, 3.0, 241))
    fitted = []
    for j in range(y.shape[1]):
        p = np.clip(sigmoid(z[:, j][None, :] / temperatures[:, None]), 1e-7, 1 - 1e-7)
        yj = y[:, j][None, :]
        loss = -np.where(yj, np.log(p), np.log(1 - p)).mean(1)
        fitted.append(temperatures[int(np.argmin(loss))])
    return np.array(fitted)


def fit_platt(scores, y, iterations=50):
    """Per label, the (1/T, b) minimising the log-loss of sigmoid(z / T + b): Newton's method on
    each label's two-parameter logistic regression, all labels at once (with step halving)."""
    z = logit(scores)
    a = np.ones(y.shape[1])
    b = np.zeros(y.shape[1])
    yf = y.astype(np.float64)

    def loss(a, b):
        m = np.where(y, 1.0, -1.0) * (z * a + b)
        return np.logaddexp(0.0, -m).mean(0)

    current = loss(a, b)
    for _ in range(iterations):
        p = sigmoid(z * a + b)
        r, w = p - yf, np.maximum(p * (1 - p), 1e-12)
        ga, gb = (r * z).mean(0), r.mean(0)
        haa, hab, hbb = (w * z * z).mean(0), (w * z).mean(0), w.mean(0)
        det = np.maximum(haa * hbb - hab * hab, 1e-18)
        da, db = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
        step = np.ones_like(a)
        for _ in range(30):
            na = np.clip(a - step * da, 0.05, 20.0)
            nb = np.clip(b - step * db, -20.0, 20.0)
            new = loss(na, nb)
            better = new < current
            a, b, current = np.where(better, na, a), np.where(better, nb, b), np.where(better, new, current)
            step = np.where(better, 0.0, step / 2)
            if not step.any():
                break
    return 1 / a, b


def log_loss(scores, y):
    p = np.clip(scores, 1e-7, 1 - 1e-7)
    return float(-np.where(y, np.log(p), np.log(1 - p)).mean())


def study(run, texts, y, test):
    scores = run_scores(run, "dev", texts)
    print(f"\n## {run}\n")
    generator = np.random.default_rng(0)
    crossed = {rule: [] for rule in RULES}
    for _ in range(SPLITS):
        folds = np.array_split(generator.permutation(len(texts)), FOLDS)
        for rule in RULES:
            predicted = np.zeros_like(y)
            for k, held_out in enumerate(folds):
                tuned_on = np.concatenate([f for i, f in enumerate(folds) if i != k])
                predicted[held_out] = scores[held_out] >= tune(scores[tuned_on], y[tuned_on], rule)[0]
            crossed[rule].append(macro_f1_of(predicted, y))
    print("| rule | dev macro-F1, full dev (in-sample) | cross-fitted, mean (min–max) | − grid, same folds: mean (splits above grid) |")
    print("|---|---:|---:|---:|")
    for rule in RULES:
        c = crossed[rule]
        in_sample = macro_f1(scores, y, tune(scores, y, rule)[0])
        gain = [x - g for x, g in zip(c, crossed["grid"])]
        above = sum(d > 0 for d in gain)
        print(f"| {rule} | {in_sample:.4f} | {sum(c) / len(c):.4f} ({min(c):.4f}–{max(c):.4f}) "
              f"| {sum(gain) / len(gain):+.4f} ({above}/{len(gain)}) |")

    temperatures = fit_temperatures(scores, y)
    scaled = sigmoid(logit(scores) / temperatures)
    unscaled_thresholds, global_t = tune(scores, y, "grid")
    mapped = sigmoid(logit(unscaled_thresholds) / temperatures)
    print(f"\nTemperature scaling (median T {float(np.median(temperatures)):.2f}): dev log-loss "
          f"{log_loss(scores, y):.4f} → {log_loss(scaled, y):.4f} (in-sample T); dev macro-F1 unscaled "
          f"{macro_f1(scores, y, unscaled_thresholds):.4f}, scaled with thresholds re-tuned (as the trainer did until the seventh round) "
          f"{macro_f1(scaled, y, tune(scaled, y, 'grid')[0]):.4f}, scaled with the unscaled thresholds mapped "
          f"through T {macro_f1(scaled, y, mapped):.4f}; "
          f"{int((unscaled_thresholds == global_t).sum())} labels on the global threshold")

    # Platt scaling against temperature scaling, as the trainer's `--calibration auto` decides:
    # log-loss cross-fitted on alternate halves of dev, the trainer's thresholds (shrink-10) mapped
    # through each label's map (the same decisions), and whether they stay on the 0.01-0.99 grid.
    fits = {
        "temperature": lambda s, t: (fit_temperatures(s, t), np.zeros(t.shape[1])),
        "platt": lambda s, t: fit_platt(s, t),
    }
    thresholds, _ = tune(scores, y, "shrink-10")
    unscaled_loss = log_loss(scores, y)
    print("\n| calibration | dev log-loss, cross-fitted halves | thresholds off the grid (max) "
          "| dev macro-F1, mapped thresholds | dev micro-F1 at a re-tuned global threshold | auto would apply |")
    print("|---|---:|---:|---:|---:|---|")
    print(f"| none | {unscaled_loss:.4f} | — | {macro_f1(scores, y, thresholds):.4f} "
          f"| {float(f1(scores >= best(scores.ravel(), y.ravel(), GRID), y, None)):.4f} | — |")
    for name, fit in fits.items():
        halves = [np.arange(len(y)) % 2 == k for k in (0, 1)]
        crossed = 0.0
        for fit_on, score_on in (halves, halves[::-1]):
            t, b = fit(scores[fit_on], y[fit_on])
            crossed += log_loss(sigmoid(logit(scores[score_on]) / t + b), y[score_on]) * score_on.sum()
        crossed /= len(y)
        t, b = fit(scores, y)
        scaled = sigmoid(logit(scores) / t + b)
        mapped = sigmoid(logit(thresholds) / t + b)
        off = mapped[(mapped < 0.01) | (mapped > 0.99)]
        f1_mapped = macro_f1(scaled, y, mapped)
        micro = float(f1(scaled >= best(scaled.ravel(), y.ravel(), GRID), y, None))
        applies = crossed < unscaled_loss and f1_mapped >= macro_f1(scores, y, thresholds) - 1e-9 and off.size == 0
        print(f"| {name} | {crossed:.4f} | {off.size}" + (f" ({off.max():.4f})" if off.size else "")
              + f" | {f1_mapped:.4f} | {micro:.4f} | {'yes' if applies else 'no'} |")

    if test:
        test_texts, test_y = test
        test_scores = run_scores(run, "test", test_texts)
        print("\nTest split, each rule tuned on the full dev split: macro-F1 " + ", ".join(
            f"{rule} {macro_f1(test_scores, test_y, tune(scores, y, rule)[0]):.4f}" for rule in RULES)
            + f"; micro-F1 at the global threshold {global_t:.2f} (uncalibrated) "
            f"{float(f1(test_scores >= global_t, test_y, None)):.4f}")


def main():
    args = sys.argv[1:]
    with_test = "--test" in args
    runs = [a for a in args if a != "--test"]
    if not runs or runs[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if runs else 2)
    texts, y = read_split("dev")
    test = read_split("test") if with_test else None
    print(f"# Threshold rules on dev ({len(texts)} texts, {y.shape[1]} labels; {SPLITS} random {FOLDS}-fold splits)")
    for run in runs:
        study(run, texts, y, test)


if __name__ == "__main__":
    main()
