//! The fine-tuning loop: BCE-with-logits on multi-hot targets, AdamW with linear warmup/decay,
//! gradient clipping, length-bucketed batches, dev evaluation after every epoch, best-epoch
//! selection by dev macro-F1 with early stopping, threshold tuning, and resumable state.
//!
//! Reproducibility: batch order depends only on (seed, epoch) and dropout is re-seeded with
//! (seed + global step) before every step, so a run resumed from a saved state takes exactly the
//! steps an uninterrupted run takes.
use std::time::Instant;

use common::checkpoint::{BaseModel, CONFIG, TOKENIZER, WEIGHTS};
use common::data::Example;
use common::labels::LabelSet;
use common::metrics;
use common::model::{BertClassifier, ModelError, Pooling};
use common::safetensors_io;
use common::tokenizer::{Encoded, TextTokenizer, TokenizerError};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};

use crate::batches;
use crate::optim::{linear_schedule, AdamW};

/// Per-label positive weighting in the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PosWeight {
    /// Plain BCE.
    None,
    /// sqrt(negatives / positives) per label, capped at 30: lifts rare labels' recall.
    Sqrt,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: u32,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub max_length: usize,
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    pub seed: u64,
    pub pooling: String,
    /// Overrides the checkpoint's dropout probabilities when set.
    pub dropout: Option<f64>,
    /// Stop after this many epochs without a better dev macro-F1.
    pub patience: u32,
    pub max_grad_norm: f64,
    pub pos_weight: PosWeight,
    /// Stop after this many optimizer steps in total (benchmarks, smoke tests).
    pub max_steps: Option<u64>,
    pub eval_batch_size: usize,
    /// Save a resumable state every this many steps (and at every epoch end) when a sink is given.
    pub state_every_steps: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 3,
            batch_size: 32,
            learning_rate: 1e-4,
            max_length: 128,
            warmup_ratio: 0.1,
            weight_decay: 0.01,
            seed: 42,
            pooling: "mean".into(),
            dropout: None,
            patience: 2,
            max_grad_norm: 1.0,
            pos_weight: PosWeight::None,
            max_steps: None,
            eval_batch_size: 64,
            state_every_steps: 200,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("loss became {loss} at step {step}: training diverged (lower the learning rate)")]
    NonFinite { step: u64, loss: f64 },
    #[error("refusing to publish a degenerate model: with tuned thresholds it predicts no label for any of {examples} dev examples")]
    Degenerate { examples: usize },
    #[error("cancelled")]
    Cancelled,
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("base model {uri}: {message}")]
    Base { uri: String, message: String },
    #[error("resume state: {0}")]
    Resume(String),
}

/// One finished epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    pub epoch: u32,
    pub train_loss: f64,
    /// Dev macro-F1 at per-label thresholds tuned on dev (the selection criterion).
    pub dev_macro_f1: f64,
    /// Dev micro-F1 at the tuned global threshold.
    pub dev_micro_f1: f64,
    pub seconds: f64,
}

/// A progress report, sent every few steps.
#[derive(Debug, Clone)]
pub struct Progress {
    pub epoch: u32,
    pub epochs: u32,
    pub step: u64,
    pub total_steps: u64,
    pub loss: f64,
    pub learning_rate: f64,
    pub samples_per_second: f64,
    pub eta_seconds: f64,
}

