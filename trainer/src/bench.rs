//! Training throughput benchmark: times optimizer steps (after untimed warm-up steps) on the
//! training split, with length-bucketed batches or plain shuffled ones. Tokenization happens
//! before the timed loop; padded and real token counts are reported so runs with different
//! batching compare fairly.
use std::time::Instant;

use common::checkpoint::BaseModel;
use common::data::{self, Dataset};
use common::tokenizer::Encoded;
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

pub struct Throughput {
    /// The batches taken (indices into the training split), warm-up first.
    pub batches: Vec<Vec<usize>>,
    pub samples_per_second: f64,
    /// Tokens of the texts themselves (no padding) per second.
    pub real_tokens_per_second: f64,
    /// Tokens the model computed on, padding included, per second.
    pub padded_tokens_per_second: f64,
    pub seconds: f64,
    pub steps: u64,
    pub precision: common::model::Precision,
    pub profile: StepProfile,
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

/// Times `steps` training steps (after `WARMUP_STEPS` untimed ones) on the training split.
pub fn throughput(
    base: &BaseModel,
    data: &Dataset,
    cfg: &TrainConfig,
    device: Device,
    steps: u64,
    bucketing: bool,
    layout: Layout,
) -> Result<Throughput, TrainError> {
    let precision = cfg.precision.resolve(device)?;
    let (model, tokenizer) = fine_tune::build_model(base, &data.labels, cfg, device, precision)?;
    let l = data.labels.len();
    let texts: Vec<&str> = data.train.iter().map(|e| e.text.as_str()).collect();
    let encoded = tokenizer.encode_all(&texts)?;
    let lengths: Vec<usize> = encoded.iter().map(|e| e.ids.len()).collect();
    let order: Vec<Vec<usize>> = bench_batches(&lengths, cfg.batch_size, cfg.seed, bucketing)
        .into_iter()
        .cycle()
        .take((steps + WARMUP_STEPS) as usize)
        .collect();
    let targets = data::targets(&data.train, l);
    let mut opt = fine_tune::optimizer_for(&model, cfg.weight_decay, layout);
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let mut started = Instant::now();
    let (mut samples, mut real, mut padded) = (0usize, 0usize, 0usize);
    let fresh_profile = || StepProfile {
        host_only: device != Device::Cpu,
        ..StepProfile::default()
    };
    let mut profile = fresh_profile();
    for (step, batch) in order.iter().enumerate() {
        if step as u64 == WARMUP_STEPS {
            sync();
            started = Instant::now();
            (samples, real, padded) = (0, 0, 0);
            profile = fresh_profile();
        }
        // CPU kernels are synchronous, so the laps are the phases' times; on CUDA they are the
        // host's (see `StepProfile::host_only`).
        let mut lap = Instant::now();
        let mut phase = |slot: &mut f64| {
            *slot += lap.elapsed().as_secs_f64();
            lap = Instant::now();
        };
        let items: Vec<&Encoded> = batch.iter().map(|&i| &encoded[i]).collect();
        let b = tokenizer.batch(&items, device);
        let y = fine_tune::batch_targets(&targets, batch, l, device);
        phase(&mut profile.data);
        let loss = fine_tune::batch_loss(&model, &b, &y, None);
        phase(&mut profile.forward);
        fine_tune::backward(&mut opt, &loss, cfg.max_grad_norm);
        phase(&mut profile.backward);
        opt.step(cfg.learning_rate);
        phase(&mut profile.optimizer);
        samples += batch.len();
        real += items.iter().map(|e| e.ids.len()).sum::<usize>();
        padded += items.iter().map(|e| e.ids.len()).max().unwrap_or(0) * items.len();
    }
    sync();
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    Ok(Throughput {
        batches: order,
        samples_per_second: samples as f64 / seconds,
        real_tokens_per_second: real as f64 / seconds,
        padded_tokens_per_second: padded as f64 / seconds,
        seconds,
        steps,
        precision,
        profile,
    })
}
