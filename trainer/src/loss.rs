//! The training objective of one batch: per-label BCE, focal or asymmetric loss with the
//! positive weights (multi-label) or cross-entropy (single-label), label smoothing,
//! distillation towards a teacher's soft targets, and R-Drop's consistency between two dropout
//! passes. Everything is computed in fp32 on the logits.
use common::model::ProblemType;
use tch::{Kind, Reduction, Tensor};

use crate::config::{LossKind, TrainConfig};
use crate::validate::ValidationError;

/// Smallest value taken under a logarithm of the asymmetric loss's shifted probability.
const LOG_FLOOR: f64 = 1e-8;

/// How a batch's logits are scored against its labels (and a teacher's scores).
pub(crate) struct Objective {
    problem: ProblemType,
    kind: LossKind,
    gamma: f64,
    clip: f64,
    smoothing: f64,
    pos_weight: Option<Tensor>,
    distill_weight: f64,
    rdrop_weight: f64,
}

impl Objective {
    /// The objective `cfg` asks for; focal and asymmetric losses are per-label losses, refused
    /// for a single-label model.
    pub(crate) fn new(
        cfg: &TrainConfig,
        problem: ProblemType,
        pos_weight: Option<Tensor>,
    ) -> Result<Self, ValidationError> {
        if problem == ProblemType::SingleLabel && cfg.loss != LossKind::Bce {
            return Err(ValidationError::Invalid {
                field: "hyperparameters.loss".into(),
                message: format!(
                    "{} is a per-label loss for multi-label models; a single-label model trains with cross-entropy (loss bce)",
                    cfg.loss.as_str()
                ),
            });
        }
        Ok(Self {
            problem,
            kind: cfg.loss,
            gamma: cfg.loss_gamma,
            clip: cfg.asl_clip,
            smoothing: cfg.label_smoothing,
            pos_weight: if problem == ProblemType::MultiLabel {
                pos_weight
            } else {
                None
            },
            distill_weight: cfg.distill_weight,
            rdrop_weight: cfg.rdrop_weight,
        })
    }

    /// Plain BCE (or cross-entropy), no weights: what the throughput benchmark computes.
    pub(crate) fn plain(problem: ProblemType) -> Self {
        Self {
            problem,
            kind: LossKind::Bce,
            gamma: 0.0,
            clip: 0.0,
            smoothing: 0.0,
            pos_weight: None,
            distill_weight: 0.0,
            rdrop_weight: 0.0,
        }
    }

    /// R-Drop's weight: above 0, a batch runs forward twice (`paired_loss`).
    pub(crate) fn rdrop_weight(&self) -> f64 {
        self.rdrop_weight
    }

    /// R-Drop's loss for two dropout passes `a` and `b` over the same batch: the mean of their
    /// losses plus the weight times the symmetric KL divergence between their predictions.
    pub(crate) fn paired_loss(
        &self,
        a: &Tensor,
        b: &Tensor,
        targets: &Tensor,
        soft: Option<&Tensor>,
    ) -> Tensor {
        (self.loss(a, targets, soft) + self.loss(b, targets, soft)) * 0.5
            + self.symmetric_kl(a, b) * self.rdrop_weight
    }

    /// Half the symmetric KL divergence between the predictions of logits `a` and `b`, averaged
    /// over texts (and labels, per-label Bernoulli for a multi-label model, where
    /// KL(p‖q) + KL(q‖p) = (p − q)·(logit p − logit q)).
    fn symmetric_kl(&self, a: &Tensor, b: &Tensor) -> Tensor {
        match self.problem {
            ProblemType::MultiLabel => {
                ((a.sigmoid() - b.sigmoid()) * (a - b)).mean(Kind::Float) * 0.5
            }
            ProblemType::SingleLabel => {
                let (la, lb) = (
                    a.log_softmax(-1, Kind::Float),
                    b.log_softmax(-1, Kind::Float),
                );
                ((la.exp() - lb.exp()) * (&la - &lb))
                    .sum_dim_intlist(-1, false, Kind::Float)
                    .mean(Kind::Float)
                    * 0.5
            }
        }
    }

    /// Mean loss of fp32 `logits` `[batch × labels]` against multi-hot (or one-hot) `targets`
    /// and, when given, the teacher's `soft` scores (sigmoids, or a softmax for single-label).
    pub(crate) fn loss(&self, logits: &Tensor, targets: &Tensor, soft: Option<&Tensor>) -> Tensor {
        let hard = self.hard(logits, targets);
        match soft {
            Some(p) if self.distill_weight > 0.0 => {
                let w = self.distill_weight;
                hard * (1.0 - w) + self.soft(logits, p) * w
            }
            _ => hard,
        }
    }