/// Everything needed to continue a run exactly where it stopped.
pub struct ResumeState {
    pub meta: ResumeMeta,
    pub weights: Vec<(String, Tensor)>,
    pub optimizer: Vec<(String, Tensor)>,
    pub best_weights: Option<Vec<(String, Tensor)>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumeMeta {
    /// Epoch in progress (0-based) and the number of its batches already done.
    pub epoch: u32,
    pub batches_done: usize,
    pub global_step: u64,
    pub optimizer_step: i64,
    pub loss_sum: f64,
    pub loss_count: u64,
    pub history: Vec<EpochRecord>,
    pub best_epoch: Option<u32>,
    pub best_macro_f1: f64,
    pub epochs_without_improvement: u32,
    pub samples_seen: u64,
}

impl ResumeState {
    /// Serialises to (tensors, meta JSON); the JSON goes last when storing, as the commit point.
    pub fn encode(&self) -> Result<(Vec<u8>, Vec<u8>), TrainError> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        tensors.extend(
            self.weights
                .iter()
                .map(|(n, t)| (format!("model.{n}"), t.shallow_clone())),
        );
        tensors.extend(
            self.optimizer
                .iter()
                .map(|(n, t)| (format!("optim.{n}"), t.shallow_clone())),
        );
        if let Some(best) = &self.best_weights {
            tensors.extend(
                best.iter()
                    .map(|(n, t)| (format!("best.{n}"), t.shallow_clone())),
            );
        }
        let bytes =
            safetensors_io::encode(&tensors).map_err(|e| TrainError::Resume(e.to_string()))?;
        let meta =
            serde_json::to_vec_pretty(&self.meta).map_err(|e| TrainError::Resume(e.to_string()))?;
        Ok((bytes, meta))
    }

    pub fn decode(tensors: &[u8], meta: &[u8]) -> Result<Self, TrainError> {
        let meta: ResumeMeta =
            serde_json::from_slice(meta).map_err(|e| TrainError::Resume(e.to_string()))?;
        let all = safetensors_io::decode(tensors).map_err(|e| TrainError::Resume(e.to_string()))?;
        let mut weights = Vec::new();
        let mut optimizer = Vec::new();
        let mut best = Vec::new();
        for (name, t) in all {
            if let Some(n) = name.strip_prefix("model.") {
                weights.push((n.to_string(), t));
            } else if let Some(n) = name.strip_prefix("optim.") {
                optimizer.push((n.to_string(), t));
            } else if let Some(n) = name.strip_prefix("best.") {
                best.push((n.to_string(), t));
            }
        }
        Ok(Self {
            meta,
            weights,
            optimizer,
            best_weights: if best.is_empty() { None } else { Some(best) },
        })
    }
}

/// Hooks into a running fine-tune: progress reporting, cancellation, resumable state.
pub trait Observer {
    fn progress(&mut self, _progress: &Progress) {}
    fn epoch_end(&mut self, _record: &EpochRecord) {}
    /// Checked before every step; `true` stops the run with `TrainError::Cancelled`.
    fn cancelled(&self) -> bool {
        false
    }
    /// Whether `save_state` does anything (skips building states nobody keeps).
    fn wants_state(&self) -> bool {
        false
    }
    fn save_state(&mut self, _state: &ResumeState) -> Result<(), String> {
        Ok(())
    }
    /// Training is over; the job moved on to `phase`.
    fn phase(&mut self, _phase: Phase) {}
}

/// Stages of a job after the training loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Evaluating,
    Publishing,
}

/// An observer that does nothing.
pub struct Quiet;
impl Observer for Quiet {}

pub struct TrainOutcome {
    pub model: BertClassifier,
    pub tokenizer: TextTokenizer,
    pub thresholds: Vec<f32>,
    pub global_threshold: f32,
    pub history: Vec<EpochRecord>,
    pub best_epoch: u32,
    /// Dev scores of the selected model, `[examples × labels]`.
    pub dev_scores: Vec<f32>,
    pub train_seconds: f64,
    pub samples_per_second: f64,
    pub steps: u64,
}

/// Multi-hot targets, row-major.
pub fn targets(examples: &[Example], num_labels: usize) -> Vec<u8> {
    let mut t = vec![0u8; examples.len() * num_labels];
    for (i, e) in examples.iter().enumerate() {
        for &l in &e.labels {
            t[i * num_labels + l as usize] = 1;
        }
    }
    t
}

