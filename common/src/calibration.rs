//! Whether a score of 0.7 means 70 %: reliability bins, expected calibration error (ECE) and
//! log-loss of per-label sigmoid scores, and per-label scaling fitted by minimising log-loss:
//! temperature scaling (sigmoid(z / T)) or Platt scaling (sigmoid(z / T + b), a shift too).

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
    calibrated(logit, temperature, 0.0)
}

/// sigmoid(logit / temperature + shift).
pub fn calibrated(logit: f64, temperature: f64, shift: f64) -> f32 {
    (1.0 / (1.0 + (-(logit / temperature + shift)).exp())) as f32
}

/// -log sigmoid(m), stable for large |m|.
fn neg_log_sigmoid(m: f64) -> f64 {
    if m > 0.0 {
        (-m).exp().ln_1p()
    } else {
        -m + m.exp().ln_1p()
    }
}

/// Mean log-loss of sigmoid(a · z + c) against `targets`.
fn nll_affine(inverse: f64, shift: f64, logits: &[f64], targets: &[u8]) -> f64 {
    logits
        .iter()
        .zip(targets)
        .map(|(&z, &y)| {
            let m = inverse * z + shift;
            neg_log_sigmoid(if y > 0 { m } else { -m })
        })
        .sum::<f64>()
        / logits.len().max(1) as f64
}

/// Mean log-loss of sigmoid(a · z) against `targets`.
fn nll_at(inverse: f64, logits: &[f64], targets: &[u8]) -> f64 {
    nll_affine(inverse, 0.0, logits, targets)
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

/// Shifts are searched in [-MAX_SHIFT, MAX_SHIFT] (in logits).
const MAX_SHIFT: f64 = 20.0;

/// Platt scaling: the temperature T and shift b minimising the log-loss of sigmoid(z / T + b) on
/// (`logits`, `targets`) — a logistic regression on the logit, convex in (1/T, b), solved by
/// Newton's method with a backtracking line search, 1/T kept in [0.05, 20] and b in [-20, 20].
/// (1, 0) when there is nothing to fit (no examples, or one class only).
pub fn fit_platt(logits: &[f64], targets: &[u8]) -> (f64, f64) {
    let positives = targets.iter().filter(|&&y| y > 0).count();
    if logits.is_empty() || positives == 0 || positives == targets.len() {
        return (1.0, 0.0);
    }
    let n = logits.len() as f64;
    let clamp = |(a, c): (f64, f64)| {
        (
            a.clamp(MIN_INVERSE, MAX_INVERSE),
            c.clamp(-MAX_SHIFT, MAX_SHIFT),
        )
    };
    let (mut a, mut c) = (1.0, 0.0);
    let mut loss = nll_affine(a, c, logits, targets);
    for _ in 0..100 {
        // Gradient and Hessian of the mean loss in (a, c).
        let (mut ga, mut gc, mut haa, mut hac, mut hcc) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (&z, &y) in logits.iter().zip(targets) {
            let p = 1.0 / (1.0 + (-(a * z + c)).exp());
            let r = p - f64::from(u8::from(y > 0));
            let w = (p * (1.0 - p)).max(1e-12);
            ga += r * z;
            gc += r;
            haa += w * z * z;
            hac += w * z;
            hcc += w;
        }
        let (ga, gc, haa, hac, hcc) = (ga / n, gc / n, haa / n, hac / n, hcc / n);
        let det = haa * hcc - hac * hac;
        let (da, dc) = if det > 1e-18 {
            ((hcc * ga - hac * gc) / det, (haa * gc - hac * ga) / det)
        } else {
            (ga, gc)
        };
        let mut step = 1.0;
        let mut improved = false;
        while step > 1e-8 {
            let (na, nc) = clamp((a - step * da, c - step * dc));
            let next = nll_affine(na, nc, logits, targets);
            if next < loss {
                let gain = loss - next;
                (a, c, loss) = (na, nc, next);
                improved = gain > 1e-15;
                break;
            }
            step /= 2.0;
        }
        if !improved {
            break;
        }
    }
    (1.0 / a, c)
}

/// How a label's logits are mapped before the sigmoid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// z / T.
    Temperature,
    /// z / T + b.
    Platt,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Temperature => "temperature",
            Self::Platt => "platt",
        }
    }
}

/// Per-label maps of the logits, z ↦ z / T + b, in label-id order (no shifts: b = 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Scaling {
    pub temperatures: Vec<f64>,
    pub shifts: Vec<f64>,
}

impl Scaling {
    /// Fitted per label on row-major `[examples × labels]` scores.
    pub fn fit(method: Method, scores: &[f32], targets: &[u8], labels: usize) -> Self {
        let fitted = (0..labels).map(|j| {
            let (s, y) = label_column(scores, targets, labels, j);
            let z: Vec<f64> = s.into_iter().map(logit).collect();
            match method {
                Method::Temperature => (fit_temperature(&z, &y), 0.0),
                Method::Platt => fit_platt(&z, &y),
            }
        });
        let (temperatures, shifts) = fitted.unzip();
        Self {
            temperatures,
            shifts,
        }
    }

    /// Label `j`'s temperature and shift.
    pub fn label(&self, j: usize) -> (f64, f64) {
        (
            self.temperatures.get(j).copied().unwrap_or(1.0),
            self.shifts.get(j).copied().unwrap_or(0.0),
        )
    }

    /// Label `j`'s score through its map.
    pub fn score(&self, j: usize, score: f32) -> f32 {
        let (t, b) = self.label(j);
        calibrated(logit(score), t, b)
    }

