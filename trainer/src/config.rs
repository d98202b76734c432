//! The training recipe and a job's description: the defaults (named once here), `JobSpec`, and
//! the one way in for a configuration — CLI flags and gRPC `Hyperparameters` both become
//! `Overrides`, and `Overrides::apply` maps them onto a set of defaults; `validate` then checks
//! the result.
use std::path::PathBuf;

use common::data::{Fold, SplitLimits};
use common::model::{Pooling, PrecisionChoice, ProblemType};
use serde::{Deserialize, Serialize};
use tch::Device;

/// Registry name used when a job or request names none.
pub const DEFAULT_MODEL_NAME: &str = "goemotions";
/// Alias a published version moves when a job names none.
pub const DEFAULT_ALIAS: &str = "latest";
/// Alias value meaning "publish without moving an alias".
pub const NO_ALIAS: &str = "-";
/// Default maximum sequence length in tokens.
pub const DEFAULT_MAX_LENGTH: usize = common::tokenizer::DEFAULT_MAX_LENGTH;

/// Per-label positive weighting in the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PosWeight {
    /// Plain BCE.
    None,
    /// sqrt(negatives / positives) per label, capped at 30: lifts rare labels' recall.
    Sqrt,
}

impl std::str::FromStr for PosWeight {
    type Err = common::ParseEnumError;
    fn from_str(s: &str) -> Result<Self, common::ParseEnumError> {
        match s {
            "none" => Ok(Self::None),
            "sqrt" => Ok(Self::Sqrt),
            other => Err(common::ParseEnumError {
                what: "pos_weight",
                value: other.into(),
                expected: "none or sqrt",
            }),
        }
    }
}

/// The per-label loss of a multi-label model. Every kind keeps the positive weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// Binary cross-entropy with logits.
    #[default]
    Bce,
    /// Focal loss: BCE scaled by (1 - p_t)^gamma, so confident, right answers count less.
    Focal,
    /// Asymmetric loss (Ridnik et al., 2021): negatives scaled by p_m^gamma with the probability
    /// shifted down by `asl_clip` (easy negatives drop out), positives as in BCE.
    Asl,
}

impl LossKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bce => "bce",
            Self::Focal => "focal",
            Self::Asl => "asl",
        }
    }
}

impl std::str::FromStr for LossKind {
    type Err = common::ParseEnumError;
    fn from_str(s: &str) -> Result<Self, common::ParseEnumError> {
        match s {
            "bce" => Ok(Self::Bce),
            "focal" => Ok(Self::Focal),
            "asl" => Ok(Self::Asl),
            other => Err(common::ParseEnumError {
                what: "loss",
                value: other.into(),
                expected: "bce, focal or asl",
            }),
        }
    }
}

/// Per-label calibration of a multi-label model's scores, fitted on dev.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CalibrationChoice {
    /// Platt and temperature scaling both fitted; of those that lower dev log-loss (cross-fitted)
    /// without lowering dev macro-F1 and keep every threshold on the tuning grid (0.01–0.99), the
    /// one with the lower log-loss is applied.
    #[default]
    Auto,
    /// Temperature scaling (sigmoid(logit / T)), always applied.
    Temperature,
    /// Platt scaling (sigmoid(logit / T + b)), always applied.
    Platt,
    /// Never applied (still fitted and reported).
    None,
}

impl CalibrationChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Temperature => "temperature",
            Self::Platt => "platt",
            Self::None => "none",
        }
    }
}

impl std::str::FromStr for CalibrationChoice {
    type Err = common::ParseEnumError;
    fn from_str(s: &str) -> Result<Self, common::ParseEnumError> {
        match s {
            "auto" => Ok(Self::Auto),
            "temperature" => Ok(Self::Temperature),
            "platt" => Ok(Self::Platt),
            "none" => Ok(Self::None),
            other => Err(common::ParseEnumError {
                what: "calibration",
                value: other.into(),
                expected: "auto, temperature, platt or none",
            }),
        }
    }
}

/// Multi-label or single-label training: `auto` trains single-label when every example of the
/// data has exactly one label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemChoice {
    #[default]
    Auto,
    MultiLabel,
    SingleLabel,
}

impl std::str::FromStr for ProblemChoice {
    type Err = common::ParseEnumError;
    fn from_str(s: &str) -> Result<Self, common::ParseEnumError> {
        match s {
            "auto" => Ok(Self::Auto),
            "multi-label" => Ok(Self::MultiLabel),
            "single-label" => Ok(Self::SingleLabel),
            other => Err(common::ParseEnumError {
                what: "problem_type",
                value: other.into(),
                expected: "auto, multi-label or single-label",
            }),
        }
    }
}