/// Sigmoid scores of `encoded` texts, row-major `[n × labels]`, batched by length.
pub fn score(
    model: &BertClassifier,
    tokenizer: &TextTokenizer,
    encoded: &[Encoded],
    batch_size: usize,
) -> Vec<f32> {
    let l = model.num_labels();
    let mut out = vec![0f32; encoded.len() * l];
    let lengths: Vec<usize> = encoded.iter().map(|e| e.ids.len()).collect();
    let device = model.device();
    for batch in batches::sorted_batches(&lengths, batch_size) {
        let items: Vec<&Encoded> = batch.iter().map(|&i| &encoded[i]).collect();
        let b = tokenizer.batch(&items, device);
        let probs = tch::autocast(device.is_cuda(), || {
            model.predict_proba(&b.input_ids, &b.attention_mask)
        });
        let flat: Vec<f32> = Vec::try_from(probs.flatten(0, -1)).expect("float scores");
        for (row, &i) in batch.iter().enumerate() {
            out[i * l..(i + 1) * l].copy_from_slice(&flat[row * l..(row + 1) * l]);
        }
    }
    out
}

fn pos_weight(
    train: &[Example],
    num_labels: usize,
    mode: PosWeight,
    device: Device,
) -> Option<Tensor> {
    match mode {
        PosWeight::None => None,
        PosWeight::Sqrt => {
            let n = train.len() as f64;
            let mut pos = vec![0f64; num_labels];
            for e in train {
                for &l in &e.labels {
                    pos[l as usize] += 1.0;
                }
            }
            let w: Vec<f32> = pos
                .iter()
                .map(|&p| ((n - p) / p.max(1.0)).sqrt().clamp(1.0, 30.0) as f32)
                .collect();
            Some(Tensor::from_slice(&w).to_device(device))
        }
    }
}

fn snapshot(model: &BertClassifier) -> Vec<(String, Tensor)> {
    model
        .named_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.detach().to_device(Device::Cpu).copy()))
        .collect()
}

fn restore(model: &BertClassifier, weights: &[(String, Tensor)]) -> Result<(), TrainError> {
    let vars = model.var_store().variables();
    tch::no_grad(|| {
        for (name, t) in weights {
            let var = vars
                .get(name)
                .ok_or_else(|| TrainError::Resume(format!("unknown tensor {name}")))?;
            var.shallow_clone().copy_(t);
        }
        Ok(())
    })
}

/// Builds the model to fine-tune from a base checkpoint, with the config's dropout override.
pub fn build_model(
    base: &BaseModel,
    labels: &LabelSet,
    cfg: &TrainConfig,
    device: Device,
) -> Result<(BertClassifier, TextTokenizer), TrainError> {
    let file = |name: &str| {
        base.files.get(name).ok_or_else(|| TrainError::Base {
            uri: base.uri.clone(),
            message: format!("lacks {name}"),
        })
    };
    let pooling: Pooling = cfg.pooling.parse().map_err(TrainError::Config)?;
    let mut config: serde_json::Value =
        serde_json::from_slice(file(CONFIG)?).map_err(|e| TrainError::Base {
            uri: base.uri.clone(),
            message: format!("config.json: {e}"),
        })?;
    if let Some(p) = cfg.dropout {
        config["hidden_dropout_prob"] = p.into();
        config["attention_probs_dropout_prob"] = p.into();
    }
    let config = serde_json::to_vec(&config).expect("json");
    let (mut model, report) =
        BertClassifier::load(&config, file(WEIGHTS)?, labels.len(), pooling, device)?;
    if !report.initialised.is_empty() {
        tracing::info!(tensors = ?report.initialised, "initialised new tensors (classification head)");
    }
    // The published config.json carries the label names and pooling.
    let mut c = model.config().clone();
    c.set_classification(&labels.names, pooling.as_str());
    *model.config_mut() = c;
    let tokenizer = TextTokenizer::from_bytes(file(TOKENIZER)?, cfg.max_length)?;
    Ok((model, tokenizer))
}

