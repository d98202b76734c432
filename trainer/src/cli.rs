//! The `trainer` command line: every flag (with its environment variable) and how flags become a
//! `JobSpec` or `ServiceConfig`. `main.rs` only parses and dispatches.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use common::data::{Fold, SplitLimits};

pub use crate::optim::Layout as OptimizerLayout;
use common::grpc::AccessArgs;
use common::model::{Attention, Pooling, PrecisionChoice};

use crate::config::{
    CalibrationChoice, LossKind, Overrides, PosWeight, ProblemChoice, TrainConfig, DEFAULT_ALIAS,
    DEFAULT_MODEL_NAME,
};
use crate::evaluate::Split;
use crate::job::{self, JobSpec};
use crate::service::ServiceConfig;

/// Where `scripts/setup.sh` puts the packaged encoder and the data.
pub const DEFAULT_BASE_MODEL: &str = ".cache/models/all-MiniLM-L6-v2";
pub const DEFAULT_DATA_DIR: &str = ".cache/data/goemotions";
pub const DEFAULT_REGISTRY: &str = "output/registry";

#[derive(Parser)]
#[command(
    name = "trainer",
    version,
    about = "Fine-tunes BERT encoders on GoEmotions and publishes checkpoints"
)]
pub struct Cli {
    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Fine-tune, tune thresholds, evaluate on test (+ baseline), write the report and publish.
    Train(Box<TrainCmd>),
    /// Evaluate a published checkpoint on a split.
    Eval(EvalCmd),
    /// Train and evaluate only the TF-IDF + logistic regression baseline.
    Baseline(BaselineCmd),
    /// Measure training throughput for a fixed number of steps (no evaluation, nothing published).
    Bench(Box<BenchCmd>),
    /// Run the gRPC Trainer service (jobs, registry versions and aliases).
    Serve(Box<ServeCmd>),
    /// Evaluate an ensemble: the mean scores of several checkpoints, thresholds tuned on dev,
    /// dev F1 (and test F1 with --test). What a distilled model is measured against.
    Ensemble(EnsembleCmd),
    /// Print a checkpoint's sigmoid scores for the given texts as JSON (for cross-checks).
    Score(ScoreCmd),
    /// Check a running trainer's gRPC health: exit 0 when SERVING, 1 otherwise (for container
    /// health checks; --addr defaults to 127.0.0.1:50052).
    Health(common::grpc::HealthArgs),
}

#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Data folder: train.{tsv,csv,jsonl} (dev and test optional: made from train when absent),
    /// label names in labels.txt (or emotions.txt), groupings in groupings/NAME.json; see the
    /// README's "Your own data". GoEmotions' folder works as it is.
    #[arg(long, env = "GOEMOTIONS_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Use a stratified subsample (by labels per example) of this many training examples.
    #[arg(long, env = "GOEMOTIONS_TRAIN_LIMIT")]
    pub train_limit: Option<usize>,
    /// Use a stratified subsample of this many dev examples.
    #[arg(long, env = "GOEMOTIONS_DEV_LIMIT")]
    pub dev_limit: Option<usize>,
    /// Use a stratified subsample of this many test examples.
    #[arg(long, env = "GOEMOTIONS_TEST_LIMIT")]
    pub test_limit: Option<usize>,
}

impl DataArgs {
    pub fn limits(&self) -> SplitLimits {
        SplitLimits {
            train: self.train_limit,
            dev: self.dev_limit,
            test: self.test_limit,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, env = "GOEMOTIONS_DEVICE", default_value = "auto")]
    pub device: String,
    /// CPU threads for libtorch (default: the CPUs the process may use, from its cgroup
    /// quota and affinity).
    #[arg(long, env = "GOEMOTIONS_THREADS")]
    pub threads: Option<i32>,
}

impl DeviceArgs {
    /// Sets the thread count and selects the device; fp32 work on CUDA may use TF32.
    pub fn init(&self) -> Result<tch::Device, common::device::DeviceError> {
        common::device::init_threads(self.threads);
        if self.device != "cpu" {
            common::device::allow_tf32();
        }
        let device = common::device::select(&self.device)?;
        tracing::info!(device = common::device::describe(device), "device selected");
        Ok(device)
    }
}

