//! Whether a score of 0.7 means 70 %: reliability bins, expected calibration error (ECE) and
//! log-loss of per-label sigmoid scores, and per-label temperature scaling (sigmoid(z / T), one
//! T per label, fitted by minimising log-loss).

/// Equal-width score bins of a reliability diagram.
pub const BINS: usize = 10;
/// Temperatures are searched in [1 / MAX_INVERSE, 1 / MIN_INVERSE].
const MIN_INVERSE: f64 = 0.05;
const MAX_INVERSE: f64 = 20.0;
/// Scores are clamped this far from 0 and 1 before a logarithm or a logit.
const EPS: f64 = 1e-7;

/// One bin of a reliability diagram: scores in `[lo, hi)` (the last bin includes 1).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Bin {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    /// Mean score of the bin's (text, label) pairs.
    pub mean_score: f64,
    /// Share of them that carry the label.
    pub frequency: f64,
}

/// Reliability bins of `scores` against 0/1 `targets` (same length).
pub fn reliability(scores: &[f32], targets: &[u8]) -> Vec<Bin> {
    let mut count = [0usize; BINS];
    let mut score_sum = [0f64; BINS];
    let mut positives = [0usize; BINS];
    for (&s, &y) in scores.iter().zip(targets) {
        let s = f64::from(s).clamp(0.0, 1.0);
        let b = ((s * BINS as f64) as usize).min(BINS - 1);
        count[b] += 1;
        score_sum[b] += s;
        positives[b] += usize::from(y > 0);
    }
    (0..BINS)
        .map(|b| Bin {
            lo: b as f64 / BINS as f64,
            hi: (b + 1) as f64 / BINS as f64,
            count: count[b],
            mean_score: score_sum[b] / count[b].max(1) as f64,
            frequency: positives[b] as f64 / count[b].max(1) as f64,
        })
        .collect()
}

/// Expected calibration error: the count-weighted mean gap between score and frequency.
pub fn expected_calibration_error(bins: &[Bin]) -> f64 {
    let n: usize = bins.iter().map(|b| b.count).sum();
    if n == 0 {
        return 0.0;
    }
    bins.iter()
        .map(|b| b.count as f64 * (b.mean_score - b.frequency).abs())
        .sum::<f64>()
        / n as f64
}

/// Mean binary cross-entropy of `scores` against 0/1 `targets`.
pub fn log_loss(scores: &[f32], targets: &[u8]) -> f64 {
    if scores.is_empty() {
        return 0.0;
    }
    scores
        .iter()
        .zip(targets)
        .map(|(&s, &y)| {
            let p = f64::from(s).clamp(EPS, 1.0 - EPS);
            if y > 0 {
                -p.ln()
            } else {
                -(1.0 - p).ln()
            }
        })
        .sum::<f64>()
        / scores.len() as f64
}

/// The logit of a sigmoid score (clamped away from 0 and 1).
pub fn logit(score: f32) -> f64 {
    let p = f64::from(score).clamp(EPS, 1.0 - EPS);
    (p / (1.0 - p)).ln()
}

/// sigmoid(logit / temperature).
pub fn scaled(logit: f64, temperature: f64) -> f32 {
    (1.0 / (1.0 + (-logit / temperature).exp())) as f32
}

/// Mean log-loss of sigmoid(a · z) against `targets`.
fn nll_at(inverse: f64, logits: &[f64], targets: &[u8]) -> f64 {
    logits
        .iter()
        .zip(targets)
        .map(|(&z, &y)| {
            let m = if y > 0 { inverse * z } else { -inverse * z };
            // -log sigmoid(m), stable for large |m|.
            if m > 0.0 {
                (-m).exp().ln_1p()
            } else {
                -m + m.exp().ln_1p()
            }
        })
        .sum::<f64>()
        / logits.len().max(1) as f64
}

/// The temperature T minimising the log-loss of sigmoid(z / T) on (`logits`, `targets`): the
/// loss is convex in 1/T, searched by golden section over [0.05, 20]. 1 when there is nothing to
/// fit (no examples, or one class only).
pub fn fit_temperature(logits: &[f64], targets: &[u8]) -> f64 {
    let positives = targets.iter().filter(|&&y| y > 0).count();
    if logits.is_empty() || positives == 0 || positives == targets.len() {
        return 1.0;
    }
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    let (mut lo, mut hi) = (MIN_INVERSE, MAX_INVERSE);
    let mut a = hi - ratio * (hi - lo);
    let mut b = lo + ratio * (hi - lo);
    let (mut fa, mut fb) = (nll_at(a, logits, targets), nll_at(b, logits, targets));
    for _ in 0..80 {
        if fa <= fb {
            hi = b;
            b = a;
            fb = fa;
            a = hi - ratio * (hi - lo);
            fa = nll_at(a, logits, targets);
        } else {
            lo = a;
            a = b;
            fa = fb;
            b = lo + ratio * (hi - lo);
            fb = nll_at(b, logits, targets);
        }
    }
    1.0 / ((lo + hi) / 2.0)
}

/// Label `j`'s column of row-major `[examples × labels]` scores and targets.
pub fn label_column(
    scores: &[f32],
    targets: &[u8],
    labels: usize,
    j: usize,
) -> (Vec<f32>, Vec<u8>) {
    scores
        .iter()
        .zip(targets)
        .skip(j)
        .step_by(labels.max(1))
        .map(|(&s, &y)| (s, y))
        .unzip()
}

