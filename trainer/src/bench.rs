//! Training throughput benchmark: times optimizer steps (after untimed warm-up steps) on the
//! training split, with length-bucketed batches or plain shuffled ones. Tokenization happens
//! before the timed loop; padded and real token counts are reported so runs with different
//! batching compare fairly.
use std::time::Instant;

use common::checkpoint::BaseModel;
use common::data::{self, Dataset};
use common::model::Attention;
use common::tokenizer::{pad_batch_to_multiple, Encoded};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::Device;

use crate::batches;
use crate::config::TrainConfig;
use crate::fine_tune::{self, TrainError};
use crate::optim::Layout;

/// Untimed steps before the clock starts (allocator and kernel warm-up).
pub const WARMUP_STEPS: u64 = 3;

/// Where the timed steps' time went, in seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepProfile {
    /// Padding the batch and building targets (the data side).
    pub data: f64,
    /// Forward pass and loss.
    pub forward: f64,
    /// Backward pass and gradient clipping.
    pub backward: f64,
    /// AdamW update.
    pub optimizer: f64,
    /// On CUDA the phases are not synced (a sync per phase would stall the pipeline the
    /// measurement is about): the times are the host's, issuing work the device runs behind.
    pub host_only: bool,
}

impl StepProfile {
    pub fn total(&self) -> f64 {
        self.data + self.forward + self.backward + self.optimizer
    }

    /// `data 1% forward 30% backward 60% optimizer 9%`, and on CUDA the host's share of the wall
    /// time (near 100%: launch-bound).
    pub fn shares(&self, wall_seconds: f64) -> String {
        let t = self.total().max(1e-12);
        let mut out = format!(
            "data {:.0}% forward {:.0}% backward {:.0}% optimizer {:.0}%",
            100.0 * self.data / t,
            100.0 * self.forward / t,
            100.0 * self.backward / t,
            100.0 * self.optimizer / t
        );
        if self.host_only {
            out.push_str(&format!(
                " (host time issuing work, not synced: {:.0}% of the wall time)",
                100.0 * t / wall_seconds.max(1e-12)
            ));
        }
        out
    }
}

/// What to time and how.
#[derive(Debug, Clone, Copy)]
pub struct BenchOptions {
    /// Timed steps per window.
    pub steps: u64,
    /// Timed windows in one process, each replaying the same batches (the first one pays for
    /// shapes seen for the first time, later ones run with every per-shape cache warm).
    pub repeats: u32,
    pub bucketing: bool,
    pub layout: Layout,
    pub attention: Attention,
    /// Batch lengths rounded up to a multiple of this (1: the longest text).
    pub pad_multiple: usize,
}

/// One timed window.
pub struct Window {
    pub samples_per_second: f64,
    /// Tokens of the texts themselves (no padding) per second.
    pub real_tokens_per_second: f64,
    /// Tokens the model computed on, padding included, per second.
    pub padded_tokens_per_second: f64,
    pub seconds: f64,
    pub profile: StepProfile,
}

pub struct Throughput {
    /// The batches taken (indices into the training split), warm-up first.
    pub batches: Vec<Vec<usize>>,
    pub windows: Vec<Window>,
    pub precision: common::model::Precision,
}

/// Batches for the benchmark: the trainer's length-bucketed order, or plain shuffled batches.
pub fn bench_batches(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    bucketing: bool,
) -> Vec<Vec<usize>> {
    if bucketing {
        batches::epoch_batches(lengths, batch_size, seed, 0)
    } else {
        let mut idx: Vec<usize> = (0..lengths.len()).collect();
        idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        idx.chunks(batch_size).map(<[usize]>::to_vec).collect()
    }
}