#[derive(Args, Debug, Clone)]
pub struct HyperArgs {
    /// Maximum number of epochs.
    #[arg(long, env = "GOEMOTIONS_EPOCHS", default_value_t = TrainConfig::default().epochs)]
    pub epochs: u32,
    /// Training batch size.
    #[arg(long, env = "GOEMOTIONS_BATCH_SIZE", default_value_t = TrainConfig::default().batch_size)]
    pub batch_size: usize,
    /// Peak learning rate (AdamW), in (0, 1].
    #[arg(long, env = "GOEMOTIONS_LR", default_value_t = TrainConfig::default().learning_rate)]
    pub lr: f64,
    /// Maximum sequence length in tokens (at most the model's max_position_embeddings); longer texts are truncated.
    #[arg(long, env = "GOEMOTIONS_MAX_LENGTH", default_value_t = TrainConfig::default().max_length)]
    pub max_length: usize,
    /// Fraction of steps with linear learning-rate warmup (then linear decay to 0).
    #[arg(long, env = "GOEMOTIONS_WARMUP_RATIO", default_value_t = TrainConfig::default().warmup_ratio)]
    pub warmup_ratio: f64,
    /// AdamW decoupled weight decay (not applied to biases and LayerNorm).
    #[arg(long, env = "GOEMOTIONS_WEIGHT_DECAY", default_value_t = TrainConfig::default().weight_decay)]
    pub weight_decay: f64,
    /// Random seed (batch order, dropout, head initialisation, subsampling).
    #[arg(long, env = "GOEMOTIONS_SEED", default_value_t = TrainConfig::default().seed)]
    pub seed: u64,
    /// Sequence pooling for the head: mean (masked mean of token states) or cls (BERT pooler).
    #[arg(long, env = "GOEMOTIONS_POOLING", value_enum, default_value_t = Pooling::Mean)]
    pub pooling: Pooling,
    /// Numeric precision: auto (bf16 on Intel CPUs with AMX and AMD CPUs with AVX512-BF16, where
    /// it trains faster at the same F1; fp32 elsewhere: on CUDA and on other CPUs fp32 is the
    /// faster — README "Precision"), fp32, or bf16 (bf16 matmuls with fp32 master weights,
    /// LayerNorm and loss). Dev and test are scored in fp32.
    #[arg(long, env = "GOEMOTIONS_PRECISION", value_enum, default_value_t = PrecisionChoice::Auto)]
    pub precision: PrecisionChoice,
    /// Override the checkpoint's dropout probability, in [0, 1).
    #[arg(long, env = "GOEMOTIONS_DROPOUT")]
    pub dropout: Option<f64>,
    /// Early stopping: epochs without a better dev macro-F1 before stopping (at least 1).
    #[arg(long, env = "GOEMOTIONS_PATIENCE", default_value_t = TrainConfig::default().patience)]
    pub patience: u32,
    /// Clip gradients to this global L2 norm.
    #[arg(long, env = "GOEMOTIONS_MAX_GRAD_NORM", default_value_t = TrainConfig::default().max_grad_norm)]
    pub max_grad_norm: f64,
    /// Per-label positive weight in the BCE loss: sqrt (default) weighs each label's positives by
    /// sqrt(negatives / positives), capped at 30, which lifts rare labels (won the recipe sweep on
    /// dev); none is plain BCE.
    #[arg(long, env = "GOEMOTIONS_POS_WEIGHT", value_enum, default_value_t = TrainConfig::default().pos_weight)]
    pub pos_weight: PosWeight,
    /// auto: single-label (softmax, cross-entropy, the best label wins) when every example has
    /// exactly one label, else multi-label (sigmoids, tuned thresholds); or force one.
    #[arg(long, env = "GOEMOTIONS_PROBLEM_TYPE", value_enum, default_value_t = ProblemChoice::Auto)]
    pub problem_type: ProblemChoice,
    /// Stop after this many optimizer steps (smoke tests, benchmarks).
    #[arg(long, env = "GOEMOTIONS_MAX_STEPS")]
    pub max_steps: Option<u64>,
    /// Batch size for dev/test inference.
    #[arg(long, env = "GOEMOTIONS_EVAL_BATCH_SIZE", default_value_t = TrainConfig::default().eval_batch_size)]
    pub eval_batch_size: usize,
    /// Per-label loss of a multi-label model (all keep --pos-weight): bce, focal ((1 − p_t)^gamma
    /// scales each term) or asl (asymmetric: negatives scaled by p_m^gamma, p_m = max(p − clip, 0)).
    #[arg(long, env = "GOEMOTIONS_LOSS", value_enum, default_value_t = TrainConfig::default().loss)]
    pub loss: LossKind,
    /// Focusing exponent gamma of the focal loss (of the negatives for asl), in [0, 10].
    #[arg(long, env = "GOEMOTIONS_LOSS_GAMMA", default_value_t = TrainConfig::default().loss_gamma)]
    pub loss_gamma: f64,
    /// Probability margin of the asl loss's negatives, in [0, 0.5).
    #[arg(long, env = "GOEMOTIONS_ASL_CLIP", default_value_t = TrainConfig::default().asl_clip)]
    pub asl_clip: f64,
    /// Label smoothing ε in [0, 0.5): targets become y·(1 − ε) + ε/2 (multi-label) or
    /// y·(1 − ε) + ε/labels (single-label).
    #[arg(long, env = "GOEMOTIONS_LABEL_SMOOTHING", default_value_t = TrainConfig::default().label_smoothing)]
    pub label_smoothing: f64,
    /// Distil from this checkpoint (a version folder or an alias URI; repeat the flag, or
    /// comma-separate in the variable, for an ensemble): the mean of the teachers' scores on
    /// each training text becomes a soft target beside its labels. Teachers must have the data's
    /// labels. Teachers trained with --holdout-fold, as many per fold of the same training file
    /// (one per fold and seed), score out of fold instead: each text by the mean of the teachers
    /// that held its fold out.
    #[arg(long = "teacher", env = "GOEMOTIONS_TEACHERS", value_delimiter = ',')]
    pub teachers: Vec<String>,
    /// Share of the loss given to the teachers' soft targets, in [0, 1] (the rest to the labels).
    #[arg(long, env = "GOEMOTIONS_DISTILL_WEIGHT", default_value_t = TrainConfig::default().distill_weight)]
    pub distill_weight: f64,
    /// Layer-wise learning-rate decay in (0, 1]: encoder layer i of L trains at lr·decay^(L − i),
    /// the embeddings at lr·decay^(L + 1), the head at lr; 1 (default) is off.
    #[arg(long, env = "GOEMOTIONS_LAYER_LR_DECAY", default_value_t = TrainConfig::default().layer_lr_decay)]
    pub layer_lr_decay: f64,
    /// Per-label calibration of a multi-label model's scores, fitted on dev and folded into the
    /// published head: temperature scaling (sigmoid(logit / T)) or Platt scaling (sigmoid(logit /
    /// T + b)). auto fits both and applies, of those that lower dev log-loss (cross-fitted halves)
    /// without lowering dev macro-F1 and keep every threshold on the tuning grid (0.01–0.99), the
    /// one with the lower log-loss; temperature or platt always; none never (still fitted and
    /// reported). Thresholds are tuned on the unscaled scores and mapped through each label's
    /// map, so calibration changes no dev decision.
    #[arg(long, env = "GOEMOTIONS_CALIBRATION", value_enum, default_value_t = TrainConfig::default().calibration)]
    pub calibration: CalibrationChoice,
    /// R-Drop consistency weight in [0, 10]: each batch runs forward twice with independent
    /// dropout; the loss is the mean of both passes' losses plus this weight times the symmetric
    /// KL divergence between their predictions. 0 (default) is off; costs a second pass.
    #[arg(long, env = "GOEMOTIONS_RDROP_WEIGHT", default_value_t = TrainConfig::default().rdrop_weight)]
    pub rdrop_weight: f64,
    /// Exponential moving average of the weights, decay in [0, 1): after every step the average
    /// moves towards the weights (decay (1 + t) / (10 + t) for the first updates t); the average
    /// is what is evaluated on dev and published. 0 (default) is off.
    #[arg(long, env = "GOEMOTIONS_EMA_DECAY", default_value_t = TrainConfig::default().ema_decay)]
    pub ema_decay: f64,
    /// Train on every fold of the training split but fold K of N, written K/N (folds are fixed by
    /// a hash of each example's id), to make an out-of-fold teacher: a student given N such
    /// teachers, one holding out each fold (or several per fold, one per seed), learns each text
    /// from the teachers that did not train on it (see --teacher).
    #[arg(long, env = "GOEMOTIONS_HOLDOUT_FOLD", value_name = "K/N")]
    pub holdout_fold: Option<Fold>,
    /// Start from this published checkpoint (a version folder or an alias URI) instead of the
    /// base model; repeat the flag (or comma-separate in the variable) to start from the mean of
    /// several checkpoints' weights, each head taken back through its calibration first (a
    /// "model soup"). They must have the data's labels, --pooling and the base model's
    /// architecture and tokenizer. With --epochs 0 nothing is trained: the start is tuned on dev
    /// (thresholds, calibration), evaluated and published.
    #[arg(
        long = "init-from",
        env = "GOEMOTIONS_INIT_FROM",
        value_delimiter = ','
    )]
    pub init_from: Vec<String>,
}

