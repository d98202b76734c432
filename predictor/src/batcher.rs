//! Dynamic batching. Requests queue texts (already tokenized) in a bounded queue; one inference
//! thread takes what is waiting (up to a pool of a few batches, waiting at most `max_wait` for more),
//! drops texts whose caller has gone (cancelled or past its deadline), groups them by model
//! version (a request finishes on the version it started with), sorts by length and cuts
//! batches whose padded size stays within the token budget. Inference never runs on the async
//! runtime's threads.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::tokenizer::Encoded;
use tokio::sync::oneshot;

use crate::engine::ServingModel;
use crate::telemetry::Metrics;

#[derive(Debug, Clone)]
pub struct BatcherConfig {
    /// Texts per forward pass at most.
    pub max_batch_size: usize,
    /// Padded tokens (batch size × longest text) per forward pass at most.
    pub max_batch_tokens: usize,
    /// How long the first text of a batch may wait for company.
    pub max_wait: Duration,
    /// Texts waiting at most; beyond, submissions fail with `QueueFull`.
    pub queue_capacity: usize,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 32,
            max_batch_tokens: 8192,
            max_wait: Duration::from_millis(1),
            queue_capacity: 1024,
        }
    }
}

/// How many forward batches one gathered pool may hold (texts are length-sorted across the pool).
const POOL_BATCHES: usize = 8;

/// Scores in label-id order, or an inference error message.
pub type ScoreResult = Result<Vec<f32>, String>;

struct Job {
    model: Arc<ServingModel>,
    encoded: Encoded,
    reply: oneshot::Sender<ScoreResult>,
}

#[derive(Debug, thiserror::Error)]
#[error("the inference queue is full ({capacity} texts waiting); retry later")]
pub struct QueueFull {
    pub capacity: usize,
}

#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::SyncSender<Job>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
    metrics: Metrics,
}

impl Batcher {
    /// Starts the inference thread.
    pub fn start(config: BatcherConfig, metrics: Metrics) -> Self {
        let (tx, rx) = mpsc::sync_channel(config.queue_capacity);
        let depth = Arc::new(AtomicUsize::new(0));
        let worker_depth = depth.clone();
        let worker_metrics = metrics.clone();
        let capacity = config.queue_capacity;
        std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || run(rx, config, worker_depth, worker_metrics))
            .expect("spawn inference thread");
        Self {
            tx,
            depth,
            capacity,
            metrics,
        }
    }

    /// Queues one tokenized text for `model`; the receiver gets its scores.
    pub fn submit(
        &self,
        model: Arc<ServingModel>,
        encoded: Encoded,
    ) -> Result<oneshot::Receiver<ScoreResult>, QueueFull> {
        let (reply, rx) = oneshot::channel();
        // Count before sending: the worker may take the job before this thread runs again.
        let depth = self.depth.fetch_add(1, Ordering::SeqCst) + 1;
        match self.tx.try_send(Job {
            model,
            encoded,
            reply,
        }) {
            Ok(()) => {
                self.metrics.queue_depth.set(depth as i64);
                Ok(rx)
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                Err(QueueFull {
                    capacity: self.capacity,
                })
            }
        }
    }
}

fn run(rx: mpsc::Receiver<Job>, config: BatcherConfig, depth: Arc<AtomicUsize>, metrics: Metrics) {
    while let Ok(first) = rx.recv() {
        let mut pending = vec![first];
        let deadline = Instant::now() + config.max_wait;
        // Gather up to a few batches' worth: sorting a larger pool by length cuts padding.
        let pool = config.max_batch_size * POOL_BATCHES;
        'gather: while pending.len() < pool {
            match rx.try_recv() {
                Ok(job) => {
                    pending.push(job);
                    continue;
                }
                Err(TryRecvError::Disconnected) => break 'gather,
                Err(TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match rx.recv_timeout(deadline - now) {
                Ok(job) => pending.push(job),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let before = depth.fetch_sub(pending.len(), Ordering::SeqCst);
        metrics
            .queue_depth
            .set(before.saturating_sub(pending.len()) as i64);
        // Callers that went away (cancelled, deadline passed) cost nothing.
        pending.retain(|job| !job.reply.is_closed());
        while !pending.is_empty() {
            // One model version at a time; the rest wait for the next round of this loop.
            let model = pending[0].model.clone();
            let (mut group, rest): (Vec<Job>, Vec<Job>) = pending
                .into_iter()
                .partition(|job| Arc::ptr_eq(&job.model, &model));
            pending = rest;
            group.sort_by_key(|job| job.encoded.ids.len());
            for batch in split_by_budget(group, config.max_batch_size, config.max_batch_tokens) {
                infer(&model, batch, &metrics);
            }
        }
    }
}

/// Cuts length-sorted jobs into batches within the size and padded-token budgets.
fn split_by_budget(jobs: Vec<Job>, max_size: usize, max_tokens: usize) -> Vec<Vec<Job>> {
    let mut batches = Vec::new();
    let mut current: Vec<Job> = Vec::new();
    for job in jobs {
        let longest = job.encoded.ids.len().max(1);
        if !current.is_empty()
            && (current.len() + 1 > max_size || (current.len() + 1) * longest > max_tokens)
        {
            batches.push(std::mem::take(&mut current));
        }
        current.push(job);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

fn infer(model: &ServingModel, batch: Vec<Job>, metrics: &Metrics) {
    let started = Instant::now();
    let items: Vec<&Encoded> = batch.iter().map(|j| &j.encoded).collect();
    let longest = items.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let device = model.model.device();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let b = model.tokenizer.batch(&items, device);
        let probs = tch::autocast(device.is_cuda(), || {
            model.model.predict_proba(&b.input_ids, &b.attention_mask)
        });
        Vec::<f32>::try_from(probs.flatten(0, -1)).map_err(|e| e.to_string())
    }));
    metrics.batch_size.observe(batch.len() as f64);
    metrics.batch_tokens.observe((longest * batch.len()) as f64);
    metrics
        .inference_seconds
        .observe(started.elapsed().as_secs_f64());
    let l = model.manifest.labels.len();
    match result {
        Ok(Ok(flat)) => {
            for (i, job) in batch.into_iter().enumerate() {
                let _ = job.reply.send(Ok(flat[i * l..(i + 1) * l].to_vec()));
            }
        }
        Ok(Err(message)) => fail_all(batch, &message),
        Err(_) => fail_all(batch, "inference panicked"),
    }
}

fn fail_all(batch: Vec<Job>, message: &str) {
    tracing::error!(error = message, texts = batch.len(), "inference failed");
    for job in batch {
        let _ = job.reply.send(Err(message.to_string()));
    }
}