/// Fine-tunes `model` on `train`, selecting the best epoch on `dev`; `resume` continues a saved run.
#[allow(clippy::too_many_arguments)]
pub fn fine_tune(
    model: BertClassifier,
    tokenizer: TextTokenizer,
    train: &[Example],
    dev: &[Example],
    labels: &LabelSet,
    cfg: &TrainConfig,
    resume: Option<ResumeState>,
    observer: &mut dyn Observer,
) -> Result<TrainOutcome, TrainError> {
    if cfg.batch_size == 0 || cfg.epochs == 0 {
        return Err(TrainError::Config(
            "batch size and epochs must be positive".into(),
        ));
    }
    if train.is_empty() || dev.is_empty() {
        return Err(TrainError::Config(
            "train and dev sets must not be empty".into(),
        ));
    }
    let device = model.device();
    let l = labels.len();
    let train_texts: Vec<&str> = train.iter().map(|e| e.text.as_str()).collect();
    let dev_texts: Vec<&str> = dev.iter().map(|e| e.text.as_str()).collect();
    let train_enc = tokenizer.encode_all(&train_texts)?;
    let dev_enc = tokenizer.encode_all(&dev_texts)?;
    let lengths: Vec<usize> = train_enc.iter().map(|e| e.ids.len()).collect();
    let train_targets: Vec<f32> = targets(train, l).into_iter().map(f32::from).collect();
    let dev_targets = targets(dev, l);
    let pos_weight = pos_weight(train, l, cfg.pos_weight, device);

    let steps_per_epoch = train.len().div_ceil(cfg.batch_size) as u64;
    let total_steps = cfg
        .max_steps
        .unwrap_or(u64::MAX)
        .min(steps_per_epoch * cfg.epochs as u64);
    let warmup = (cfg.warmup_ratio * total_steps as f64).round() as u64;

    let no_decay = model.no_decay_names();
    let params: Vec<(Tensor, bool)> = model
        .named_parameters()
        .into_iter()
        .map(|(n, t)| (t, !no_decay.contains(&n)))
        .collect();
    let mut opt = AdamW::new(params, cfg.weight_decay);

    let mut meta = ResumeMeta {
        epoch: 0,
        batches_done: 0,
        global_step: 0,
        optimizer_step: 0,
        loss_sum: 0.0,
        loss_count: 0,
        history: Vec::new(),
        best_epoch: None,
        best_macro_f1: f64::MIN,
        epochs_without_improvement: 0,
        samples_seen: 0,
    };
    let mut best_weights: Option<Vec<(String, Tensor)>> = None;
    if let Some(state) = resume {
        restore(&model, &state.weights)?;
        opt.load_state(state.meta.optimizer_step, &state.optimizer)
            .map_err(TrainError::Resume)?;
        best_weights = state.best_weights;
        meta = state.meta;
        tracing::info!(
            epoch = meta.epoch,
            step = meta.global_step,
            "resuming from saved state"
        );
    }

    let started = Instant::now();
    let samples_at_start = meta.samples_seen;
    let mut best_dev_scores: Option<Vec<f32>> = None;
    while meta.epoch < cfg.epochs && meta.global_step < total_steps {
        let epoch_started = Instant::now();
        let order = batches::epoch_batches(&lengths, cfg.batch_size, cfg.seed, meta.epoch as u64);
        for batch in order.iter().skip(meta.batches_done) {
            if meta.global_step >= total_steps {
                break;
            }
            if observer.cancelled() {
                return Err(TrainError::Cancelled);
            }
            tch::manual_seed((cfg.seed as i64).wrapping_add(meta.global_step as i64));
            let items: Vec<&Encoded> = batch.iter().map(|&i| &train_enc[i]).collect();
            let b = tokenizer.batch(&items, device);
            let mut y = Vec::with_capacity(batch.len() * l);
            for &i in batch {
                y.extend_from_slice(&train_targets[i * l..(i + 1) * l]);
            }
            let y = Tensor::from_slice(&y)
                .view([batch.len() as i64, l as i64])
                .to_device(device);
            let loss_value = train_step(
                &model,
                &mut opt,
                &b,
                &y,
                pos_weight.as_ref(),
                cfg.max_grad_norm,
                None,
            );
            if !loss_value.is_finite() {
                return Err(TrainError::NonFinite {
                    step: meta.global_step,
                    loss: loss_value,
                });
            }
            let lr = linear_schedule(meta.global_step, warmup, total_steps, cfg.learning_rate);
            opt.step(lr);
            meta.global_step += 1;
            meta.batches_done += 1;
            meta.optimizer_step = opt.steps_taken();
            meta.loss_sum += loss_value;
            meta.loss_count += 1;
            meta.samples_seen += batch.len() as u64;

            if meta.global_step.is_multiple_of(5) || meta.global_step == total_steps {
                let elapsed = started.elapsed().as_secs_f64().max(1e-9);
                let rate = (meta.samples_seen - samples_at_start) as f64 / elapsed;
                let remaining = (total_steps - meta.global_step) as f64 * cfg.batch_size as f64
                    / rate.max(1e-9);
                observer.progress(&Progress {
                    epoch: meta.epoch + 1,
                    epochs: cfg.epochs,
                    step: meta.global_step,
                    total_steps,
                    loss: meta.loss_sum / meta.loss_count.max(1) as f64,
                    learning_rate: lr,
                    samples_per_second: rate,
                    eta_seconds: remaining,
                });
            }
            let mid_epoch = meta.batches_done < order.len();
            if observer.wants_state()
                && mid_epoch
                && cfg.state_every_steps > 0
                && meta.global_step.is_multiple_of(cfg.state_every_steps)
            {
                save_state(observer, &model, &opt, &meta, &best_weights)?;
            }
        }
        // Epoch (or step budget) finished: evaluate on dev.
        let dev_scores = score(&model, &tokenizer, &dev_enc, cfg.eval_batch_size);
        let per_label = metrics::tune_per_label(&dev_scores, &dev_targets, l);
        let global = metrics::tune_global(&dev_scores, &dev_targets);
        let macro_f1 = metrics::evaluate(&dev_scores, &dev_targets, labels, &per_label).macro_f1;
        let micro_f1 =
            metrics::evaluate(&dev_scores, &dev_targets, labels, &vec![global; l]).micro_f1;
        let record = EpochRecord {
            epoch: meta.epoch + 1,
            train_loss: meta.loss_sum / meta.loss_count.max(1) as f64,
            dev_macro_f1: macro_f1,
            dev_micro_f1: micro_f1,
            seconds: epoch_started.elapsed().as_secs_f64(),
        };
        tracing::info!(
            epoch = record.epoch,
            train_loss = format!("{:.4}", record.train_loss),
            dev_macro_f1 = format!("{:.4}", macro_f1),
            dev_micro_f1 = format!("{:.4}", micro_f1),
            "epoch finished"
        );
        observer.epoch_end(&record);
        meta.history.push(record);
        if macro_f1 > meta.best_macro_f1 {
            meta.best_macro_f1 = macro_f1;
            meta.best_epoch = Some(meta.epoch + 1);
            meta.epochs_without_improvement = 0;
            best_weights = Some(snapshot(&model));
            best_dev_scores = Some(dev_scores);
        } else {
            meta.epochs_without_improvement += 1;
        }
        meta.epoch += 1;
        meta.batches_done = 0;
        meta.loss_sum = 0.0;
        meta.loss_count = 0;
        if observer.wants_state() {
            save_state(observer, &model, &opt, &meta, &best_weights)?;
        }
        if meta.epochs_without_improvement >= cfg.patience && meta.epoch < cfg.epochs {
            tracing::info!(
                patience = cfg.patience,
                "dev macro-F1 stopped improving: early stop"
            );
            break;
        }
    }
    let train_seconds = started.elapsed().as_secs_f64();
    let samples_per_second =
        (meta.samples_seen - samples_at_start) as f64 / train_seconds.max(1e-9);

    if let Some(best) = &best_weights {
        restore(&model, best)?;
    }
    let dev_scores = match best_dev_scores {
        Some(s) => s,
        None => score(&model, &tokenizer, &dev_enc, cfg.eval_batch_size),
    };
    let thresholds = metrics::tune_per_label(&dev_scores, &dev_targets, l);
    let global_threshold = metrics::tune_global(&dev_scores, &dev_targets);
    let at_tuned = metrics::evaluate(&dev_scores, &dev_targets, labels, &thresholds);
    if at_tuned.empty_prediction_rate >= 1.0 {
        return Err(TrainError::Degenerate {
            examples: dev.len(),
        });
    }
    Ok(TrainOutcome {
        model,
        tokenizer,
        thresholds,
        global_threshold,
        best_epoch: meta.best_epoch.unwrap_or(meta.epoch),
        history: meta.history,
        dev_scores,
        train_seconds,
        samples_per_second,
        steps: meta.global_step,
    })
}

