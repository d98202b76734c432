//! The fine-tuning loop: the `loss` objective (BCE-with-logits on multi-hot targets by default,
//! optionally distilling from teachers' soft targets), AdamW with linear warmup/decay,
//! gradient clipping, length-bucketed batches, dev evaluation after every epoch, best-epoch
//! selection by dev macro-F1 with early stopping, threshold tuning, and resumable state. With
//! `ema_decay` the weights' moving average (`ema`) is what each epoch evaluates and what is kept.
//!
//! In three parts: `FineTune::prepare` (tokenize, build the optimizer, restore a saved state),
//! `FineTune::run_epoch` (the steps of one epoch, then its dev evaluation) and `FineTune::finish`
//! (restore the best epoch, tune thresholds, refuse degenerate models).
//!
//! Reproducibility: batch order depends only on (seed, epoch) and dropout is re-seeded with
//! (seed + global step) before every step, so a run resumed from a saved state takes exactly the
//! steps an uninterrupted run takes.
use std::time::Instant;

use common::calibration::{self, Calibration, Method, Scaling};
use common::checkpoint::{BaseModel, CONFIG, TOKENIZER, WEIGHTS};
use common::data::{self, Example};
use common::inference::{self, InferenceError};
use common::labels::LabelSet;
use common::metrics::{self, Thresholds};
use common::model::{BertClassifier, ModelError, Precision, ProblemType};
use common::tokenizer::{Batch, Encoded, TextTokenizer, TokenizerError};
use tch::{Device, Kind, Tensor};