impl HyperArgs {
    /// The flags as overrides of the recipe's defaults (every flag has a value).
    pub fn overrides(&self) -> Overrides {
        Overrides {
            epochs: Some(self.epochs),
            batch_size: Some(self.batch_size),
            learning_rate: Some(self.lr),
            max_length: Some(self.max_length),
            warmup_ratio: Some(self.warmup_ratio),
            weight_decay: Some(self.weight_decay),
            seed: Some(self.seed),
            pooling: Some(self.pooling),
            precision: Some(self.precision),
            dropout: self.dropout,
            patience: Some(self.patience),
            max_grad_norm: Some(self.max_grad_norm),
            pos_weight: Some(self.pos_weight),
            problem_type: Some(self.problem_type),
            max_steps: self.max_steps,
            eval_batch_size: Some(self.eval_batch_size),
            state_every_steps: None,
            loss: Some(self.loss),
            loss_gamma: Some(self.loss_gamma),
            asl_clip: Some(self.asl_clip),
            label_smoothing: Some(self.label_smoothing),
            teachers: Some(self.teachers.clone()),
            distill_weight: Some(self.distill_weight),
            layer_lr_decay: Some(self.layer_lr_decay),
            calibration: Some(self.calibration),
            rdrop_weight: Some(self.rdrop_weight),
            ema_decay: Some(self.ema_decay),
            holdout_fold: self.holdout_fold,
            init_from: Some(self.init_from.clone()),
        }
    }

