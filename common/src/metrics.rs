//! Multi-label evaluation (micro/macro precision, recall and F1, per-label report, subset accuracy,
//! Hamming loss, macro-F1 of each grouping of the labels) and decision-threshold tuning; single-label
//! models are evaluated on their argmax decisions with the same figures.
//!
//! Scores and targets are row-major `[examples × labels]`. A label is predicted when its score is
//! at least its threshold. F1 of a label with no true and no predicted positives is 0 (as
//! scikit-learn's default `zero_division`).
use serde::{Deserialize, Serialize};

use crate::calibration;
#[cfg(test)]
use crate::labels::LabelGrouping;
use crate::labels::{LabelGroup, LabelSet};

/// Threshold candidates: 0.01, 0.02, ..., 0.99.
pub fn threshold_grid() -> impl Iterator<Item = f32> {
    (1..100).map(|i| i as f32 / 100.0)
}

/// The range `threshold_grid` spans: scores whose thresholds fall outside it cannot be tuned.
pub const THRESHOLD_GRID_RANGE: std::ops::RangeInclusive<f32> = 0.01..=0.99;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counts {
    tp: u64,
    fp: u64,
    fn_: u64,
}

impl Counts {
    fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }
    fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }
    fn f1(&self) -> f64 {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LabelMetrics {
    pub name: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// True positives in the data.
    pub support: u64,
    pub threshold: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Evaluation {
    pub micro_precision: f64,
    pub micro_recall: f64,
    pub micro_f1: f64,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    /// Fraction of examples whose predicted label set equals the true set exactly.
    pub subset_accuracy: f64,
    /// Fraction of wrong (example, label) decisions.
    pub hamming_loss: f64,
    /// Macro-F1 over the groups of each grouping of the labels, by grouping name; a group is
    /// present if any of its labels is.
    #[serde(default)]
    pub grouping_macro_f1: Vec<(String, f64)>,
    /// Fraction of examples with no predicted label at all.
    pub empty_prediction_rate: f64,
    pub per_label: Vec<LabelMetrics>,
}

/// Binary decisions from scores and per-label thresholds.
pub fn decide(scores: &[f32], num_labels: usize, thresholds: &[f32]) -> Vec<bool> {
    assert_eq!(thresholds.len(), num_labels, "one threshold per label");
    scores
        .iter()
        .enumerate()
        .map(|(i, &s)| s >= thresholds[i % num_labels])
        .collect()
}

fn counts(pred: &[bool], truth: &[bool], width: usize) -> Vec<Counts> {
    let mut c = vec![Counts::default(); width];
    for (i, (&p, &t)) in pred.iter().zip(truth).enumerate() {
        let k = &mut c[i % width];
        match (p, t) {
            (true, true) => k.tp += 1,
            (true, false) => k.fp += 1,
            (false, true) => k.fn_ += 1,
            (false, false) => {}
        }
    }
    c
}

/// Counts of `(score, truth)` pairs decided at threshold `t`.
fn counts_at(pairs: impl Iterator<Item = (f32, bool)>, t: f32) -> Counts {
    let mut c = Counts::default();
    for (s, truth) in pairs {
        match (s >= t, truth) {
            (true, true) => c.tp += 1,
            (true, false) => c.fp += 1,
            (false, true) => c.fn_ += 1,
            (false, false) => {}
        }
    }
    c
}

fn macro_f1(c: &[Counts]) -> f64 {
    c.iter().map(Counts::f1).sum::<f64>() / c.len().max(1) as f64
}

/// Collapses label decisions to group decisions (a group is on if any member is).
fn group_matrix(matrix: &[bool], num_labels: usize, groups: &[LabelGroup]) -> Vec<bool> {
    matrix
        .chunks(num_labels)
        .flat_map(|row| {
            groups
                .iter()
                .map(|g| g.members.iter().any(|&m| row[m]))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Scores of coarse groups, row by row: a group's score is its best member's (a text carries the
/// group when it carries any member, so the group is as likely as its likeliest member).
pub fn group_scores(scores: &[f32], num_labels: usize, groups: &[LabelGroup]) -> Vec<f32> {
    scores
        .chunks(num_labels)
        .flat_map(|row| groups.iter().map(move |g| group_score(row, &g.members)))
        .collect()
}

/// One text's score for a group: its best member's probability (0 for ids beyond the row).
pub fn group_score(row: &[f32], members: &[usize]) -> f32 {
    members
        .iter()
        .filter_map(|&m| row.get(m).copied())
        .fold(0.0, f32::max)
}

/// Multi-hot group targets: a text has a group when it has any of its members.
pub fn group_targets(targets: &[u8], num_labels: usize, groups: &[LabelGroup]) -> Vec<u8> {
    let truth: Vec<bool> = targets.iter().map(|&t| t != 0).collect();
    group_matrix(&truth, num_labels, groups)
        .into_iter()
        .map(u8::from)
        .collect()
}

/// Single-label decisions: each row's best label (lowest id on ties).
pub fn decide_argmax(scores: &[f32], num_labels: usize) -> Vec<bool> {
    scores
        .chunks(num_labels)
        .flat_map(|row| {
            let best = row
                .iter()
                .enumerate()
                .fold(0, |b, (i, &s)| if s > row[b] { i } else { b });
            (0..row.len()).map(move |i| i == best)
        })
        .collect()
}

/// Evaluates scores against multi-hot targets (`0`/`1`) at the given per-label thresholds.
pub fn evaluate(
    scores: &[f32],
    targets: &[u8],
    labels: &LabelSet,
    thresholds: &[f32],
) -> Evaluation {
    assert_eq!(
        scores.len(),
        targets.len(),
        "scores and targets have the same shape"
    );
    let pred = decide(scores, labels.len(), thresholds);
    evaluate_decisions(&pred, targets, labels, thresholds)
}

/// Evaluates a single-label model's argmax decisions (thresholds reported as 0).
pub fn evaluate_argmax(scores: &[f32], targets: &[u8], labels: &LabelSet) -> Evaluation {
    let pred = decide_argmax(scores, labels.len());
    evaluate_decisions(&pred, targets, labels, &vec![0.0; labels.len()])
}

/// Evaluates label decisions against multi-hot targets; `thresholds` are only reported.
pub fn evaluate_decisions(
    pred: &[bool],
    targets: &[u8],
    labels: &LabelSet,
    thresholds: &[f32],
) -> Evaluation {
    let l = labels.len();
    assert_eq!(
        pred.len(),
        targets.len(),
        "decisions and targets have the same shape"
    );
    let n = pred.len() / l;
    let truth: Vec<bool> = targets.iter().map(|&t| t != 0).collect();
    let per = counts(pred, &truth, l);
    let total = per.iter().fold(Counts::default(), |a, c| Counts {
        tp: a.tp + c.tp,
        fp: a.fp + c.fp,
        fn_: a.fn_ + c.fn_,
    });
    let exact = pred
        .chunks(l)
        .zip(truth.chunks(l))
        .filter(|(p, t)| p == t)
        .count();
    let empty = pred.chunks(l).filter(|p| !p.iter().any(|&x| x)).count();
    let wrong = pred.iter().zip(&truth).filter(|(p, t)| p != t).count();
    let group_f1 = |groups: &[LabelGroup]| {
        if groups.is_empty() {
            return 0.0;
        }
        let gp = group_matrix(pred, l, groups);
        let gt = group_matrix(&truth, l, groups);
        macro_f1(&counts(&gp, &gt, groups.len()))
    };
    Evaluation {
        micro_precision: total.precision(),
        micro_recall: total.recall(),
        micro_f1: total.f1(),
        macro_precision: per.iter().map(Counts::precision).sum::<f64>() / l as f64,
        macro_recall: per.iter().map(Counts::recall).sum::<f64>() / l as f64,
        macro_f1: macro_f1(&per),
        subset_accuracy: ratio(exact as u64, n as u64),
        hamming_loss: ratio(wrong as u64, (n * l) as u64),
        grouping_macro_f1: labels
            .groupings
            .iter()
            .map(|g| (g.name.clone(), group_f1(&g.groups)))
            .collect(),
        empty_prediction_rate: ratio(empty as u64, n as u64),
        per_label: per
            .iter()
            .enumerate()
            .map(|(j, c)| LabelMetrics {
                name: labels.names[j].clone(),
                precision: c.precision(),
                recall: c.recall(),
                f1: c.f1(),
                support: c.tp + c.fn_,
                threshold: thresholds[j],
            })
            .collect(),
    }
}

/// For each label, the grid threshold that maximises that label's F1 (lowest on ties).
/// A label with no positives in the data keeps 0.5.
pub fn tune_per_label(scores: &[f32], targets: &[u8], num_labels: usize) -> Vec<f32> {
    (0..num_labels)
        .map(|j| {
            let column: Vec<(f32, bool)> = scores
                .iter()
                .zip(targets)
                .skip(j)
                .step_by(num_labels)
                .map(|(&s, &t)| (s, t != 0))
                .collect();
            if !column.iter().any(|&(_, t)| t) {
                return 0.5;
            }
            let mut best = (f64::MIN, 0.5f32);
            for t in threshold_grid() {
                let c = counts_at(column.iter().copied(), t);
                if c.f1() > best.0 {
                    best = (c.f1(), t);
                }
            }
            best.1
        })
        .collect()
}

/// Dev positives at which a label's own threshold and the global one weigh equally when they are
/// blended (see `tune_thresholds`): a label with `s` dev positives keeps the weight s / (s + 10)
/// on its own threshold. Chosen on dev only, cross-fitted (`scripts/threshold_study.py`).
pub const THRESHOLD_SHRINK_POSITIVES: f64 = 10.0;

/// Why a label uses the global threshold instead of one of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum Fallback {
    /// No positives in the tuning data: nothing to tune on.
    NoPositives,
    /// Its own threshold would predict the label for (nearly) every dev text.
    PredictsNearlyAll { threshold: f32, rate: f64 },
}

impl std::fmt::Display for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fallback::NoPositives => write!(f, "no dev positives"),
            Fallback::PredictsNearlyAll { threshold, rate } => write!(
                f,
                "its own threshold {threshold:.2} predicts it for {:.0} % of dev texts",
                rate * 100.0
            ),
        }
    }
}

/// Decision thresholds tuned on dev.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// One per label, in label-id order: the label's own F1-maximising threshold blended with
    /// `global`, or `global` itself where `fallbacks` says why.
    pub per_label: Vec<f32>,
    /// The one threshold maximising micro-F1 over all labels.
    pub global: f32,
    /// For each label, why it uses the global threshold (`None`: its own, blended).
    pub fallbacks: Vec<Option<Fallback>>,
}

impl Thresholds {
    /// No thresholds: a single-label model predicts its best label.
    pub fn none() -> Self {
        Self {
            per_label: vec![],
            global: 0.0,
            fallbacks: vec![],
        }
    }

    /// The thresholds for scores mapped per label as sigmoid(logit / T + b) (`maps`): each
    /// label's threshold goes through its own map, so every decision stays what it was on the
    /// unscaled scores; `global` becomes the micro-F1 optimum on the `scaled` scores.
    pub fn through_scaling(
        &self,
        maps: &calibration::Scaling,
        scaled: &[f32],
        targets: &[u8],
    ) -> Self {
        Self {
            per_label: self
                .per_label
                .iter()
                .enumerate()
                .map(|(j, &t)| maps.score(j, t))
                .collect(),
            global: tune_global(scaled, targets),
            fallbacks: self.fallbacks.clone(),
        }
    }
}

/// Tunes the global threshold (micro-F1) and each label's own (its F1), then blends the two in
/// logit space, weight s / (s + `THRESHOLD_SHRINK_POSITIVES`) on the label's own for a label with
/// s dev positives. A threshold fitted to a few dozen positives chases their noise: blended, a
/// rare label's threshold stays near the global one and a frequent label keeps nearly its own
/// (cross-fitted on dev this beat both a hard minimum support and no blending). A label keeps
/// the global threshold outright when it has no positives, or when its own threshold would
/// predict it for at least half of the dev texts and 3× more often than it occurs (an
/// under-trained label whose scores are all tiny gets 0.01 and is then predicted for every text).
pub fn tune_thresholds(scores: &[f32], targets: &[u8], num_labels: usize) -> Thresholds {
    let global = tune_global(scores, targets);
    let own = tune_per_label(scores, targets, num_labels);
    let n = scores.len() / num_labels.max(1);
    let mut per_label = Vec::with_capacity(num_labels);
    let mut fallbacks = Vec::with_capacity(num_labels);
    for (j, &t) in own.iter().enumerate() {
        let column = || {
            scores
                .iter()
                .zip(targets)
                .skip(j)
                .step_by(num_labels)
                .map(|(&s, &y)| (s, y != 0))
        };
        let support = column().filter(|&(_, y)| y).count() as u64;
        let predicted = column().filter(|&(s, _)| s >= t).count();
        let rate = ratio(predicted as u64, n as u64);
        let prevalence = ratio(support, n as u64);
        let fallback = if support == 0 {
            Some(Fallback::NoPositives)
        } else if rate >= 0.5 && rate >= 3.0 * prevalence {
            Some(Fallback::PredictsNearlyAll { threshold: t, rate })
        } else {
            None
        };
        per_label.push(match fallback {
            Some(_) => global,
            None => blend(t, global, support),
        });
        fallbacks.push(fallback);
    }
    Thresholds {
        per_label,
        global,
        fallbacks,
    }
}

/// `own` moved towards `global` in logit space, weight s / (s + K) on `own`.
fn blend(own: f32, global: f32, support: u64) -> f32 {
    let s = support as f64;
    let w = s / (s + THRESHOLD_SHRINK_POSITIVES);
    let z = w * calibration::logit(own) + (1.0 - w) * calibration::logit(global);
    calibration::scaled(z, 1.0)
}

/// The one grid threshold for all labels that maximises micro-F1 (lowest on ties).
pub fn tune_global(scores: &[f32], targets: &[u8]) -> f32 {
    let mut best = (f64::MIN, 0.5f32);
    for t in threshold_grid() {
        let c = counts_at(scores.iter().zip(targets).map(|(&s, &y)| (s, y != 0)), t);
        if c.f1() > best.0 {
            best = (c.f1(), t);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels3() -> LabelSet {
        LabelSet {
            names: vec!["a".into(), "b".into(), "neutral".into()],
            groupings: vec![
                LabelGrouping {
                    name: "ekman".into(),
                    groups: vec![
                        LabelGroup {
                            name: "ab".into(),
                            members: vec![0, 1],
                        },
                        LabelGroup {
                            name: "neutral".into(),
                            members: vec![2],
                        },
                    ],
                },
                LabelGrouping {
                    name: "sentiment".into(),
                    groups: vec![LabelGroup {
                        name: "a".into(),
                        members: vec![0],
                    }],
                },
            ],
        }
    }

    #[test]
    fn group_scores_take_the_best_member_and_targets_any_member() {
        let groups = vec![
            LabelGroup {
                name: "ab".into(),
                members: vec![0, 1],
            },
            LabelGroup {
                name: "c".into(),
                members: vec![2],
            },
        ];
        let scores = [0.1, 0.7, 0.2, 0.4, 0.3, 0.9];
        assert_eq!(group_scores(&scores, 3, &groups), vec![0.7, 0.2, 0.4, 0.9]);
        let targets = [0, 1, 0, 0, 0, 1];
        assert_eq!(group_targets(&targets, 3, &groups), vec![1, 0, 0, 1]);
    }

    #[test]
    fn hand_computed_metrics() {
        // 4 examples × 3 labels, threshold 0.5.
        let scores = [
            0.9, 0.1, 0.2, // pred {a}     truth {a}
            0.8, 0.7, 0.1, // pred {a,b}   truth {b}
            0.2, 0.3, 0.4, // pred {}      truth {neutral}
            0.1, 0.6, 0.9, // pred {b,n}   truth {b,n}
        ];
        let targets = [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 1];
        let e = evaluate(&scores, &targets, &labels3(), &[0.5; 3]);
        // a: tp1 fp1 fn0 → P .5 R 1 F1 2/3; b: tp2 fp0 fn0 → 1; neutral: tp1 fp0 fn1 → P1 R.5 F1 2/3.
        assert!((e.per_label[0].f1 - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(e.per_label[1].f1, 1.0);
        assert_eq!(e.per_label[2].recall, 0.5);
        assert!((e.macro_f1 - (2.0 / 3.0 + 1.0 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        // micro: tp 4, fp 1, fn 1 → P .8 R .8 F1 .8
        assert!((e.micro_precision - 0.8).abs() < 1e-12);
        assert!((e.micro_f1 - 0.8).abs() < 1e-12);
        assert_eq!(e.subset_accuracy, 0.5);
        assert!((e.hamming_loss - 2.0 / 12.0).abs() < 1e-12);
        assert_eq!(e.empty_prediction_rate, 0.25);
        assert_eq!(e.per_label[2].support, 2);
        // groups: ab pred [1,1,0,1] truth [1,1,0,1] → F1 1; neutral pred [0,0,0,1] truth [0,0,1,1] → 2/3
        assert_eq!(e.grouping_macro_f1[0].0, "ekman");
        assert!((e.grouping_macro_f1[0].1 - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        // sentiment "a" group: pred [1,1,0,0] truth [1,0,0,0] → 2/3
        assert!((e.grouping_macro_f1[1].1 - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn single_label_decisions_are_the_argmax() {
        let scores = [0.2, 0.5, 0.3, 0.6, 0.3, 0.1, 0.4, 0.4, 0.2];
        let pred = decide_argmax(&scores, 3);
        assert_eq!(
            pred,
            [false, true, false, true, false, false, true, false, false],
            "ties go to the lowest id"
        );
        let targets = [0, 1, 0, 1, 0, 0, 0, 1, 0];
        let e = evaluate_argmax(&scores, &targets, &labels3());
        assert!((e.subset_accuracy - 2.0 / 3.0).abs() < 1e-12, "accuracy");
        assert_eq!(e.empty_prediction_rate, 0.0);
    }

    #[test]
    fn zero_support_and_no_predictions_gives_zero_f1() {
        let e = evaluate(&[0.1, 0.1, 0.9], &[0, 0, 1], &labels3(), &[0.5; 3]);
        assert_eq!(e.per_label[0].f1, 0.0);
        assert_eq!(e.per_label[2].f1, 1.0);
    }

    #[test]
    fn per_label_thresholds_maximise_each_f1() {
        // Label 0 positives score 0.30 and 0.35, negatives 0.2 and 0.1: best threshold is 0.21..0.30 → lowest 0.21.
        // Label 1 has no positives → 0.5.
        let scores = [0.30, 0.9, 0.35, 0.8, 0.2, 0.7, 0.1, 0.6];
        let targets = [1, 0, 1, 0, 0, 0, 0, 0];
        let t = tune_per_label(&scores, &targets, 2);
        assert!((t[0] - 0.21).abs() < 1e-6, "{t:?}");
        assert_eq!(t[1], 0.5);
        let g = tune_global(&scores, &targets);
        // Any threshold in (0.35, 0.6] predicts no positives; the best global one keeps label 0's
        // positives and rejects label 1: impossible, so it trades off; it must beat 0.5's micro-F1.
        let f = |th: f32| evaluate_micro(&scores, &targets, th);
        assert!(f(g) >= f(0.5) && f(g) >= f(0.21), "{g}");
    }

    #[test]
    fn label_thresholds_are_blended_with_the_global_one_by_support() {
        // 100 texts × 6 labels. Label 0 is learned but scores low (34 positives at 0.25,
        // negatives 0.1); label 1 is under-trained (every score ~0.02, 30 positives): its own
        // best is 0.01, which predicts it for every text; label 2 has only 5 positives; labels 3
        // and 4 (40 positives at 0.9, negatives at 0.3) pull the global threshold above 0.3;
        // label 5 has no positives.
        let n = 100;
        let mut scores = Vec::new();
        let mut targets = Vec::new();
        for i in 0..n {
            let pos = [i % 3 == 0, i % 10 < 3, i < 5, i % 5 < 2, i % 5 > 2, false];
            scores.extend([
                if pos[0] { 0.25 } else { 0.1 },
                0.02 + (i % 7) as f32 * 0.0001,
                if pos[2] { 0.9 } else { 0.05 },
                if pos[3] { 0.9 } else { 0.3 },
                if pos[4] { 0.9 } else { 0.3 },
                0.2,
            ]);
            targets.extend(pos.map(u8::from));
        }
        let own = tune_per_label(&scores, &targets, 6);
        assert!(
            own[1] <= 0.02,
            "the naive tuning predicts everything: {own:?}"
        );
        let t = tune_thresholds(&scores, &targets, 6);
        assert!(t.global > 0.3, "{t:?}");
        let logit = calibration::logit;
        let (g, own_weight) = (logit(t.global), |s: f64| {
            s / (s + THRESHOLD_SHRINK_POSITIVES)
        });
        for (j, support) in [(0, 34.0), (2, 5.0)] {
            assert!(t.fallbacks[j].is_none(), "{:?}", t.fallbacks);
            let w = own_weight(support);
            let expected = w * logit(own[j]) + (1.0 - w) * g;
            assert!((logit(t.per_label[j]) - expected).abs() < 1e-5, "{t:?}");
        }
        // Label 0's blended threshold still separates its positives; label 2 (5 positives) sits
        // nearer the global threshold than its own, label 0 (34) nearer its own.
        let f1 = |j: usize| label_f1(&scores, &targets, 6, j, t.per_label[j]);
        assert_eq!(f1(0), 1.0);
        assert!((logit(t.per_label[2]) - g).abs() < (logit(t.per_label[2]) - logit(own[2])).abs());
        assert!((logit(t.per_label[0]) - g).abs() > (logit(t.per_label[0]) - logit(own[0])).abs());
        assert!(
            matches!(t.fallbacks[1], Some(Fallback::PredictsNearlyAll { rate, .. }) if rate == 1.0),
            "{:?}",
            t.fallbacks
        );
        assert_eq!(t.fallbacks[5], Some(Fallback::NoPositives));
        assert_eq!(t.per_label[1], t.global);
        assert_eq!(t.per_label[5], t.global);
        // No stored threshold predicts a label for half the texts.
        let pred = decide(&scores, 6, &t.per_label);
        for j in 0..6 {
            let rate = pred.iter().skip(j).step_by(6).filter(|&&p| p).count() as f64 / n as f64;
            assert!(rate < 0.5, "label {j} predicted for {rate}");
        }
    }

    #[test]
    fn blending_weighs_the_own_threshold_by_support() {
        // 10 positives weigh both equally: logit(0.5) = 0, so sigmoid(ln(1/9) / 2) = 0.25.
        assert!((blend(0.1, 0.5, 10) - 0.25).abs() < 1e-6);
        assert!((blend(0.1, 0.5, 10_000) - 0.1).abs() < 1e-3);
        assert!((blend(0.3, 0.3, 3) - 0.3).abs() < 1e-6);
        let mut last = 0.5;
        for support in [1, 5, 20, 100] {
            let t = blend(0.1, 0.5, support);
            assert!(t < last && t > 0.1, "{support}: {t}");
            last = t;
        }
    }

    #[test]
    fn thresholds_through_a_scaling_keep_every_decision() {
        let scores = [0.3, 0.8, 0.6, 0.2, 0.45, 0.55, 0.1, 0.9];
        let targets = [1, 1, 1, 0, 0, 1, 0, 1];
        let t = tune_thresholds(&scores, &targets, 2);
        for shifts in [vec![], vec![-1.25, 2.0]] {
            let maps = calibration::Scaling {
                temperatures: vec![2.5, 0.4],
                shifts,
            };
            let scaled = maps.apply(&scores);
            let mapped = t.through_scaling(&maps, &scaled, &targets);
            assert_eq!(
                decide(&scores, 2, &t.per_label),
                decide(&scaled, 2, &mapped.per_label)
            );
            assert_eq!(mapped.global, tune_global(&scaled, &targets));
            assert_eq!(mapped.fallbacks, t.fallbacks);
        }
    }

    fn label_f1(scores: &[f32], targets: &[u8], labels: usize, j: usize, t: f32) -> f64 {
        let column = scores.iter().zip(targets).skip(j).step_by(labels);
        counts_at(column.map(|(&s, &y)| (s, y != 0)), t).f1()
    }

    fn evaluate_micro(scores: &[f32], targets: &[u8], t: f32) -> f64 {
        counts_at(scores.iter().zip(targets).map(|(&s, &y)| (s, y != 0)), t).f1()
    }
}