use crate::batches;
use crate::config::{CalibrationChoice, PosWeight, TrainConfig};
use crate::ema::WeightAverage;
use crate::history::EpochRecord;
use crate::loss::Objective;
use crate::observe::{Observer, Progress};
use crate::optim::{linear_schedule, AdamW, Layout};
use crate::resume::{ResumeMeta, ResumeState, StateError};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("loss became {loss} at step {step}: training diverged (lower the learning rate)")]
    NonFinite { step: u64, loss: f64 },
    #[error("refusing to publish a degenerate model: with tuned thresholds it predicts no label for any of {examples} dev examples")]
    Degenerate { examples: usize },
    #[error("cancelled")]
    Cancelled,
    #[error("interrupted at step {step}: state saved, the job resumes when the trainer restarts")]
    Interrupted { step: u64 },
    #[error("teacher scores: {found} values for {expected} (training examples × labels)")]
    SoftTargets { found: usize, expected: usize },
    #[error("teacher scores: {value} is not a probability")]
    SoftTargetValue { value: f32 },
    #[error("train and dev sets must not be empty")]
    EmptySplit,
    #[error(transparent)]
    Invalid(#[from] crate::validate::ValidationError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Inference(#[from] InferenceError),
    #[error("base model {uri}: {message}")]
    Base { uri: String, message: String },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Precision(#[from] common::model::PrecisionError),
}

pub struct TrainOutcome {
    pub model: BertClassifier,
    pub tokenizer: TextTokenizer,
    pub thresholds: Thresholds,
    pub history: Vec<EpochRecord>,
    pub best_epoch: u32,
    /// Dev scores of the selected model as published (after any calibration), `[examples × labels]`.
    pub dev_scores: Vec<f32>,
    /// The per-label calibration fitted on dev (multi-label models: Platt or temperature), applied or not.
    pub calibration: Option<Calibration>,
    pub train_seconds: f64,
    pub samples_per_second: f64,
    pub steps: u64,
}

/// Builds the model to fine-tune from a base checkpoint, with the config's dropout override and
/// the precision resolved for `device`.
pub fn build_model(
    base: &BaseModel,
    labels: &LabelSet,
    problem: ProblemType,
    cfg: &TrainConfig,
    device: Device,
    precision: Precision,
) -> Result<(BertClassifier, TextTokenizer), TrainError> {
    let file = |name: &str| {
        base.files.get(name).ok_or_else(|| TrainError::Base {
            uri: base.uri.clone(),
            message: format!("lacks {name}"),
        })
    };
    let mut config: serde_json::Value =
        serde_json::from_slice(file(CONFIG)?).map_err(|e| TrainError::Base {
            uri: base.uri.clone(),
            message: format!("config.json: {e}"),
        })?;
    if let Some(p) = cfg.dropout {
        config["hidden_dropout_prob"] = p.into();
        config["attention_probs_dropout_prob"] = p.into();
    }
    let config = serde_json::to_vec(&config).map_err(|e| TrainError::Base {
        uri: base.uri.clone(),
        message: format!("config.json: {e}"),
    })?;
    // The new head's initial weights are drawn from libtorch's generator: seeded here, so the
    // seed decides them (and two builds with one config start the same).
    tch::manual_seed(cfg.seed as i64);
    let (mut model, report) =
        BertClassifier::load(&config, file(WEIGHTS)?, labels.len(), cfg.pooling, device)?;
    if !report.initialised.is_empty() {
        tracing::info!(tensors = ?report.initialised, "initialised new tensors (classification head)");
    }
    // The published config.json carries the label names, pooling and problem type.
    let mut c = model.config().clone();
    c.set_classification(&labels.names, cfg.pooling.as_str(), problem);
    *model.config_mut() = c;
    model.set_precision(precision);
    let tokenizer = TextTokenizer::from_bytes(file(TOKENIZER)?, cfg.max_length)?;
    Ok((model, tokenizer))
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

/// Named parameter tensors.
type Weights = Vec<(String, Tensor)>;

/// The model's parameters copied to the CPU.
fn snapshot(model: &BertClassifier) -> Weights {
    cpu_copies(&model.named_parameters())
}

/// Copies of `weights` on the CPU, detached from autograd.
fn cpu_copies(weights: &[(String, Tensor)]) -> Weights {
    weights
        .iter()
        .map(|(n, t)| (n.clone(), t.detach().to_device(Device::Cpu).copy()))
        .collect()
}

fn restore(model: &BertClassifier, weights: &[(String, Tensor)]) -> Result<(), TrainError> {
    let vars = model.var_store().variables();
    tch::no_grad(|| {
        for (name, t) in weights {
            let var = vars
                .get(name)
                .ok_or_else(|| StateError::UnknownTensor(name.clone()))?;
            var.shallow_clone().f_copy_(t).map_err(ModelError::from)?;
        }
        Ok(())
    })
}

/// Parameters with their weight-decay flag (no decay for biases and LayerNorm) and, with
/// `layer_lr_decay` below 1, learning rates shrinking from the head down to the embeddings.
pub(crate) fn optimizer_for(
    model: &BertClassifier,
    weight_decay: f64,
    layer_lr_decay: f64,
    layout: Layout,
) -> AdamW {
    let no_decay = model.no_decay_names();
    let layers = model.config().num_hidden_layers;
    let params = model.trainable_parameters();
    let scales = params
        .iter()
        .map(|(n, _)| layer_lr_scale(n, layers, layer_lr_decay))
        .collect();
    let params = params
        .into_iter()
        .map(|(n, t)| (t, !no_decay.contains(&n)))
        .collect();
    AdamW::with_lr_scales(params, weight_decay, layout, scales)
}

/// The learning-rate multiple of a parameter under layer-wise decay: `decay^(layers − i)` in
/// encoder layer i, `decay^(layers + 1)` in the embeddings, 1 elsewhere (pooler, head).
fn layer_lr_scale(name: &str, layers: i64, decay: f64) -> f64 {
    if decay == 1.0 {
        return 1.0;
    }
    if name.contains("embeddings.") {
        return decay.powi(layers as i32 + 1);
    }
    if let Some(rest) = name.split("encoder.layer.").nth(1) {
        if let Some(i) = rest.split('.').next().and_then(|i| i.parse::<i64>().ok()) {
            return decay.powi((layers - i).max(0) as i32);
        }
    }
    1.0
}

/// The rows of a batch's targets (multi-hot labels, or a teacher's scores) as an fp32 tensor
/// on `device`.
pub(crate) fn batch_targets<T: Copy>(
    targets: &[T],
    batch: &[usize],
    num_labels: usize,
    device: Device,
) -> Tensor
where
    f32: From<T>,
{
    let mut y = Vec::with_capacity(batch.len() * num_labels);
    for &i in batch {
        y.extend(
            targets[i * num_labels..(i + 1) * num_labels]
                .iter()
                .map(|&v| f32::from(v)),
        );
    }
    Tensor::from_slice(&y)
        .view([batch.len() as i64, num_labels as i64])
        .to_device(device)
}

/// Forward (in the model's precision) and the fp32 loss of one batch under `objective`, against
/// the labels and, when distilling, the teacher's `soft` scores. With R-Drop the batch runs
/// twice in one forward (the texts stacked on themselves, so each copy draws its own dropout).
pub(crate) fn batch_loss(
    model: &BertClassifier,
    batch: &Batch,
    targets: &Tensor,
    soft: Option<&Tensor>,
    objective: &Objective,
) -> Tensor {
    if objective.rdrop_weight() > 0.0 {
        let twice = |t: &Tensor| Tensor::cat(&[t, t], 0);
        let logits = model
            .forward(
                &twice(&batch.input_ids),
                &twice(&batch.attention_mask),
                true,
            )
            .logits
            .to_kind(Kind::Float);
        let passes = logits.chunk(2, 0);
        return objective.paired_loss(&passes[0], &passes[1], targets, soft);
    }
    let logits = model
        .forward(&batch.input_ids, &batch.attention_mask, true)
        .logits
        .to_kind(Kind::Float);
    objective.loss(&logits, targets, soft)
}

/// Backward (fresh gradients) and gradient clipping.
pub(crate) fn backward(opt: &mut AdamW, loss: &Tensor, max_grad_norm: f64) {
    opt.backward(loss);
    opt.clip_grad_norm(max_grad_norm);
}

/// Forward, fp32 loss, backward and gradient clipping for one batch. Returns the loss; a
/// non-finite loss is returned before any gradient is computed.
pub(crate) fn train_step(
    model: &BertClassifier,
    opt: &mut AdamW,
    batch: &Batch,
    targets: (&Tensor, Option<&Tensor>),
    objective: &Objective,
    max_grad_norm: f64,
) -> f64 {
    let loss = batch_loss(model, batch, targets.0, targets.1, objective);
    let value = loss.double_value(&[]);
    if value.is_finite() {
        backward(opt, &loss, max_grad_norm);
    }
    value
}

/// A fine-tuning run in progress.
pub struct FineTune<'a> {
    model: BertClassifier,
    tokenizer: TextTokenizer,
    cfg: &'a TrainConfig,
    labels: &'a LabelSet,
    train_enc: Vec<Encoded>,
    train_targets: Vec<u8>,
    dev_enc: Vec<Encoded>,
    dev_targets: Vec<u8>,
    /// The teachers' mean scores on the training texts, `[examples × labels]`, when distilling.
    soft_targets: Option<Vec<f32>>,
    objective: Objective,
    opt: AdamW,
    meta: ResumeMeta,
    best_weights: Option<Vec<(String, Tensor)>>,
    /// The moving average of the weights, evaluated and published in their place (`ema_decay`).
    average: Option<WeightAverage>,
    best_dev_scores: Option<Vec<f32>>,
    total_steps: u64,
    warmup: u64,
    started: Instant,
    samples_at_start: u64,
}

impl<'a> FineTune<'a> {
    /// Tokenizes both splits, builds the optimizer and restores `resume` when given.
    pub fn prepare(
        model: BertClassifier,
        tokenizer: TextTokenizer,
        train: &[Example],
        dev: &[Example],
        labels: &'a LabelSet,
        cfg: &'a TrainConfig,
        resume: Option<ResumeState>,
    ) -> Result<Self, TrainError> {
        crate::validate::check_config(cfg)?;
        if train.is_empty() || dev.is_empty() {
            return Err(TrainError::EmptySplit);
        }
        let l = labels.len();
        let texts =
            |split: &[Example]| -> Vec<String> { split.iter().map(|e| e.text.clone()).collect() };
        let train_enc = tokenizer.encode_all(&texts(train))?;
        let dev_enc = tokenizer.encode_all(&texts(dev))?;
        let steps_per_epoch = train.len().div_ceil(cfg.batch_size.max(1)) as u64;
        let total_steps = cfg
            .max_steps
            .unwrap_or(u64::MAX)
            .min(steps_per_epoch * u64::from(cfg.epochs));
        let mut opt = optimizer_for(&model, cfg.weight_decay, cfg.layer_lr_decay, Layout::Auto);
        let mut meta = ResumeMeta::start();
        let mut best_weights = None;
        let mut average = None;
        if let Some(state) = resume {
            restore(&model, &state.weights)?;
            opt.load_state(state.meta.optimizer_step, &state.optimizer)?;
            best_weights = state.best_weights;
            average = match (cfg.ema_decay > 0.0, state.average) {
                (true, Some(saved)) => Some(WeightAverage::resume(&model, cfg.ema_decay, saved)?),
                (true, None) if state.meta.global_step > 0 => {
                    return Err(StateError::MissingAverage("every parameter".into()).into())
                }
                _ => None,
            };
            meta = state.meta;
            tracing::info!(
                epoch = meta.epoch,
                step = meta.global_step,
                "resuming from saved state"
            );
        }
        if model.config().problem() == ProblemType::SingleLabel
            && matches!(
                cfg.calibration,
                CalibrationChoice::Temperature | CalibrationChoice::Platt
            )
        {
            return Err(crate::validate::ValidationError::Invalid {
                field: "hyperparameters.calibration".into(),
                message: "temperature and Platt scaling are per label, for multi-label models; a single-label model's softmax is not scaled (use auto or none)".into(),
            }
            .into());
        }
        if cfg.ema_decay > 0.0 && average.is_none() {
            average = Some(WeightAverage::new(&model, cfg.ema_decay));
        }
        let objective = Objective::new(
            cfg,
            model.config().problem(),
            pos_weight(train, l, cfg.pos_weight, model.device()),
        )?;
        Ok(Self {
            soft_targets: None,
            objective,
            model,
            tokenizer,
            cfg,
            labels,
            train_enc,
            train_targets: data::targets(train, l),
            dev_enc,
            dev_targets: data::targets(dev, l),
            opt,
            samples_at_start: meta.samples_seen,
            meta,
            best_weights,
            average,
            best_dev_scores: None,
            total_steps,
            warmup: (cfg.warmup_ratio * total_steps as f64).round() as u64,
            started: Instant::now(),
        })
    }

    /// Distils from `scores`, the teachers' mean scores on the training texts in the order
    /// given to `prepare` (`[examples × labels]`).
    pub fn with_soft_targets(mut self, scores: Vec<f32>) -> Result<Self, TrainError> {
        let expected = self.train_enc.len() * self.labels.len();
        if scores.len() != expected {
            return Err(TrainError::SoftTargets {
                found: scores.len(),
                expected,
            });
        }
        if let Some(bad) = scores.iter().find(|v| !(0.0..=1.0).contains(*v)) {
            return Err(TrainError::SoftTargetValue { value: *bad });
        }
        self.soft_targets = Some(scores);
        Ok(self)
    }

    /// Whether another epoch should run.
    pub fn wants_epoch(&self) -> bool {
        self.meta.epoch < self.cfg.epochs && self.meta.global_step < self.total_steps
    }

    /// Runs the remaining steps of the current epoch, evaluates on dev, keeps the best weights
    /// and saves a state. Returns whether training should go on (false on early stop).
    pub fn run_epoch(&mut self, observer: &mut dyn Observer) -> Result<bool, TrainError> {
        let epoch_started = Instant::now();
        let lengths: Vec<usize> = self.train_enc.iter().map(|e| e.ids.len()).collect();
        let order = batches::epoch_batches(
            &lengths,
            self.cfg.batch_size,
            self.cfg.seed,
            u64::from(self.meta.epoch),
        );
        for batch in order.iter().skip(self.meta.batches_done) {
            if self.meta.global_step >= self.total_steps {
                break;
            }
            if observer.cancelled() {
                return Err(TrainError::Cancelled);
            }
            if observer.interrupted() {
                if observer.wants_state() {
                    self.save_state(observer)?;
                }
                return Err(TrainError::Interrupted {
                    step: self.meta.global_step,
                });
            }
            self.step(batch)?;
            self.report_progress(observer);
            let mid_epoch = self.meta.batches_done < order.len();
            if observer.wants_state()
                && mid_epoch
                && self.cfg.state_every_steps > 0
                && self
                    .meta
                    .global_step
                    .is_multiple_of(self.cfg.state_every_steps)
            {
                self.save_state(observer)?;
            }
        }
        let record = self.evaluate_epoch(epoch_started)?;
        observer.epoch_end(&record);
        if observer.wants_state() {
            self.save_state(observer)?;
        }
        let stop = self.meta.epochs_without_improvement >= self.cfg.patience
            && self.meta.epoch < self.cfg.epochs;
        if stop {
            tracing::info!(
                patience = self.cfg.patience,
                "dev macro-F1 stopped improving: early stop"
            );
        }
        Ok(!stop)
    }

    /// One optimizer step on `batch`.
    fn step(&mut self, batch: &[usize]) -> Result<(), TrainError> {
        let device = self.model.device();
        let l = self.labels.len();
        tch::manual_seed(step_seed(self.cfg.seed, self.meta.global_step));
        let items: Vec<&Encoded> = batch.iter().map(|&i| &self.train_enc[i]).collect();
        let b = self.tokenizer.batch(&items, device);
        let y = batch_targets(&self.train_targets, batch, l, device);
        let soft = self
            .soft_targets
            .as_ref()
            .map(|s| batch_targets(s, batch, l, device));
        let loss = train_step(
            &self.model,
            &mut self.opt,
            &b,
            (&y, soft.as_ref()),
            &self.objective,
            self.cfg.max_grad_norm,
        );
        if !loss.is_finite() {
            return Err(TrainError::NonFinite {
                step: self.meta.global_step,
                loss,
            });
        }
        let lr = self.learning_rate();
        self.opt.step(lr);
        if let Some(average) = &mut self.average {
            average.update(&self.model, self.meta.global_step);
        }
        let m = &mut self.meta;
        m.global_step += 1;
        m.batches_done += 1;
        m.optimizer_step = self.opt.steps_taken();
        m.loss_sum += loss;
        m.loss_count += 1;
        m.samples_seen += batch.len() as u64;
        Ok(())
    }

    /// The scheduled learning rate of the step about to be taken.
    fn learning_rate(&self) -> f64 {
        linear_schedule(
            self.meta.global_step,
            self.warmup,
            self.total_steps,
            self.cfg.learning_rate,
        )
    }

    fn report_progress(&self, observer: &mut dyn Observer) {
        let m = &self.meta;
        if !(m.global_step.is_multiple_of(5) || m.global_step == self.total_steps) {
            return;
        }
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = (m.samples_seen - self.samples_at_start) as f64 / elapsed;
        let remaining =
            (self.total_steps - m.global_step) as f64 * self.cfg.batch_size as f64 / rate.max(1e-9);
        observer.progress(&Progress {
            epoch: m.epoch + 1,
            epochs: self.cfg.epochs,
            step: m.global_step,
            total_steps: self.total_steps,
            loss: m.loss_sum / m.loss_count.max(1) as f64,
            learning_rate: linear_schedule(
                m.global_step.saturating_sub(1),
                self.warmup,
                self.total_steps,
                self.cfg.learning_rate,
            ),
            samples_per_second: rate,
            eta_seconds: remaining,
        });
    }

    /// Dev scores of the weights being trained, or of their moving average when there is one
    /// (then also a copy of those weights); the model keeps training from its own weights.
    fn score_dev(&self) -> Result<(Vec<f32>, Option<Weights>), TrainError> {
        let score = || {
            inference::score_all(
                &self.model,
                &self.tokenizer,
                &self.dev_enc,
                self.cfg.eval_batch_size,
            )
        };
        let Some(average) = &self.average else {
            return Ok((score()?, None));
        };
        let trained = snapshot(&self.model);
        restore(&self.model, average.weights())?;
        let scored = score().map(|s| (s, snapshot(&self.model)));
        restore(&self.model, &trained)?;
        let (scores, averaged) = scored?;
        Ok((scores, Some(averaged)))
    }

    /// Dev evaluation at the end of an epoch (or of the step budget); keeps the best weights.
    fn evaluate_epoch(&mut self, epoch_started: Instant) -> Result<EpochRecord, TrainError> {
        let l = self.labels.len();
        let (dev_scores, averaged) = self.score_dev()?;
        let (macro_f1, micro_f1) = if self.single_label() {
            let e = metrics::evaluate_argmax(&dev_scores, &self.dev_targets, self.labels);
            (e.macro_f1, e.micro_f1)
        } else {
            let t = metrics::tune_thresholds(&dev_scores, &self.dev_targets, l);
            let macro_f1 =
                metrics::evaluate(&dev_scores, &self.dev_targets, self.labels, &t.per_label)
                    .macro_f1;
            let micro_f1 = metrics::evaluate(
                &dev_scores,
                &self.dev_targets,
                self.labels,
                &vec![t.global; l],
            )
            .micro_f1;
            (macro_f1, micro_f1)
        };
        let m = &mut self.meta;
        let record = EpochRecord {
            epoch: m.epoch + 1,
            train_loss: m.loss_sum / m.loss_count.max(1) as f64,
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
        m.history.push(record.clone());
        if macro_f1 > m.best_macro_f1 {
            m.best_macro_f1 = macro_f1;
            m.best_epoch = Some(m.epoch + 1);
            m.epochs_without_improvement = 0;
            self.best_weights = Some(averaged.unwrap_or_else(|| snapshot(&self.model)));
            self.best_dev_scores = Some(dev_scores);
        } else {
            m.epochs_without_improvement += 1;
        }
        m.epoch += 1;
        m.batches_done = 0;
        m.loss_sum = 0.0;
        m.loss_count = 0;
        Ok(record)
    }

    fn save_state(&self, observer: &mut dyn Observer) -> Result<(), TrainError> {
        let (_, optimizer) = self.opt.state();
        let state = ResumeState {
            meta: self.meta.clone(),
            weights: snapshot(&self.model),
            optimizer,
            best_weights: self.best_weights.as_ref().map(|b| {
                b.iter()
                    .map(|(n, t)| (n.clone(), t.shallow_clone()))
                    .collect()
            }),
            average: self.average.as_ref().map(|a| cpu_copies(a.weights())),
        };
        Ok(observer.save_state(&state)?)
    }

    fn single_label(&self) -> bool {
        self.model.config().problem() == ProblemType::SingleLabel
    }

    /// Restores the best epoch's weights, tunes the thresholds on its dev scores (a multi-label
    /// model) and refuses a model that would predict nothing.
    pub fn finish(mut self) -> Result<TrainOutcome, TrainError> {
        let train_seconds = self.started.elapsed().as_secs_f64();
        let samples_per_second =
            (self.meta.samples_seen - self.samples_at_start) as f64 / train_seconds.max(1e-9);
        if let Some(best) = &self.best_weights {
            restore(&self.model, best)?;
        } else if let Some(average) = &self.average {
            restore(&self.model, average.weights())?;
        }
        if self.model.precision() != Precision::Fp32 {
            // Thresholds are tuned on the scores the predictor serves by default (fp32); the
            // master weights are fp32 whatever the training precision.
            tracing::info!(
                trained = %self.model.precision(),
                "scoring dev and test in fp32, the precision the predictor serves by default"
            );
            self.model.set_precision(Precision::Fp32);
            self.best_dev_scores = None;
        }
        let dev_scores = match self.best_dev_scores.take() {
            Some(s) => s,
            None => inference::score_all(
                &self.model,
                &self.tokenizer,
                &self.dev_enc,
                self.cfg.eval_batch_size,
            )?,
        };
        let l = self.labels.len();
        if self.single_label() {
            return Ok(TrainOutcome {
                best_epoch: self.meta.best_epoch.unwrap_or(self.meta.epoch),
                history: self.meta.history,
                model: self.model,
                tokenizer: self.tokenizer,
                thresholds: Thresholds::none(),
                dev_scores,
                calibration: None,
                train_seconds,
                samples_per_second,
                steps: self.meta.global_step,
            });
        }
        let mut dev_scores = dev_scores;
        let tuned = metrics::tune_thresholds(&dev_scores, &self.dev_targets, l);
        for (name, fallback) in self.labels.names.iter().zip(&tuned.fallbacks) {
            if let Some(reason) = fallback {
                tracing::info!(label = %name, global = tuned.global, %reason, "label uses the global threshold");
            }
        }
        let (calibration, thresholds) = self.calibrate(&mut dev_scores, tuned)?;
        let at_tuned = metrics::evaluate(
            &dev_scores,
            &self.dev_targets,
            self.labels,
            &thresholds.per_label,
        );
        if at_tuned.empty_prediction_rate >= 1.0 {
            return Err(TrainError::Degenerate {
                examples: self.dev_enc.len(),
            });
        }
        Ok(TrainOutcome {
            best_epoch: self.meta.best_epoch.unwrap_or(self.meta.epoch),
            history: self.meta.history,
            model: self.model,
            tokenizer: self.tokenizer,
            thresholds,
            dev_scores,
            calibration: Some(calibration),
            train_seconds,
            samples_per_second,
            steps: self.meta.global_step,
        })
    }

    /// Fits per-label maps on the dev scores — Platt scaling (a temperature and a shift per label)
    /// and temperature scaling, as the config asks — and, as it says, folds the chosen one into
    /// the head; `dev_scores` then become the calibrated scores, re-scored through the model, and
    /// the thresholds (tuned on the unscaled scores) go through each label's map, so every dev
    /// decision stays what it was. Re-tuning on the scaled scores instead would move the labels
    /// on the global threshold: one threshold across differently scaled labels.
    fn calibrate(
        &self,
        dev_scores: &mut Vec<f32>,
        tuned: Thresholds,
    ) -> Result<(Calibration, Thresholds), TrainError> {
        let targets = &self.dev_targets;
        let l = self.labels.len();
        let macro_f1 = |scores: &[f32], thresholds: &Thresholds| {
            metrics::evaluate(scores, targets, self.labels, &thresholds.per_label).macro_f1
        };
        let dev_log_loss = calibration::log_loss(dev_scores, targets);
        let dev_macro_f1 = macro_f1(dev_scores, &tuned);
        let methods: &[Method] = match self.cfg.calibration {
            CalibrationChoice::Temperature => &[Method::Temperature],
            CalibrationChoice::Platt => &[Method::Platt],
            CalibrationChoice::Auto | CalibrationChoice::None => {
                &[Method::Platt, Method::Temperature]
            }
        };
        let mut candidates: Vec<Candidate> = methods
            .iter()
            .map(|&method| {
                let maps = Scaling::fit(method, dev_scores, targets, l);
                let scaled = maps.apply(dev_scores);
                let mapped = tuned.through_scaling(&maps, &scaled, targets);
                let figures = CalibrationFigures {
                    dev_log_loss,
                    dev_log_loss_scaled: calibration::cross_fitted_log_loss(
                        dev_scores, targets, l, method,
                    ),
                    dev_macro_f1,
                    dev_macro_f1_scaled: macro_f1(&scaled, &mapped),
                };
                let (applied, reason) =
                    calibration_decision(self.cfg.calibration, method, &figures, &mapped.per_label);
                Candidate {
                    method,
                    maps,
                    mapped,
                    figures,
                    applied,
                    reason,
                }
            })
            .collect();
        // The applied map with the lowest cross-fitted log-loss; none applied: the lowest, recorded.
        let lowest = |applied_only: bool| {
            candidates
                .iter()
                .enumerate()
                .filter(|(_, c)| c.applied || !applied_only)
                .min_by(|(_, a), (_, b)| {
                    let loss = |c: &Candidate| c.figures.dev_log_loss_scaled;
                    loss(a).total_cmp(&loss(b))
                })
                .map(|(i, _)| i)
        };
        // `methods` is never empty, so neither is `candidates`.
        let chosen = lowest(true).or_else(|| lowest(false)).unwrap_or(0);
        let reason = if candidates[chosen].applied {
            candidates[chosen].reason.clone()
        } else {
            let all: Vec<&str> = candidates.iter().map(|c| c.reason.as_str()).collect();
            all.join("; ")
        };
        let Candidate {
            method,
            maps,
            mapped,
            figures,
            applied,
            ..
        } = candidates.swap_remove(chosen);
        let thresholds = if applied {
            self.model.calibrate_logits(&maps)?;
            *dev_scores = inference::score_all(
                &self.model,
                &self.tokenizer,
                &self.dev_enc,
                self.cfg.eval_batch_size,
            )?;
            mapped
        } else {
            tuned
        };
        tracing::info!(applied, method = method.as_str(), %reason, "per-label calibration");
        let calibration = Calibration {
            method: method.as_str().into(),
            applied,
            reason,
            temperatures: maps.temperatures,
            shifts: match method {
                Method::Platt => maps.shifts,
                Method::Temperature => Vec::new(),
            },
            dev_log_loss,
            dev_log_loss_scaled: figures.dev_log_loss_scaled,
            dev_macro_f1,
            dev_macro_f1_scaled: figures.dev_macro_f1_scaled,
        };
        Ok((calibration, thresholds))
    }

    /// Runs every remaining epoch, then `finish`.
    pub fn run(mut self, observer: &mut dyn Observer) -> Result<TrainOutcome, TrainError> {
        while self.wants_epoch() {
            if !self.run_epoch(observer)? {
                break;
            }
        }
        self.finish()
    }
}

/// One calibration method fitted on dev, with its thresholds, figures and verdict.
struct Candidate {
    method: Method,
    maps: Scaling,
    /// The unscaled thresholds through `maps`.
    mapped: Thresholds,
    figures: CalibrationFigures,
    applied: bool,
    reason: String,
}

/// Dev figures without and with a per-label calibration.
struct CalibrationFigures {
    dev_log_loss: f64,
    dev_log_loss_scaled: f64,
    dev_macro_f1: f64,
    dev_macro_f1_scaled: f64,
}

/// Whether a fitted calibration (`method`) is applied, and why: `auto` applies it when it lowers
/// the cross-fitted dev log-loss, does not lower dev macro-F1, and keeps every label's threshold
/// (`scaled_thresholds`) on the tuning grid. Thresholds tuned later on the served scores (group
/// thresholds, ensembles, a user's own sweep) use that grid: scores that need 0.999 to decide
/// cannot be tuned (the asymmetric loss's temperatures alone, 0.2–0.3, push thresholds there).
fn calibration_decision(
    choice: CalibrationChoice,
    method: Method,
    f: &CalibrationFigures,
    scaled_thresholds: &[f32],
) -> (bool, String) {
    let measured = format!(
        "{} scaling: dev log-loss {:.4} → {:.4} (cross-fitted halves), dev macro-F1 {:.4} → {:.4}",
        method.as_str(),
        f.dev_log_loss,
        f.dev_log_loss_scaled,
        f.dev_macro_f1,
        f.dev_macro_f1_scaled
    );
    let off_grid: Vec<f32> = scaled_thresholds
        .iter()
        .copied()
        .filter(|t| !metrics::THRESHOLD_GRID_RANGE.contains(t))
        .collect();
    match choice {
        CalibrationChoice::None => (false, format!("--calibration none; {measured}")),
        CalibrationChoice::Temperature | CalibrationChoice::Platt => (
            true,
            format!("--calibration {}; {measured}", choice.as_str()),
        ),
        CalibrationChoice::Auto if f.dev_log_loss_scaled >= f.dev_log_loss => {
            (false, format!("no lower dev log-loss: {measured}"))
        }
        CalibrationChoice::Auto if f.dev_macro_f1_scaled < f.dev_macro_f1 => {
            (false, format!("it would lower dev macro-F1: {measured}"))
        }
        CalibrationChoice::Auto if !off_grid.is_empty() => (
            false,
            format!(
                "{} labels' thresholds would leave the tuning grid, up to {:.4}: {measured}",
                off_grid.len(),
                off_grid.iter().copied().fold(0f32, f32::max),
            ),
        ),
        CalibrationChoice::Auto => (true, measured),
    }
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
    FineTune::prepare(model, tokenizer, train, dev, labels, cfg, resume)?.run(observer)
}

/// libtorch's seed for step `step` of a run seeded `seed`: both mixed (splitmix64), so that no
/// two (seed, step) pairs share their dropout masks — with `seed + step`, seed S at step k + 1
/// would draw exactly what seed S + 1 draws at step k. A resumed run gets the same seeds.
pub(crate) fn step_seed(seed: u64, step: u64) -> i64 {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (mix(mix(seed) ^ step) >> 1) as i64
}

#[cfg(test)]
mod tests {
    #[test]
    fn auto_calibration_needs_lower_log_loss_the_same_f1_and_thresholds_on_the_grid() {
        let figures = |scaled_loss: f64, scaled_f1: f64| CalibrationFigures {
            dev_log_loss: 0.12,
            dev_log_loss_scaled: scaled_loss,
            dev_macro_f1: 0.55,
            dev_macro_f1_scaled: scaled_f1,
        };
        let on_grid = [0.3, 0.9, 0.5];
        let decide = |choice, f, t: &[f32]| calibration_decision(choice, Method::Platt, &f, t);
        let (applied, why) = decide(CalibrationChoice::Auto, figures(0.11, 0.55), &on_grid);
        assert!(
            applied && why.starts_with("platt scaling: dev log-loss"),
            "{why}"
        );
        let (applied, why) = decide(CalibrationChoice::Auto, figures(0.13, 0.55), &on_grid);
        assert!(
            !applied && why.starts_with("no lower dev log-loss"),
            "{why}"
        );
        let (applied, why) = decide(CalibrationChoice::Auto, figures(0.11, 0.54), &on_grid);
        assert!(
            !applied && why.starts_with("it would lower dev macro-F1"),
            "{why}"
        );
        let (applied, why) = decide(
            CalibrationChoice::Auto,
            figures(0.11, 0.55),
            &[0.3, 0.9992, 0.995],
        );
        assert!(
            !applied
                && why
                    .starts_with("2 labels' thresholds would leave the tuning grid, up to 0.9992"),
            "{why}"
        );
        // The explicit choices hold whatever the figures.
        for choice in [CalibrationChoice::Temperature, CalibrationChoice::Platt] {
            assert!(decide(choice, figures(0.13, 0.54), &[0.9999]).0);
        }
        assert!(!decide(CalibrationChoice::None, figures(0.11, 0.55), &on_grid).0);
    }
    use super::{
        calibration_decision, layer_lr_scale, step_seed, CalibrationChoice, CalibrationFigures,
        Method,
    };

    #[test]
    fn layer_wise_decay_shrinks_rates_from_the_head_down() {
        let scale = |name: &str| layer_lr_scale(name, 6, 0.8);
        assert_eq!(scale("classifier.weight"), 1.0);
        assert!((scale("bert.encoder.layer.5.output.dense.weight") - 0.8).abs() < 1e-12);
        assert!(
            (scale("bert.encoder.layer.0.attention.self.query.weight") - 0.8f64.powi(6)).abs()
                < 1e-12
        );
        assert!((scale("bert.embeddings.word_embeddings.weight") - 0.8f64.powi(7)).abs() < 1e-12);
        assert_eq!(
            layer_lr_scale("bert.embeddings.word_embeddings.weight", 6, 1.0),
            1.0
        );
    }

    #[test]
    fn step_seeds_of_neighbouring_runs_never_meet() {
        let mut seen = std::collections::HashSet::new();
        for seed in 40..45u64 {
            for step in 0..2000u64 {
                assert!(
                    seen.insert(step_seed(seed, step)),
                    "seed {seed} step {step} repeats another run's seed"
                );
                assert!(step_seed(seed, step) >= 0);
            }
        }
        assert_eq!(
            step_seed(42, 7),
            step_seed(42, 7),
            "a resumed run draws the same"
        );
    }
}