    pub fn config(&self) -> TrainConfig {
        self.overrides().apply(&TrainConfig::default())
    }
}

#[derive(Args, Debug, Clone)]
pub struct BaseModelArgs {
    /// Base encoder: a Hugging Face BERT folder or object-store URI with config.json,
    /// model.safetensors and tokenizer.json.
    #[arg(long, env = "GOEMOTIONS_BASE_MODEL", default_value = DEFAULT_BASE_MODEL)]
    pub base_model: String,
}

#[derive(Args, Debug, Clone)]
pub struct ProgressArgs {
    /// Seconds between progress log lines when stderr is not a terminal (a bar is drawn on terminals).
    #[arg(
        long,
        env = "GOEMOTIONS_PROGRESS_INTERVAL_SECS",
        default_value_t = 30.0
    )]
    pub progress_interval_secs: f64,
}

impl ProgressArgs {
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.progress_interval_secs.clamp(0.1, 86_400.0))
    }
}

#[derive(Args)]
pub struct TrainCmd {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub hyper: HyperArgs,
    #[command(flatten)]
    pub base: BaseModelArgs,
    #[command(flatten)]
    pub progress: ProgressArgs,
    /// Registry root (file:///path, a path, or s3://bucket/prefix).
    #[arg(long, env = "GOEMOTIONS_REGISTRY", default_value = DEFAULT_REGISTRY)]
    pub registry: String,
    /// Model name in the registry (letters, digits, '-', '_', '.').
    #[arg(long, env = "GOEMOTIONS_MODEL_NAME", default_value = DEFAULT_MODEL_NAME)]
    pub model_name: String,
    /// Alias to point at the new version; "-" for none.
    #[arg(long, env = "GOEMOTIONS_ALIAS", default_value = DEFAULT_ALIAS)]
    pub alias: String,
    /// Also train and report the TF-IDF + logistic regression baseline.
    #[arg(long, env = "GOEMOTIONS_BASELINE", default_value_t = true, action = clap::ArgAction::Set)]
    pub baseline: bool,
    /// Folder for report.md, report.json and per_label_f1.svg.
    #[arg(long, env = "GOEMOTIONS_REPORT_DIR", default_value = "output/report")]
    pub report_dir: PathBuf,
}