    /// Row-major `[examples × labels]` scores through each label's map.
    pub fn apply(&self, scores: &[f32]) -> Vec<f32> {
        let l = self.temperatures.len().max(1);
        scores
            .iter()
            .enumerate()
            .map(|(i, &s)| self.score(i % l, s))
            .collect()
    }

    /// The maps back: z = (z' − b) · T = z' / (1 / T) + (−b · T).
    pub fn inverse(&self) -> Self {
        let (temperatures, shifts) = (0..self.temperatures.len())
            .map(|j| {
                let (t, b) = self.label(j);
                (1.0 / t, -b * t)
            })
            .unzip();
        Self {
            temperatures,
            shifts,
        }
    }
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

/// Log-loss of per-label maps (`method`) fitted on one half of the rows (alternate examples) and
/// applied to the other, both ways round: an estimate on data the fit has not seen.
pub fn cross_fitted_log_loss(scores: &[f32], targets: &[u8], labels: usize, method: Method) -> f64 {
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
        let maps = Scaling::fit(method, &fit.0, &fit.1, l);
        log_loss(&maps.apply(&on.0), &on.1) * on.0.len() as f64
    };
    (scored(&even, &odd) + scored(&odd, &even)) / scores.len().max(1) as f64
}

/// A multi-label model's calibration as fitted on dev and recorded in its manifest.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Calibration {
    /// "temperature": scores are sigmoid(logit / T), one T per label; "platt": sigmoid(logit / T
    /// + b), a T and a shift b per label.
    pub method: String,
    /// Whether the published weights serve the scaled scores (the head's rows are divided by
    /// the temperatures, the shifts added to its biases), or the maps were fitted and measured only.
    pub applied: bool,
    /// Why it was applied or not.
    pub reason: String,
    /// One per label, in label-id order.
    pub temperatures: Vec<f64>,
    /// One per label with "platt"; empty (all 0) with "temperature" and in manifests written
    /// before Platt scaling existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shifts: Vec<f64>,
    /// Dev log-loss of the unscaled scores.
    pub dev_log_loss: f64,
    /// Dev log-loss after scaling, cross-fitted (`cross_fitted_log_loss`).
    pub dev_log_loss_scaled: f64,
    /// Dev macro-F1 at per-label thresholds tuned on the unscaled, and on the scaled scores.
    pub dev_macro_f1: f64,
    pub dev_macro_f1_scaled: f64,
}

impl Calibration {
    /// The fitted per-label maps.
    pub fn scaling(&self) -> Scaling {
        Scaling {
            temperatures: self.temperatures.clone(),
            shifts: self.shifts.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logits z on a grid and labels drawn from sigmoid(truth(z)), by a fixed LCG.
    fn drawn(truth: impl Fn(f64) -> f64) -> (Vec<f64>, Vec<u8>) {
        let mut z = Vec::new();
        let mut y = Vec::new();
        let mut state = 12345u64;
        for i in 0..20_000 {
            let zi = (i % 200) as f64 / 25.0 - 4.0;
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            y.push(u8::from(u < 1.0 / (1.0 + (-truth(zi)).exp())));
            z.push(zi);
        }
        (z, y)
    }

    #[test]
    fn platt_scaling_undoes_a_known_sharpening_and_shift() {
        // Reported logits 3 z + 2 where the labels follow sigmoid(z): T ≈ 3, b ≈ −2/3.
        let (z, y) = drawn(|z| z);
        let reported: Vec<f64> = z.iter().map(|&z| 3.0 * z + 2.0).collect();
        let (t, b) = fit_platt(&reported, &y);
        assert!((t - 3.0).abs() < 0.15, "T = {t}");
        assert!((b + 2.0 / 3.0).abs() < 0.08, "b = {b}");
        // Temperature alone cannot remove the shift: Platt's log-loss is lower.
        let scores = |f: &dyn Fn(f64) -> f32| reported.iter().map(|&z| f(z)).collect::<Vec<f32>>();
        let temperature = fit_temperature(&reported, &y);
        let by_temperature = log_loss(&scores(&|z| scaled(z, temperature)), &y);
        let by_platt = log_loss(&scores(&|z| calibrated(z, t, b)), &y);
        assert!(by_platt < by_temperature, "{by_platt} vs {by_temperature}");
        assert_eq!(
            fit_platt(&[1.0, 2.0], &[1, 1]),
            (1.0, 0.0),
            "one class only"
        );
    }

    #[test]
    fn a_scaling_and_its_inverse_give_back_the_scores() {
        let maps = Scaling {
            temperatures: vec![2.5, 0.4],
            shifts: vec![-1.5, 0.75],
        };
        let scores = [0.1f32, 0.8, 0.55, 0.02, 0.97, 0.5];
        let there = maps.apply(&scores);
        assert!((there[0] - calibrated(logit(0.1), 2.5, -1.5)).abs() < 1e-7);
        assert!((there[1] - calibrated(logit(0.8), 0.4, 0.75)).abs() < 1e-7);
        for (a, b) in scores.iter().zip(maps.inverse().apply(&there)) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // No shifts: temperature scaling, label by label.
        let plain = Scaling {
            temperatures: vec![2.0, 1.0],
            shifts: Vec::new(),
        };
        let tempered = plain.apply(&scores);
        assert!((tempered[0] - scaled(logit(0.1), 2.0)).abs() < 1e-7);
        assert!((tempered[1] - 0.8).abs() < 1e-6);
    }

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
        let (z, y) = drawn(|z| z);
        let z: Vec<f64> = z.iter().map(|&z| 3.0 * z).collect();
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
        let same = Scaling {
            temperatures: vec![1.0, 1.0],
            shifts: Vec::new(),
        }
        .apply(&s);
        for (a, b) in s.iter().zip(&same) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}