/// Times `opts.repeats` windows of `opts.steps` training steps (after `WARMUP_STEPS` untimed
/// ones) on the training split; every window replays the same batches.
pub fn throughput(
    base: &BaseModel,
    data: &Dataset,
    cfg: &TrainConfig,
    device: Device,
    opts: BenchOptions,
) -> Result<Throughput, TrainError> {
    let precision = cfg.precision.resolve_for_training(device)?;
    let (mut model, tokenizer) = fine_tune::build_model(
        base,
        &data.labels,
        common::model::ProblemType::MultiLabel,
        cfg,
        device,
        precision,
    )?;
    model.set_attention(opts.attention);
    let l = data.labels.len();
    let texts: Vec<&str> = data.train.iter().map(|e| e.text.as_str()).collect();
    let encoded = tokenizer.encode_all(&texts)?;
    let lengths: Vec<usize> = encoded.iter().map(|e| e.ids.len()).collect();
    let order: Vec<Vec<usize>> = bench_batches(&lengths, cfg.batch_size, cfg.seed, opts.bucketing)
        .into_iter()
        .cycle()
        .take((opts.steps + WARMUP_STEPS) as usize)
        .collect();
    let targets = data::targets(&data.train, l);
    if let Some(first) = order.first() {
        let items: Vec<&Encoded> = first.iter().map(|&i| &encoded[i]).collect();
        let b = pad_batch_to_multiple(&items, tokenizer.pad_id(), device, opts.pad_multiple);
        let chosen = model.predict_proba(&b.input_ids, &b.attention_mask);
        model.set_attention(Attention::Sdpa);
        let reference = model.predict_proba(&b.input_ids, &b.attention_mask);
        model.set_attention(opts.attention);
        let delta = (chosen - reference).abs().max().double_value(&[]);
        tracing::info!(
            attention = ?model.resolved_attention(device),
            max_abs_delta_vs_sdpa = delta,
            "attention kernel"
        );
    }
    let mut opt =
        fine_tune::optimizer_for(&model, cfg.weight_decay, cfg.layer_lr_decay, opts.layout);
    let objective = crate::loss::Objective::plain(model.config().problem());
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let fresh_profile = || StepProfile {
        host_only: device != Device::Cpu,
        ..StepProfile::default()
    };
    let (warmup, timed) = order.split_at(WARMUP_STEPS.min(order.len() as u64) as usize);
    let mut windows = Vec::new();
    for window in 0..=opts.repeats.max(1) {
        // Window 0 is the untimed warm-up.
        let batches = if window == 0 { warmup } else { timed };
        sync();
        let started = Instant::now();
        let (mut samples, mut real, mut padded) = (0usize, 0usize, 0usize);
        let mut profile = fresh_profile();
        for batch in batches {
            // CPU kernels are synchronous, so the laps are the phases' times; on CUDA they are
            // the host's (see `StepProfile::host_only`).
            let mut lap = Instant::now();
            let mut phase = |slot: &mut f64| {
                *slot += lap.elapsed().as_secs_f64();
                lap = Instant::now();
            };
            let items: Vec<&Encoded> = batch.iter().map(|&i| &encoded[i]).collect();
            let b = pad_batch_to_multiple(&items, tokenizer.pad_id(), device, opts.pad_multiple);
            let y = fine_tune::batch_targets(&targets, batch, l, device);
            phase(&mut profile.data);
            let loss = fine_tune::batch_loss(&model, &b, &y, None, &objective);
            phase(&mut profile.forward);
            fine_tune::backward(&mut opt, &loss, cfg.max_grad_norm);
            phase(&mut profile.backward);
            opt.step(cfg.learning_rate);
            phase(&mut profile.optimizer);
            samples += batch.len();
            real += items.iter().map(|e| e.ids.len()).sum::<usize>();
            padded += b.input_ids.size()[1] as usize * items.len();
        }
        sync();
        let seconds = started.elapsed().as_secs_f64().max(1e-9);
        if window > 0 {
            windows.push(Window {
                samples_per_second: samples as f64 / seconds,
                real_tokens_per_second: real as f64 / seconds,
                padded_tokens_per_second: padded as f64 / seconds,
                seconds,
                profile,
            });
        }
    }
    Ok(Throughput {
        batches: order,
        windows,
        precision,
    })
}