/// Forward, loss, backward and gradient clipping for one batch; applies the optimizer step when
/// `lr` is given. Returns the loss (non-finite losses are returned before any update).
fn train_step(
    model: &BertClassifier,
    opt: &mut AdamW,
    batch: &common::tokenizer::Batch,
    targets: &Tensor,
    pos_weight: Option<&Tensor>,
    max_grad_norm: f64,
    lr: Option<f64>,
) -> f64 {
    let device = model.device();
    let logits = tch::autocast(device.is_cuda(), || {
        model
            .forward(&batch.input_ids, &batch.attention_mask, true)
            .logits
    });
    let loss = logits
        .to_kind(Kind::Float)
        .binary_cross_entropy_with_logits(targets, None, pos_weight, Reduction::Mean);
    let value = loss.double_value(&[]);
    if !value.is_finite() {
        return value;
    }
    opt.zero_grad();
    loss.backward();
    opt.clip_grad_norm(max_grad_norm);
    if let Some(lr) = lr {
        opt.step(lr);
    }
    value
}

pub struct Throughput {
    pub samples_per_second: f64,
    pub seconds: f64,
}

/// Times `steps` training steps (after 3 untimed warm-up steps) on the training split.
pub fn throughput(
    base: &BaseModel,
    data: &crate::job::Dataset,
    cfg: &mut TrainConfig,
    device: Device,
    steps: u64,
    bucketing: bool,
) -> Result<Throughput, TrainError> {
    let (model, tokenizer) = build_model(base, &data.labels, cfg, device)?;
    let l = data.labels.len();
    let texts: Vec<&str> = data.train.iter().map(|e| e.text.as_str()).collect();
    let encoded = tokenizer.encode_all(&texts)?;
    let lengths: Vec<usize> = encoded.iter().map(|e| e.ids.len()).collect();
    let order = if bucketing {
        batches::epoch_batches(&lengths, cfg.batch_size, cfg.seed, 0)
    } else {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let mut idx: Vec<usize> = (0..lengths.len()).collect();
        idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed));
        idx.chunks(cfg.batch_size).map(<[usize]>::to_vec).collect()
    };
    let all_targets = targets(&data.train, l);
    let no_decay = model.no_decay_names();
    let params = model
        .named_parameters()
        .into_iter()
        .map(|(n, t)| (t, !no_decay.contains(&n)))
        .collect();
    let mut opt = AdamW::new(params, cfg.weight_decay);
    let warmup = 3;
    let mut started = Instant::now();
    let mut samples = 0usize;
    for (step, batch) in order
        .iter()
        .cycle()
        .take((steps + warmup) as usize)
        .enumerate()
    {
        if step as u64 == warmup {
            started = Instant::now();
            samples = 0;
        }
        let items: Vec<&Encoded> = batch.iter().map(|&i| &encoded[i]).collect();
        let b = tokenizer.batch(&items, device);
        let mut y = Vec::with_capacity(batch.len() * l);
        for &i in batch {
            y.extend(
                all_targets[i * l..(i + 1) * l]
                    .iter()
                    .map(|&v| f32::from(v)),
            );
        }
        let y = Tensor::from_slice(&y)
            .view([batch.len() as i64, l as i64])
            .to_device(device);
        train_step(
            &model,
            &mut opt,
            &b,
            &y,
            None,
            cfg.max_grad_norm,
            Some(cfg.learning_rate),
        );
        samples += batch.len();
    }
    if device.is_cuda() {
        tch::Cuda::synchronize(0);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Throughput {
        samples_per_second: samples as f64 / seconds,
        seconds,
    })
}

fn save_state(
    observer: &mut dyn Observer,
    model: &BertClassifier,
    opt: &AdamW,
    meta: &ResumeMeta,
    best: &Option<Vec<(String, Tensor)>>,
) -> Result<(), TrainError> {
    let (_, optimizer) = opt.state();
    let state = ResumeState {
        meta: meta.clone(),
        weights: snapshot(model),
        optimizer,
        best_weights: best.as_ref().map(|b| {
            b.iter()
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect()
        }),
    };
    observer.save_state(&state).map_err(TrainError::Resume)
}