impl ProblemChoice {
    /// The task for data whose examples all have exactly one label (`single`) or not; asking
    /// for single-label on data with other examples is an error.
    pub fn resolve(self, single: bool) -> Result<ProblemType, String> {
        match (self, single) {
            (ProblemChoice::MultiLabel, _) | (ProblemChoice::Auto, false) => {
                Ok(ProblemType::MultiLabel)
            }
            (ProblemChoice::SingleLabel, true) | (ProblemChoice::Auto, true) => {
                Ok(ProblemType::SingleLabel)
            }
            (ProblemChoice::SingleLabel, false) => Err(
                "single-label training needs exactly one label per example; some examples have none or several"
                    .into(),
            ),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    pub epochs: u32,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub max_length: usize,
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    pub seed: u64,
    pub pooling: Pooling,
    #[serde(default)]
    pub precision: PrecisionChoice,
    /// Overrides the checkpoint's dropout probabilities when set.
    pub dropout: Option<f64>,
    /// Stop after this many epochs without a better dev macro-F1.
    pub patience: u32,
    pub max_grad_norm: f64,
    pub pos_weight: PosWeight,
    /// Multi-label (sigmoids, thresholds) or single-label (softmax, argmax), or from the data.
    #[serde(default)]
    pub problem_type: ProblemChoice,
    /// Stop after this many optimizer steps in total (benchmarks, smoke tests).
    pub max_steps: Option<u64>,
    pub eval_batch_size: usize,
    /// Save a resumable state every this many steps (and at every epoch end) when a sink is given.
    pub state_every_steps: u64,
    #[serde(default)]
    pub loss: LossKind,
    /// Focusing exponent of the focal loss, or of the negatives in the asymmetric loss.
    #[serde(default = "default_loss_gamma")]
    pub loss_gamma: f64,
    /// Probability margin of the asymmetric loss's negatives.
    #[serde(default = "default_asl_clip")]
    pub asl_clip: f64,
    /// Targets become y·(1 − ε) + ε/2 (multi-label) or y·(1 − ε) + ε/labels (single-label).
    #[serde(default)]
    pub label_smoothing: f64,
    /// Checkpoints (version or alias URIs) whose mean scores on the training texts become soft
    /// targets; empty: no distillation.
    #[serde(default)]
    pub teachers: Vec<String>,
    /// Share of the loss given to the teachers' soft targets (the rest to the labels).
    #[serde(default = "default_distill_weight")]
    pub distill_weight: f64,
    /// Layer-wise learning-rate decay: encoder layer i of L trains at lr·decay^(L − i), the
    /// embeddings at lr·decay^(L + 1), the head at lr. 1 turns it off.
    #[serde(default = "default_layer_lr_decay")]
    pub layer_lr_decay: f64,
    /// Per-label temperature scaling of the published scores (multi-label models).
    #[serde(default)]
    pub calibration: CalibrationChoice,
    /// R-Drop: weight of the symmetric KL divergence between two dropout passes of each batch;
    /// 0 turns it off (one pass).
    #[serde(default)]
    pub rdrop_weight: f64,
    /// Exponential moving average of the weights (evaluated and published in their place); 0 is
    /// off.
    #[serde(default)]
    pub ema_decay: f64,
    /// Train on every fold of the training split but this one (an out-of-fold teacher).
    #[serde(default)]
    pub holdout_fold: Option<Fold>,
    /// Checkpoints (version or alias URIs) to start from instead of the base model: one is a warm
    /// start, several their weights' mean; empty: the base model with a new head.
    #[serde(default)]
    pub init_from: Vec<String>,
}

fn default_layer_lr_decay() -> f64 {
    1.0
}

fn default_loss_gamma() -> f64 {
    TrainConfig::default().loss_gamma
}

fn default_asl_clip() -> f64 {
    TrainConfig::default().asl_clip
}

fn default_distill_weight() -> f64 {
    TrainConfig::default().distill_weight
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 3,
            batch_size: 32,
            learning_rate: 1e-4,
            max_length: DEFAULT_MAX_LENGTH,
            warmup_ratio: 0.1,
            weight_decay: 0.01,
            seed: 42,
            pooling: Pooling::Mean,
            precision: PrecisionChoice::Auto,
            dropout: None,
            patience: 2,
            max_grad_norm: 1.0,
            pos_weight: PosWeight::Sqrt,
            problem_type: ProblemChoice::Auto,
            max_steps: None,
            eval_batch_size: 64,
            state_every_steps: 200,
            loss: LossKind::Bce,
            loss_gamma: 2.0,
            asl_clip: 0.05,
            label_smoothing: 0.0,
            teachers: Vec::new(),
            distill_weight: 0.5,
            layer_lr_decay: 1.0,
            calibration: CalibrationChoice::Auto,
            rdrop_weight: 0.0,
            ema_decay: 0.0,
            holdout_fold: None,
            init_from: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct JobSpec {
    pub base_model: String,
    pub data_dir: PathBuf,
    pub registry: String,
    pub model_name: String,
    /// Alias to move to the new version (None: publish without an alias).
    pub alias: Option<String>,
    pub train: TrainConfig,
    pub limits: SplitLimits,
    pub run_baseline: bool,
    pub report_dir: Option<PathBuf>,
    pub device: Device,
    /// Version id to publish as (default: a new time-based id).
    pub version: Option<String>,
}

/// The alias a request names: empty means the default, `-` means none.
pub fn alias_from_request(alias: &str) -> Option<String> {
    match alias {
        "" => Some(DEFAULT_ALIAS.to_string()),
        NO_ALIAS => None,
        a => Some(a.to_string()),
    }
}

/// Changes to a set of defaults; `None` keeps the default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub epochs: Option<u32>,
    pub batch_size: Option<usize>,
    pub learning_rate: Option<f64>,
    pub max_length: Option<usize>,
    pub warmup_ratio: Option<f64>,
    pub weight_decay: Option<f64>,
    pub seed: Option<u64>,
    pub pooling: Option<Pooling>,
    pub precision: Option<PrecisionChoice>,
    pub dropout: Option<f64>,
    pub patience: Option<u32>,
    pub max_grad_norm: Option<f64>,
    pub pos_weight: Option<PosWeight>,
    pub problem_type: Option<ProblemChoice>,
    pub max_steps: Option<u64>,
    pub eval_batch_size: Option<usize>,
    pub state_every_steps: Option<u64>,
    pub loss: Option<LossKind>,
    pub loss_gamma: Option<f64>,
    pub asl_clip: Option<f64>,
    pub label_smoothing: Option<f64>,
    pub teachers: Option<Vec<String>>,
    pub distill_weight: Option<f64>,
    pub layer_lr_decay: Option<f64>,
    pub calibration: Option<CalibrationChoice>,
    pub rdrop_weight: Option<f64>,
    pub ema_decay: Option<f64>,
    pub holdout_fold: Option<Fold>,
    pub init_from: Option<Vec<String>>,
}

impl Overrides {
    /// `defaults` with every set field replaced.
    pub fn apply(&self, defaults: &TrainConfig) -> TrainConfig {
        let d = defaults;
        TrainConfig {
            epochs: self.epochs.unwrap_or(d.epochs),
            batch_size: self.batch_size.unwrap_or(d.batch_size),
            learning_rate: self.learning_rate.unwrap_or(d.learning_rate),
            max_length: self.max_length.unwrap_or(d.max_length),
            warmup_ratio: self.warmup_ratio.unwrap_or(d.warmup_ratio),
            weight_decay: self.weight_decay.unwrap_or(d.weight_decay),
            seed: self.seed.unwrap_or(d.seed),
            pooling: self.pooling.unwrap_or(d.pooling),
            precision: self.precision.unwrap_or(d.precision),
            dropout: self.dropout.or(d.dropout),
            patience: self.patience.unwrap_or(d.patience),
            max_grad_norm: self.max_grad_norm.unwrap_or(d.max_grad_norm),
            pos_weight: self.pos_weight.unwrap_or(d.pos_weight),
            problem_type: self.problem_type.unwrap_or(d.problem_type),
            max_steps: self.max_steps.or(d.max_steps),
            eval_batch_size: self.eval_batch_size.unwrap_or(d.eval_batch_size),
            state_every_steps: self.state_every_steps.unwrap_or(d.state_every_steps),
            loss: self.loss.unwrap_or(d.loss),
            loss_gamma: self.loss_gamma.unwrap_or(d.loss_gamma),
            asl_clip: self.asl_clip.unwrap_or(d.asl_clip),
            label_smoothing: self.label_smoothing.unwrap_or(d.label_smoothing),
            teachers: self.teachers.clone().unwrap_or_else(|| d.teachers.clone()),
            distill_weight: self.distill_weight.unwrap_or(d.distill_weight),
            layer_lr_decay: self.layer_lr_decay.unwrap_or(d.layer_lr_decay),
            calibration: self.calibration.unwrap_or(d.calibration),
            rdrop_weight: self.rdrop_weight.unwrap_or(d.rdrop_weight),
            ema_decay: self.ema_decay.unwrap_or(d.ema_decay),
            holdout_fold: self.holdout_fold.or(d.holdout_fold),
            init_from: self
                .init_from
                .clone()
                .unwrap_or_else(|| d.init_from.clone()),
        }
    }
}

/// A wire value that does not parse, named by its field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("hyperparameters.{field}: {message}")]
pub struct WireError {
    pub field: &'static str,
    pub message: String,
}

impl TryFrom<&proto::v1::Hyperparameters> for Overrides {
    type Error = WireError;

    fn try_from(h: &proto::v1::Hyperparameters) -> Result<Self, WireError> {
        fn parse<T: std::str::FromStr<Err = common::ParseEnumError>>(
            field: &'static str,
            value: &Option<String>,
        ) -> Result<Option<T>, WireError> {
            value
                .as_deref()
                .map(|v| {
                    v.parse().map_err(|e: common::ParseEnumError| WireError {
                        field,
                        message: e.to_string(),
                    })
                })
                .transpose()
        }
        Ok(Self {
            epochs: h.epochs,
            batch_size: h.batch_size.map(|v| v as usize),
            learning_rate: h.learning_rate.map(f64::from),
            max_length: h.max_length.map(|v| v as usize),
            warmup_ratio: h.warmup_ratio.map(f64::from),
            weight_decay: h.weight_decay.map(f64::from),
            seed: h.seed,
            pooling: parse("pooling", &h.pooling)?,
            precision: parse("precision", &h.precision)?,
            dropout: h.dropout.map(f64::from),
            patience: h.patience,
            max_grad_norm: None,
            pos_weight: parse("pos_weight", &h.pos_weight)?,
            problem_type: parse("problem_type", &h.problem_type)?,
            max_steps: h.max_steps.map(u64::from),
            eval_batch_size: None,
            state_every_steps: None,
            loss: parse("loss", &h.loss)?,
            loss_gamma: h.loss_gamma.map(f64::from),
            asl_clip: h.asl_clip.map(f64::from),
            label_smoothing: h.label_smoothing.map(f64::from),
            teachers: (!h.teachers.is_empty()).then(|| h.teachers.clone()),
            distill_weight: h.distill_weight.map(f64::from),
            layer_lr_decay: h.layer_lr_decay.map(f64::from),
            calibration: parse("calibration", &h.calibration)?,
            rdrop_weight: h.rdrop_weight.map(f64::from),
            ema_decay: h.ema_decay.map(f64::from),
            holdout_fold: h
                .holdout_fold
                .as_deref()
                .map(|v| {
                    v.parse().map_err(|message| WireError {
                        field: "holdout_fold",
                        message,
                    })
                })
                .transpose()?,
            init_from: (!h.init_from.is_empty()).then(|| h.init_from.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_only_what_they_set() {
        let defaults = TrainConfig::default();
        assert_eq!(Overrides::default().apply(&defaults), defaults);
        let wire = proto::v1::Hyperparameters {
            epochs: Some(1),
            learning_rate: Some(2e-4),
            pooling: Some("cls".into()),
            precision: Some("bf16".into()),
            ..Default::default()
        };
        let cfg = Overrides::try_from(&wire).unwrap().apply(&defaults);
        assert_eq!(cfg.epochs, 1);
        assert!((cfg.learning_rate - 2e-4).abs() < 1e-9);
        assert_eq!(cfg.pooling, Pooling::Cls);
        assert_eq!(cfg.precision, PrecisionChoice::Bf16);
        assert_eq!(cfg.batch_size, defaults.batch_size);
        let wire = proto::v1::Hyperparameters {
            loss: Some("asl".into()),
            label_smoothing: Some(0.1),
            teachers: vec!["s3://b/r/models/t/aliases/latest".into()],
            rdrop_weight: Some(1.5),
            ema_decay: Some(0.999),
            ..Default::default()
        };
        let cfg = Overrides::try_from(&wire).unwrap().apply(&defaults);
        assert_eq!(cfg.loss, LossKind::Asl);
        assert!((cfg.rdrop_weight - 1.5).abs() < 1e-6);
        assert_eq!(defaults.rdrop_weight, 0.0);
        assert!((cfg.ema_decay - 0.999).abs() < 1e-6);
        assert_eq!(defaults.ema_decay, 0.0);
        assert!((cfg.label_smoothing - 0.1).abs() < 1e-6);
        assert_eq!(cfg.teachers, ["s3://b/r/models/t/aliases/latest"]);
        assert_eq!(cfg.distill_weight, defaults.distill_weight);
    }

    #[test]
    fn unparsable_wire_values_name_their_field() {
        let wire = proto::v1::Hyperparameters {
            pooling: Some("max".into()),
            ..Default::default()
        };
        let err = Overrides::try_from(&wire).unwrap_err();
        assert_eq!(err.field, "pooling");
        assert!(
            err.to_string().starts_with("hyperparameters.pooling:"),
            "{err}"
        );
        let wire = proto::v1::Hyperparameters {
            precision: Some("fp16".into()),
            ..Default::default()
        };
        assert_eq!(Overrides::try_from(&wire).unwrap_err().field, "precision");
        let wire = proto::v1::Hyperparameters {
            loss: Some("hinge".into()),
            ..Default::default()
        };
        assert_eq!(Overrides::try_from(&wire).unwrap_err().field, "loss");
    }
}