impl TrainCmd {
    pub fn job_spec(&self, device: tch::Device) -> JobSpec {
        JobSpec {
            base_model: self.base.base_model.clone(),
            data_dir: self.data.data_dir.clone(),
            registry: self.registry.clone(),
            model_name: self.model_name.clone(),
            alias: job::alias_from_request(&self.alias),
            train: self.hyper.config(),
            limits: self.data.limits(),
            run_baseline: self.baseline,
            report_dir: Some(self.report_dir.clone()),
            device,
            version: None,
        }
    }
}

/// How a checkpoint scores a split.
#[derive(Args, Debug, Clone)]
pub struct ScoringArgs {
    /// Inference precision: auto (fp32), fp32 or bf16.
    #[arg(long, env = "GOEMOTIONS_PRECISION", value_enum, default_value_t = PrecisionChoice::Auto)]
    pub precision: PrecisionChoice,
    /// Inference batch size.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
}

#[derive(Args)]
pub struct EvalCmd {
    /// Checkpoint URI: a version folder (…/models/NAME/versions/V) or an alias (…/models/NAME/aliases/A).
    #[arg(long, env = "GOEMOTIONS_CHECKPOINT")]
    pub checkpoint: String,
    /// Split to evaluate.
    #[arg(long, value_enum, default_value_t = Split::Test)]
    pub split: Split,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub scoring: ScoringArgs,
    /// Write report.md / report.json / per_label_f1.svg here.
    #[arg(long)]
    pub report_dir: Option<PathBuf>,
}

impl EvalCmd {
    /// The limit of the split being evaluated.
    pub fn limit(&self) -> Option<usize> {
        match self.split {
            Split::Train => self.data.train_limit,
            Split::Dev => self.data.dev_limit,
            Split::Test => self.data.test_limit,
        }
    }
}

#[derive(Args)]
pub struct EnsembleCmd {
    /// A member checkpoint (version folder or alias URI); repeat the flag for each member.
    #[arg(long = "checkpoint", required = true)]
    pub checkpoints: Vec<String>,
    /// Also score the test split at the dev-tuned thresholds (leave it off while selecting).
    #[arg(long)]
    pub test: bool,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub scoring: ScoringArgs,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args)]
pub struct BaselineCmd {
    #[command(flatten)]
    pub data: DataArgs,
    /// Folder for the baseline's report.
    #[arg(long, default_value = "output/baseline")]
    pub report_dir: PathBuf,
}