    fn smoothed(&self, targets: &Tensor) -> Tensor {
        if self.smoothing == 0.0 {
            return targets.shallow_clone();
        }
        let classes = match self.problem {
            ProblemType::MultiLabel => 2.0,
            ProblemType::SingleLabel => targets.size().last().copied().unwrap_or(1) as f64,
        };
        targets * (1.0 - self.smoothing) + self.smoothing / classes
    }

    fn hard(&self, z: &Tensor, targets: &Tensor) -> Tensor {
        let y = self.smoothed(targets);
        if self.problem == ProblemType::SingleLabel {
            return cross_entropy(z, &y);
        }
        let w = self.pos_weight.as_ref();
        match self.kind {
            LossKind::Bce => z.binary_cross_entropy_with_logits(&y, None, w, Reduction::Mean),
            LossKind::Focal => {
                let p = z.sigmoid();
                let p_right: Tensor = &y * &p + (1.0 - &y) * (1.0 - &p);
                let bce = z.binary_cross_entropy_with_logits(&y, None, w, Reduction::None);
                let focus = (-p_right + 1.0).pow_tensor_scalar(self.gamma);
                (focus * bce).mean(Kind::Float)
            }
            LossKind::Asl => {
                let positives: Tensor = match w {
                    Some(w) => &y * z.log_sigmoid() * w,
                    None => &y * z.log_sigmoid(),
                };
                let negatives: Tensor = if self.clip == 0.0 {
                    (1.0 - &y) * z.sigmoid().pow_tensor_scalar(self.gamma) * (-z).log_sigmoid()
                } else {
                    let shifted = (z.sigmoid() - self.clip).clamp_min(0.0);
                    (1.0 - &y)
                        * shifted.pow_tensor_scalar(self.gamma)
                        * (-&shifted + 1.0).clamp_min(LOG_FLOOR).log()
                };
                -(positives + negatives).mean(Kind::Float)
            }
        }
    }

    fn soft(&self, z: &Tensor, p: &Tensor) -> Tensor {
        match self.problem {
            ProblemType::MultiLabel => {
                z.binary_cross_entropy_with_logits::<Tensor>(p, None, None, Reduction::Mean)
            }
            ProblemType::SingleLabel => cross_entropy(z, p),
        }
    }
}

