//! Command-line arguments shared by the trainer's subcommands.
use std::path::PathBuf;

use clap::Args;

use crate::train::{PosWeight, TrainConfig};

#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Folder with train.tsv, dev.tsv, test.tsv, emotions.txt, ekman_mapping.json, sentiment_dict.json.
    #[arg(
        long,
        env = "GOEMOTIONS_DATA_DIR",
        default_value = ".cache/data/goemotions"
    )]
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

#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, env = "GOEMOTIONS_DEVICE", default_value = "auto")]
    pub device: String,
    /// CPU threads for libtorch (default: all cores).
    #[arg(long, env = "GOEMOTIONS_THREADS")]
    pub threads: Option<i32>,
}

impl DeviceArgs {
    pub fn init(&self) -> anyhow::Result<tch::Device> {
        if let Some(n) = self.threads {
            tch::set_num_threads(n);
        }
        let device = common::device::select(&self.device).map_err(anyhow::Error::msg)?;
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
    /// Peak learning rate (AdamW).
    #[arg(long, env = "GOEMOTIONS_LR", default_value_t = TrainConfig::default().learning_rate)]
    pub lr: f64,
    /// Maximum sequence length in tokens; longer texts are truncated.
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
    #[arg(long, env = "GOEMOTIONS_POOLING", default_value = "mean", value_parser = ["mean", "cls"])]
    pub pooling: String,
    /// Override the checkpoint's dropout probability.
    #[arg(long, env = "GOEMOTIONS_DROPOUT")]
    pub dropout: Option<f64>,
    /// Early stopping: epochs without a better dev macro-F1 before stopping.
    #[arg(long, env = "GOEMOTIONS_PATIENCE", default_value_t = TrainConfig::default().patience)]
    pub patience: u32,
    /// Clip gradients to this global L2 norm.
    #[arg(long, env = "GOEMOTIONS_MAX_GRAD_NORM", default_value_t = TrainConfig::default().max_grad_norm)]
    pub max_grad_norm: f64,
    /// Per-label positive weight in the BCE loss.
    #[arg(long, env = "GOEMOTIONS_POS_WEIGHT", value_enum, default_value_t = PosWeight::None)]
    pub pos_weight: PosWeight,
    /// Stop after this many optimizer steps (smoke tests, benchmarks).
    #[arg(long, env = "GOEMOTIONS_MAX_STEPS")]
    pub max_steps: Option<u64>,
    /// Batch size for dev/test inference.
    #[arg(long, env = "GOEMOTIONS_EVAL_BATCH_SIZE", default_value_t = TrainConfig::default().eval_batch_size)]
    pub eval_batch_size: usize,
}

impl HyperArgs {
    pub fn config(&self) -> TrainConfig {
        TrainConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate: self.lr,
            max_length: self.max_length,
            warmup_ratio: self.warmup_ratio,
            weight_decay: self.weight_decay,
            seed: self.seed,
            pooling: self.pooling.clone(),
            dropout: self.dropout,
            patience: self.patience,
            max_grad_norm: self.max_grad_norm,
            pos_weight: self.pos_weight,
            max_steps: self.max_steps,
            eval_batch_size: self.eval_batch_size,
            ..TrainConfig::default()
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct BaseModelArgs {
    /// Base encoder: a Hugging Face model folder or object-store URI with config.json,
    /// model.safetensors and tokenizer.json.
    #[arg(
        long,
        env = "GOEMOTIONS_BASE_MODEL",
        default_value = ".cache/models/all-MiniLM-L6-v2"
    )]
    pub base_model: String,
}