#[derive(Args)]
pub struct BenchCmd {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub hyper: HyperArgs,
    #[command(flatten)]
    pub base: BaseModelArgs,
    /// Optimizer steps to time (after 3 warm-up steps).
    #[arg(long, default_value_t = 30)]
    pub steps: u64,
    /// Disable length bucketing (plain shuffled batches, dynamic padding) for comparison.
    #[arg(long)]
    pub no_bucketing: bool,
    /// Write the batches taken (JSON lists of train.tsv line indices, warm-up first) here, so a
    /// reference implementation can run exactly the same batches.
    #[arg(long)]
    pub write_batches: Option<PathBuf>,
    /// AdamW memory layout: auto (flat buffers off the CPU, fused per-tensor pass on it),
    /// per-tensor, or flat; for measuring what the flat layout buys on a GPU.
    #[arg(long, value_enum, default_value_t = OptimizerLayout::Auto)]
    pub optimizer_layout: OptimizerLayout,
    /// Timed windows in this process, each replaying the same batches; one line each. The first
    /// pays for shapes seen for the first time (cuDNN attention plans per shape on GPUs).
    #[arg(long, default_value_t = 1)]
    pub repeats: u32,
    /// Attention kernel: auto (the memory-efficient kernel on CUDA in bf16, which plans nothing
    /// per shape; the dispatcher elsewhere), sdpa (dispatcher, boolean mask), sdpa-additive
    /// (dispatcher, additive mask) or efficient (CUDA only).
    #[arg(long, value_enum, default_value_t = Attention::Auto)]
    pub attention: Attention,
    /// Round each batch's length up to a multiple of this (fewer distinct shapes, more padding).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=128))]
    pub pad_to_multiple_of: u64,
}

#[derive(Args)]
pub struct ServeCmd {
    /// gRPC listen address. Beyond loopback a token is required (see --auth-token-file).
    #[arg(long, env = "TRAINER_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,
    /// Registry root (file:///path, a path, or s3://bucket/prefix); job records and resume state live under jobs/.
    #[arg(long, env = "GOEMOTIONS_REGISTRY", default_value = DEFAULT_REGISTRY)]
    pub registry: String,
    /// Default base encoder for jobs that name none.
    #[arg(long, env = "GOEMOTIONS_BASE_MODEL", default_value = DEFAULT_BASE_MODEL)]
    pub base_model: String,
    /// Default data folder for jobs that name none.
    #[arg(long, env = "GOEMOTIONS_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub hyper: HyperArgs,
    #[command(flatten)]
    pub access: AccessArgs,
    #[command(flatten)]
    pub progress: ProgressArgs,
    /// Save resumable training state every this many steps (and at every epoch end).
    #[arg(long, env = "TRAINER_STATE_EVERY_STEPS", default_value_t = 200)]
    pub state_every_steps: u64,
    /// Folder for each job's report (a sub-folder per job id).
    #[arg(long, env = "TRAINER_REPORT_ROOT")]
    pub report_root: Option<PathBuf>,
    /// On SIGTERM, seconds the running job gets to save its state and stop before the process
    /// exits (keep below the pod's terminationGracePeriodSeconds).
    #[arg(long, env = "TRAINER_SHUTDOWN_GRACE_SECS", default_value_t = 50.0)]
    pub shutdown_grace_secs: f64,
    /// Resume states kept for FAILED jobs (the newest ones; older ones are removed). A job that
    /// SUCCEEDED or was CANCELLED has its resume state removed when it ends.
    #[arg(long, env = "TRAINER_KEEP_FAILED_STATES", default_value_t = 2)]
    pub keep_failed_states: usize,
}

impl ServeCmd {
    pub fn service_config(&self, device: tch::Device) -> ServiceConfig {
        let mut defaults = self.hyper.config();
        defaults.state_every_steps = self.state_every_steps;
        ServiceConfig {
            registry: self.registry.clone(),
            base_model: self.base_model.clone(),
            data_dir: self.data_dir.clone(),
            device,
            defaults,
            report_root: self.report_root.clone(),
            progress_interval: self.progress.interval(),
            keep_failed_states: self.keep_failed_states,
        }
    }
}

#[derive(Args)]
pub struct ScoreCmd {
    /// Checkpoint URI: a version folder or an alias (…/models/NAME/aliases/A).
    #[arg(long, env = "GOEMOTIONS_CHECKPOINT")]
    pub checkpoint: String,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Inference precision: auto (fp32), fp32 or bf16.
    #[arg(long, env = "GOEMOTIONS_PRECISION", value_enum, default_value_t = PrecisionChoice::Auto)]
    pub precision: PrecisionChoice,
    /// Texts to score.
    #[arg(required = true)]
    pub texts: Vec<String>,
}
