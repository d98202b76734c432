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

/// Untimed steps before the clock starts (allocator and kernel warm-up).
pub const WARMUP_STEPS: u64 = 3;

pub struct Throughput {
    pub samples_per_second: f64,
    /// Tokens of the texts themselves (no padding) per second.
    pub real_tokens_per_second: f64,
    /// Tokens the model computed on, padding included, per second.
    pub padded_tokens_per_second: f64,
    pub seconds: f64,
    pub steps: u64,
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

/// Times `steps` training steps (after `WARMUP_STEPS` untimed ones) on the training split.
pub fn throughput(
    base: &BaseModel,
    data: &Dataset,
    cfg: &TrainConfig,
    device: Device,
    steps: u64,
    bucketing: bool,
) -> Result<Throughput, TrainError> {
    let precision = cfg
        .precision
        .resolve(device)
        .map_err(|message| TrainError::Base {
            uri: base.uri.clone(),
            message,
        })?;
    let (model, tokenizer) = fine_tune::build_model(base, &data.labels, cfg, device, precision)?;
    let l = data.labels.len();
    let texts: Vec<&str> = data.train.iter().map(|e| e.text.as_str()).collect();
    let encoded = tokenizer.encode_all(&texts)?;
    let lengths: Vec<usize> = encoded.iter().map(|e| e.ids.len()).collect();
    let order = bench_batches(&lengths, cfg.batch_size, cfg.seed, bucketing);
    let targets = data::targets(&data.train, l);
    let mut opt = fine_tune::optimizer_for(&model, cfg.weight_decay);
    let mut started = Instant::now();
    let (mut samples, mut real, mut padded) = (0usize, 0usize, 0usize);
    for (step, batch) in order
        .iter()
        .cycle()
        .take((steps + WARMUP_STEPS) as usize)
        .enumerate()
    {
        if step as u64 == WARMUP_STEPS {
            if device.is_cuda() {
                tch::Cuda::synchronize(0);
            }
            started = Instant::now();
            (samples, real, padded) = (0, 0, 0);
        }
        let items: Vec<&Encoded> = batch.iter().map(|&i| &encoded[i]).collect();
        let b = tokenizer.batch(&items, device);
        let y = fine_tune::batch_targets(&targets, batch, l, device);
        fine_tune::train_step(&model, &mut opt, &b, &y, None, cfg.max_grad_norm);
        opt.step(cfg.learning_rate);
        samples += batch.len();
        real += items.iter().map(|e| e.ids.len()).sum::<usize>();
        padded += items.iter().map(|e| e.ids.len()).max().unwrap_or(0) * items.len();
    }
    if device.is_cuda() {
        tch::Cuda::synchronize(0);
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    Ok(Throughput {
        samples_per_second: samples as f64 / seconds,
        real_tokens_per_second: real as f64 / seconds,
        padded_tokens_per_second: padded as f64 / seconds,
        seconds,
        steps,
        precision,
    })
}