/// One temperature per label for row-major `[examples × labels]` scores.
pub fn fit_temperatures(scores: &[f32], targets: &[u8], labels: usize) -> Vec<f64> {
    (0..labels)
        .map(|j| {
            let (s, y) = label_column(scores, targets, labels, j);
            let z: Vec<f64> = s.into_iter().map(logit).collect();
            fit_temperature(&z, &y)
        })
        .collect()
}

/// `scores` with each label's temperature applied.
pub fn apply_temperatures(scores: &[f32], temperatures: &[f64]) -> Vec<f32> {
    let l = temperatures.len().max(1);
    scores
        .iter()
        .enumerate()
        .map(|(i, &s)| scaled(logit(s), temperatures[i % l]))
        .collect()
}

/// Log-loss of per-label temperatures fitted on one half of the rows (alternate examples) and
/// applied to the other, both ways round: an estimate on data the fit has not seen.
pub fn cross_fitted_log_loss(scores: &[f32], targets: &[u8], labels: usize) -> f64 {
    let l = labels.max(1);
    let half = |parity: usize| -> (Vec<f32>, Vec<u8>) {
        let mut s = Vec::new();
        let mut y = Vec::new();
        for (i, (row, t)) in scores.chunks(l).zip(targets.chunks(l)).enumerate() {
            if i % 2 == parity {
                s.extend_from_slice(row);
                y.extend_from_slice(t);
            }
        }
        (s, y)
    };
    let (even, odd) = (half(0), half(1));
    let scored = |fit: &(Vec<f32>, Vec<u8>), on: &(Vec<f32>, Vec<u8>)| {
        let t = fit_temperatures(&fit.0, &fit.1, l);
        log_loss(&apply_temperatures(&on.0, &t), &on.1) * on.0.len() as f64
    };
    (scored(&even, &odd) + scored(&odd, &even)) / scores.len().max(1) as f64
}

/// A multi-label model's calibration as fitted on dev and recorded in its manifest.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Calibration {
    /// "temperature": scores are sigmoid(logit / T), one T per label.
    pub method: String,
    /// Whether the published weights serve the scaled scores (the head's rows are divided by
    /// the temperatures), or the temperatures were fitted and measured only.
    pub applied: bool,
    /// Why it was applied or not.
    pub reason: String,
    /// One per label, in label-id order.
    pub temperatures: Vec<f64>,
    /// Dev log-loss of the unscaled scores.
    pub dev_log_loss: f64,
    /// Dev log-loss after scaling, cross-fitted (`cross_fitted_log_loss`).
    pub dev_log_loss_scaled: f64,
    /// Dev macro-F1 at per-label thresholds tuned on the unscaled, and on the scaled scores.
    pub dev_macro_f1: f64,
    pub dev_macro_f1_scaled: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_calibrated_score_has_no_gap_and_an_overconfident_one_does() {
        // Scores of 0.25 where a quarter carry the label: perfectly calibrated.
        let scores = vec![0.25f32; 8];
        let targets = [1u8, 0, 0, 0, 1, 0, 0, 0];
        let bins = reliability(&scores, &targets);
        assert_eq!(bins.iter().map(|b| b.count).sum::<usize>(), 8);
        assert!(expected_calibration_error(&bins) < 1e-12);
        // Scores of 0.95 where half carry it: a gap of 0.45.
        let scores = vec![0.95f32; 4];
        let bins = reliability(&scores, &[1, 0, 1, 0]);
        assert!((expected_calibration_error(&bins) - 0.45).abs() < 1e-6);
        assert_eq!(bins[9].count, 4, "0.95 falls in the last bin");
        assert_eq!(reliability(&[1.0], &[1])[9].count, 1, "1.0 too");
    }

    #[test]
    fn the_fitted_temperature_undoes_a_known_sharpening() {
        // Labels drawn from sigmoid(z), reported as sigmoid(3 z): the fit finds T ≈ 3.
        let mut z = Vec::new();
        let mut y = Vec::new();
        let mut state = 12345u64;
        for i in 0..20_000 {
            let zi = (i % 200) as f64 / 25.0 - 4.0;
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            y.push(u8::from(u < 1.0 / (1.0 + (-zi).exp())));
            z.push(3.0 * zi);
        }
        let t = fit_temperature(&z, &y);
        assert!((t - 3.0).abs() < 0.15, "T = {t}");
        let before: Vec<f32> = z.iter().map(|&z| scaled(z, 1.0)).collect();
        let after: Vec<f32> = z.iter().map(|&z| scaled(z, t)).collect();
        assert!(log_loss(&after, &y) < log_loss(&before, &y));
        assert!(
            expected_calibration_error(&reliability(&after, &y))
                < expected_calibration_error(&reliability(&before, &y))
        );
    }

    #[test]
    fn nothing_to_fit_keeps_the_scores() {
        assert_eq!(fit_temperature(&[1.0, 2.0], &[0, 0]), 1.0);
        assert_eq!(fit_temperature(&[], &[]), 1.0);
        let s = [0.2f32, 0.7, 0.9, 0.1];
        let same = apply_temperatures(&s, &[1.0, 1.0]);
        for (a, b) in s.iter().zip(&same) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}