fn cross_entropy(z: &Tensor, p: &Tensor) -> Tensor {
    -(z.log_softmax(-1, Kind::Float) * p)
        .sum_dim_intlist(-1, false, Kind::Float)
        .mean(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(kind: LossKind, gamma: f64, clip: f64) -> TrainConfig {
        TrainConfig {
            loss: kind,
            loss_gamma: gamma,
            asl_clip: clip,
            ..TrainConfig::default()
        }
    }

    fn batch() -> (Tensor, Tensor, Tensor) {
        let z = Tensor::from_slice(&[2.5f32, -1.0, 0.3, -3.0, 0.0, 1.2]).view([2, 3]);
        let y = Tensor::from_slice(&[1f32, 0., 1., 0., 0., 1.]).view([2, 3]);
        let w = Tensor::from_slice(&[1f32, 3.0, 2.0]);
        (z, y, w)
    }

    fn value(t: &Tensor) -> f64 {
        t.double_value(&[])
    }

    fn objective(c: &TrainConfig, w: &Tensor) -> Objective {
        Objective::new(c, ProblemType::MultiLabel, Some(w.shallow_clone())).unwrap()
    }

    #[test]
    fn focal_and_asl_at_gamma_zero_are_weighted_bce() {
        let (z, y, w) = batch();
        let bce = value(&objective(&cfg(LossKind::Bce, 2.0, 0.05), &w).loss(&z, &y, None));
        for o in [
            objective(&cfg(LossKind::Focal, 0.0, 0.05), &w),
            objective(&cfg(LossKind::Asl, 0.0, 0.0), &w),
        ] {
            let l = value(&o.loss(&z, &y, None));
            assert!((l - bce).abs() < 1e-6, "{l} vs {bce}");
        }
    }

    #[test]
    fn focusing_lowers_the_weight_of_easy_terms() {
        let (z, y, w) = batch();
        let bce = value(&objective(&cfg(LossKind::Bce, 2.0, 0.05), &w).loss(&z, &y, None));
        let focal = value(&objective(&cfg(LossKind::Focal, 2.0, 0.05), &w).loss(&z, &y, None));
        let asl = value(&objective(&cfg(LossKind::Asl, 4.0, 0.05), &w).loss(&z, &y, None));
        assert!(focal > 0.0 && focal < bce, "focal {focal}, bce {bce}");
        // asl keeps the positives' terms whole and shrinks only the negatives'.
        assert!(asl > 0.0 && asl < bce, "asl {asl}, bce {bce}");
        // A negative far below the margin costs nothing.
        let z = Tensor::from_slice(&[-6f32]).view([1, 1]);
        let y = Tensor::from_slice(&[0f32]).view([1, 1]);
        let o = objective(&cfg(LossKind::Asl, 4.0, 0.05), &Tensor::from_slice(&[1f32]));
        assert_eq!(value(&o.loss(&z, &y, None)), 0.0);
    }

    #[test]
    fn smoothed_targets_are_best_met_short_of_certainty() {
        let c = TrainConfig {
            label_smoothing: 0.2,
            ..TrainConfig::default()
        };
        let o = Objective::new(&c, ProblemType::MultiLabel, None).unwrap();
        let y = Tensor::from_slice(&[1f32]).view([1, 1]);
        // The minimum is at sigmoid(z) = 0.9, i.e. z = ln 9.
        let at = |z: f64| value(&o.loss(&Tensor::from_slice(&[z as f32]).view([1, 1]), &y, None));
        let best = 9f64.ln();
        assert!(at(best) < at(best + 0.5) && at(best) < at(best - 0.5));
    }

    #[test]
    fn distillation_mixes_label_and_teacher_terms() {
        let (z, y, _) = batch();
        let soft = Tensor::from_slice(&[0.9f32, 0.2, 0.6, 0.05, 0.4, 0.7]).view([2, 3]);
        let c = |w: f64| TrainConfig {
            distill_weight: w,
            ..TrainConfig::default()
        };
        let loss = |w: f64| {
            let o = Objective::new(&c(w), ProblemType::MultiLabel, None).unwrap();
            value(&o.loss(&z, &y, Some(&soft)))
        };
        let hard = loss(0.0);
        let teacher = value(&z.binary_cross_entropy_with_logits::<Tensor>(
            &soft,
            None,
            None,
            Reduction::Mean,
        ));
        assert!((loss(1.0) - teacher).abs() < 1e-6);
        assert!((loss(0.25) - (0.75 * hard + 0.25 * teacher)).abs() < 1e-6);
    }

    #[test]
    fn r_drop_adds_the_divergence_of_the_two_passes() {
        let (z, y, w) = batch();
        let c = TrainConfig {
            rdrop_weight: 2.0,
            ..TrainConfig::default()
        };
        let o = objective(&c, &w);
        let plain = value(&o.loss(&z, &y, None));
        // Two identical passes: nothing to add.
        assert!((value(&o.paired_loss(&z, &z, &y, None)) - plain).abs() < 1e-6);
        // Otherwise the mean of both losses plus 2 × half the symmetric Bernoulli KL, summed
        // here term by term from its definition.
        let other = &z + Tensor::from_slice(&[0.5f32, -0.3, 1.0, 0.2, -2.0, 0.0]).view([2, 3]);
        let (p, q) = (
            Vec::<f32>::try_from(z.sigmoid().flatten(0, -1)).unwrap(),
            Vec::<f32>::try_from(other.sigmoid().flatten(0, -1)).unwrap(),
        );
        let kl = |p: f32, q: f32| {
            let (p, q) = (p as f64, q as f64);
            p * (p / q).ln() + (1.0 - p) * ((1.0 - p) / (1.0 - q)).ln()
        };
        let symmetric: f64 = p
            .iter()
            .zip(&q)
            .map(|(&p, &q)| kl(p, q) + kl(q, p))
            .sum::<f64>()
            / p.len() as f64;
        let expected = (plain + value(&o.loss(&other, &y, None))) / 2.0 + 2.0 * symmetric / 2.0;
        let got = value(&o.paired_loss(&z, &other, &y, None));
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
        // Single-label: the same with softmax distributions.
        let s = Objective::new(&c, ProblemType::SingleLabel, None).unwrap();
        let one_hot = Tensor::from_slice(&[1f32, 0., 0., 0., 0., 1.]).view([2, 3]);
        assert!(
            (value(&s.paired_loss(&z, &z, &one_hot, None)) - value(&s.loss(&z, &one_hot, None)))
                .abs()
                < 1e-6
        );
        assert!(value(&s.paired_loss(&z, &other, &one_hot, None)) > 0.0);
    }

    #[test]
    fn per_label_losses_are_refused_for_single_label_models() {
        let err = Objective::new(
            &cfg(LossKind::Focal, 2.0, 0.05),
            ProblemType::SingleLabel,
            None,
        )
        .err()
        .expect("refused");
        assert!(err.to_string().contains("hyperparameters.loss"), "{err}");
    }
}
