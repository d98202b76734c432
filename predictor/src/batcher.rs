//! Dynamic batching on dedicated inference threads (inference never runs on the async
//! runtime's threads).
//!
//! - Room in the queue is reserved before a text is tokenized and queued: streams wait for it
//!   (FIFO, so fair between streams; a waiting stream stops reading its input, and HTTP/2 flow
//!   control pushes back to the client), unary calls wait a bounded time, then RESOURCE_EXHAUSTED.
//! - A gathering thread takes what is waiting (up to a pool of a few batches, waiting at most
//!   `max_wait` for more), drops texts whose caller has gone (a cancelled call, a closed stream)
//!   before they reach the model — at pool assembly and again before each batch —, groups by
//!   model version (a request finishes on the version it started with) and length bucket (every
//!   text is scored at its own bucket's padded length, so its scores never depend on what else
//!   is in flight), sorts by length, cuts batches within the token budget and hands each to the
//!   next free worker.
//! - `workers` threads score batches side by side, each with `threads_per_worker` libtorch
//!   threads: on a small CPU two single-threaded workers keep both cores busy where one
//!   two-threaded forward pass leaves one idle in its serial stretches.
//! - Explanations (`submit_explanation`) take the same queue room (one place per integration
//!   point) and the same workers: the gathering thread hands out at most one explanation per
//!   round, after that round's classify batches, and a worker computes an explanation's points
//!   in batches (up to 32 while nothing else waits, 8 while texts wait) with a waiting classify
//!   batch between two of them (see `explain`), so a text waits for a batch of points, never for
//!   whole explanations.
//! - A failing batch is retried text by text, so one bad text fails only its own request.
//! - If any of these threads ever stops, `stopped()` resolves and new texts are refused with
//!   `Stopped`, so the server can turn NOT_SERVING and exit instead of rejecting work forever.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::explain::{Attributions, ExplainError};
use common::inference::InferenceError;
use common::tokenizer::Encoded;
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::engine::{ExplainWork, ServingModel};
use crate::telemetry::Metrics;

#[derive(Debug, Clone)]
pub struct BatcherConfig {
    /// Texts per forward pass at most.
    pub max_batch_size: usize,
    /// Padded tokens (batch size × longest text) per forward pass at most.
    pub max_batch_tokens: usize,
    /// How long the first text of a batch may wait for company.
    pub max_wait: Duration,
    /// Texts queued or being scored at most.
    pub queue_capacity: usize,
    /// Threads scoring batches side by side.
    pub workers: usize,
    /// libtorch intra-op threads of each worker (`None`: the process setting).
    pub threads_per_worker: Option<i32>,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 32,
            max_batch_tokens: 8192,
            max_wait: Duration::from_millis(1),
            queue_capacity: 1024,
            workers: 1,
            threads_per_worker: None,
        }
    }
}

/// How many forward batches one gathered pool may hold (texts are length-sorted across the pool).
const POOL_BATCHES: usize = 8;

/// Scores texts: a loaded model, or anything else in tests.
pub(crate) trait Scorer: Send + Sync {
    /// Row-major `[items × num_labels]` scores; the items share a length bucket.
    fn score(&self, items: &[&Encoded]) -> Result<Vec<f32>, InferenceError>;
    fn num_labels(&self) -> usize;
    /// The padded length a text of `tokens` tokens is scored at.
    fn bucket(&self, tokens: usize) -> usize;
    /// Attributions for one text; `next_batch(remaining)` says how many of the remaining
    /// integration points to evaluate next, or `None`: stop, nobody waits for the answer.
    fn explain(
        &self,
        _work: &ExplainWork,
        _next_batch: &mut dyn FnMut(usize) -> Option<usize>,
    ) -> Result<Attributions, ExplainError> {
        Err(ExplainError::Forward("this scorer cannot explain".into()))
    }
}

impl Scorer for ServingModel {
    fn score(&self, items: &[&Encoded]) -> Result<Vec<f32>, InferenceError> {
        ServingModel::score(self, items)
    }
    fn num_labels(&self) -> usize {
        ServingModel::num_labels(self)
    }
    fn bucket(&self, tokens: usize) -> usize {
        self.tokenizer.bucket(tokens)
    }
    fn explain(
        &self,
        work: &ExplainWork,
        next_batch: &mut dyn FnMut(usize) -> Option<usize>,
    ) -> Result<Attributions, ExplainError> {
        ServingModel::explain(self, work, next_batch)
    }
}

/// Scores in label-id order, or why there are none.
pub(crate) type ScoreResult = Result<Vec<f32>, InferenceError>;

/// Attributions for an explanation, or why there are none.
pub(crate) type ExplainResult = Result<Attributions, ExplainError>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SubmitError {
    #[error("the inference queue is full ({capacity} texts waiting or in progress); retry later")]
    QueueFull { capacity: usize },
    #[error(
        "{requested} texts exceed the inference queue capacity ({capacity}); send fewer at once"
    )]
    TooMany { requested: usize, capacity: usize },
    #[error("the inference worker has stopped; the predictor is restarting")]
    Stopped,
}

/// Room for texts in the queue, held until their scores are out.
pub(crate) struct Reservation(OwnedSemaphorePermit);

impl Reservation {
    /// Takes room for one text out of the reservation.
    pub fn take_one(&mut self) -> Option<Reservation> {
        self.0.split(1).map(Reservation)
    }
}

struct Job {
    scorer: Arc<dyn Scorer>,
    encoded: Encoded,
    reply: oneshot::Sender<ScoreResult>,
    /// Cancelled when the caller's stream closed.
    caller: Option<CancellationToken>,
    _room: Reservation,
}

impl Job {
    /// Nobody is waiting for this result any more.
    fn abandoned(&self) -> bool {
        self.reply.is_closed() || self.caller.as_ref().is_some_and(|c| c.is_cancelled())
    }
}

struct Explanation {
    scorer: Arc<dyn Scorer>,
    work: ExplainWork,
    reply: oneshot::Sender<ExplainResult>,
    room: Reservation,
}

/// What callers put in the queue.
enum Queued {
    Text(Job),
    Explanation(Explanation),
}

/// What the gathering thread hands to a worker.
enum Work {
    /// Texts of one model version and length bucket.
    Batch(Arc<dyn Scorer>, Vec<Job>),
    Explanation(Explanation),
}

#[derive(Clone)]
pub(crate) struct Batcher {
    tx: mpsc::Sender<Queued>,
    room: Arc<Semaphore>,
    capacity: usize,
    stopped: watch::Receiver<bool>,
}

impl Batcher {
    /// Starts the gathering thread and the workers.
    pub fn start(config: BatcherConfig, metrics: Metrics) -> Self {
        let (tx, rx) = mpsc::channel();
        let (stopped_tx, stopped) = watch::channel(false);
        let capacity = config.queue_capacity.max(1);
        let room = Arc::new(Semaphore::new(capacity));
        let workers = config.workers.max(1);
        let stop = {
            let room = room.clone();
            move || {
                room.close();
                stopped_tx.send_replace(true);
            }
        };
        let stop = Arc::new(stop);
        // Rendezvous: a cut batch waits for a free worker, and texts arriving meanwhile join the
        // next, better sorted pool.
        let (batch_tx, batch_rx) = mpsc::sync_channel::<Work>(0);
        let batch_rx = Arc::new(Mutex::new(batch_rx));
        let mut threads: Vec<(String, Box<dyn FnOnce() + Send>)> = Vec::new();
        {
            let (config, room, metrics) = (config.clone(), room.clone(), metrics.clone());
            threads.push((
                "batcher".into(),
                Box::new(move || gather(rx, &config, &room, &metrics, &batch_tx)),
            ));
        }
        for i in 0..workers {
            let (batch_rx, room, metrics) = (batch_rx.clone(), room.clone(), metrics.clone());
            let own = WorkerThreads {
                batches: config.threads_per_worker.map(|n| n.max(1)),
                explanations: config
                    .threads_per_worker
                    .map(|n| n.max(1) * i32::try_from(workers).unwrap_or(1)),
            };
            let max_batch_tokens = config.max_batch_tokens.max(1);
            threads.push((
                format!("inference-{i}"),
                Box::new(move || {
                    if let Some(n) = own.batches {
                        tch::set_num_threads(n);
                    }
                    Worker {
                        batches: &batch_rx,
                        capacity,
                        max_batch_tokens,
                        threads: own,
                        room: &room,
                        metrics: &metrics,
                    }
                    .run()
                }),
            ));
        }
        tracing::info!(
            workers,
            threads_per_worker = config.threads_per_worker,
            "inference workers"
        );
        for (name, body) in threads {
            let thread_stop = stop.clone();
            let thread_name = name.clone();
            let spawned = std::thread::Builder::new().name(name).spawn(move || {
                if let Err(panic) = catch_unwind(AssertUnwindSafe(body)) {
                    tracing::error!(
                        thread = thread_name,
                        error = common::inference::panic_message(&panic),
                        "an inference thread panicked"
                    );
                }
                thread_stop();
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start an inference thread");
                stop();
            }
        }
        Self {
            tx,
            room,
            capacity,
            stopped,
        }
    }

    /// Resolves when an inference thread has stopped (it should never, while serving).
    pub async fn stopped(&self) {
        let mut stopped = self.stopped.clone();
        let _ = stopped.wait_for(|s| *s).await;
    }

    #[cfg(test)]
    fn is_stopped(&self) -> bool {
        *self.stopped.borrow() || self.room.is_closed()
    }

    /// Texts queued or being scored.
    #[cfg(test)]
    fn depth(&self) -> usize {
        queue_depth(self.capacity, &self.room)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Reserves room for `n` texts, waiting at most `wait` (`None`: as long as it takes).
    pub async fn reserve(
        &self,
        n: usize,
        wait: Option<Duration>,
    ) -> Result<Reservation, SubmitError> {
        if n > self.capacity {
            return Err(SubmitError::TooMany {
                requested: n,
                capacity: self.capacity,
            });
        }
        let n = u32::try_from(n).map_err(|_| SubmitError::TooMany {
            requested: n,
            capacity: self.capacity,
        })?;
        let acquire = self.room.clone().acquire_many_owned(n);
        let permit = match wait {
            None => acquire.await,
            Some(d) => match tokio::time::timeout(d, acquire).await {
                Ok(p) => p,
                Err(_) => {
                    return Err(SubmitError::QueueFull {
                        capacity: self.capacity,
                    })
                }
            },
        };
        permit.map(Reservation).map_err(|_| SubmitError::Stopped)
    }

    /// Queues one tokenized text (with its reserved room) for `scorer`; the receiver gets its
    /// scores. `caller` is cancelled when whoever asked is gone.
    pub fn submit(
        &self,
        room: Reservation,
        scorer: Arc<dyn Scorer>,
        encoded: Encoded,
        caller: Option<CancellationToken>,
    ) -> Result<oneshot::Receiver<ScoreResult>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Queued::Text(Job {
                scorer,
                encoded,
                reply,
                caller,
                _room: room,
            }))
            .map_err(|_| SubmitError::Stopped)?;
        Ok(rx)
    }

    /// Queues one explanation (with its reserved room) for `scorer`. Dropping the receiver
    /// abandons it: it is not computed if it has not started.
    pub fn submit_explanation(
        &self,
        room: Reservation,
        scorer: Arc<dyn Scorer>,
        work: ExplainWork,
    ) -> Result<oneshot::Receiver<ExplainResult>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Queued::Explanation(Explanation {
                scorer,
                work,
                reply,
                room,
            }))
            .map_err(|_| SubmitError::Stopped)?;
        Ok(rx)
    }
}

/// Texts queued or being scored: the room taken out of `capacity`.
fn queue_depth(capacity: usize, room: &Semaphore) -> usize {
    capacity - room.available_permits()
}

/// The gathering loop: pools what is waiting, cuts length-sorted batches, hands them to workers,
/// then at most one explanation. Returns when every submitter is gone (and nothing waits) or no
/// worker is left.
fn gather(
    rx: mpsc::Receiver<Queued>,
    config: &BatcherConfig,
    room: &Semaphore,
    metrics: &Metrics,
    workers: &mpsc::SyncSender<Work>,
) {
    let capacity = config.queue_capacity.max(1);
    let depth = || queue_depth(capacity, room) as i64;
    let mut explanations: std::collections::VecDeque<Explanation> = Default::default();
    loop {
        let mut pending = Vec::new();
        let first = if explanations.is_empty() {
            rx.recv().ok()
        } else {
            rx.try_recv().ok()
        };
        if let Some(first) = first {
            let mut take = |queued| match queued {
                Queued::Text(job) => pending.push(job),
                Queued::Explanation(e) => explanations.push_back(e),
            };
            take(first);
            let deadline = Instant::now() + config.max_wait;
            // Gather up to a few batches' worth: sorting a larger pool by length cuts padding.
            let pool = config.max_batch_size * POOL_BATCHES;
            let mut taken = 1;
            while taken < pool {
                match rx.try_recv() {
                    Ok(queued) => {
                        take(queued);
                        taken += 1;
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => break,
                    Err(TryRecvError::Empty) => {}
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                match rx.recv_timeout(deadline - now) {
                    Ok(queued) => {
                        take(queued);
                        taken += 1;
                    }
                    Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        } else if explanations.is_empty() {
            return;
        }
        metrics.queue_depth.set(depth());
        drop_abandoned(&mut pending, metrics);
        while !pending.is_empty() {
            // One model version at a time; the rest wait for the next round of this loop.
            let scorer = pending[0].scorer.clone();
            let (mut group, rest): (Vec<Job>, Vec<Job>) = pending
                .into_iter()
                .partition(|job| Arc::ptr_eq(&job.scorer, &scorer));
            pending = rest;
            group.sort_by_key(|job| job.encoded.ids.len());
            for bucket in split_by_bucket(group, |job| scorer.bucket(job.encoded.ids.len())) {
                let padded = scorer.bucket(bucket[0].encoded.ids.len());
                for batch in split_by_budget(
                    bucket,
                    config.max_batch_size,
                    config.max_batch_tokens,
                    padded,
                ) {
                    if workers.send(Work::Batch(scorer.clone(), batch)).is_err() {
                        return;
                    }
                }
            }
        }
        while let Some(explanation) = explanations.pop_front() {
            if explanation.reply.is_closed() {
                continue;
            }
            if workers.send(Work::Explanation(explanation)).is_err() {
                return;
            }
            break;
        }
    }
}

/// Cuts length-sorted items into runs of one length bucket each.
pub(crate) fn split_by_bucket<T>(items: Vec<T>, bucket: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut runs: Vec<Vec<T>> = Vec::new();
    let mut current = None;
    for item in items {
        let b = bucket(&item);
        match runs.last_mut() {
            Some(run) if current == Some(b) => run.push(item),
            _ => runs.push(vec![item]),
        }
        current = Some(b);
    }
    runs
}

/// libtorch threads of a worker (`None`: the process setting).
#[derive(Debug, Clone, Copy)]
struct WorkerThreads {
    batches: Option<i32>,
    /// Every worker's share, for an explanation that starts while nothing else waits: it is one
    /// long job (steps × a text plus backward passes) and alone it would leave the other
    /// workers' threads idle. With other work queued it keeps the worker's own threads, so
    /// classify batches beside it are not slowed down.
    explanations: Option<i32>,
}

/// Points evaluated together while other texts wait: a forward and backward pass of about this
/// many texts sits between two classify batches.
const INTERLEAVED_POINTS: usize = 8;

/// Points evaluated together while nothing else waits: one batch for the usual 32 steps (larger
/// products keep two threads busier); a text that arrives meanwhile waits for at most this many
/// on a worker's own threads (another worker takes it when free).
const ALONE_POINTS: usize = 32;

/// An inference worker and what it shares with the others.
#[derive(Clone, Copy)]
struct Worker<'a> {
    /// Where batches and explanations come from (the gathering thread).
    batches: &'a Mutex<mpsc::Receiver<Work>>,
    /// The queue's room in texts, and what is left of it: how many texts wait.
    capacity: usize,
    room: &'a Semaphore,
    max_batch_tokens: usize,
    threads: WorkerThreads,
    metrics: &'a Metrics,
}

impl Worker<'_> {
    /// Scores the batches it is handed until the gathering thread is gone.
    fn run(&self) {
        let (batches, metrics) = (self.batches, self.metrics);
        loop {
            let next = match batches.lock() {
                Ok(receiver) => receiver.recv(),
                Err(poisoned) => poisoned.into_inner().recv(),
            };
            match next {
                Err(_) => return,
                Ok(Work::Batch(scorer, mut batch)) => {
                    drop_abandoned(&mut batch, metrics);
                    if !batch.is_empty() {
                        infer(scorer.as_ref(), batch, metrics);
                    }
                }
                Ok(Work::Explanation(e)) => {
                    let mut deferred = std::collections::VecDeque::from([e]);
                    while let Some(e) = deferred.pop_front() {
                        self.explain(e, &mut deferred);
                    }
                }
            }
            metrics
                .queue_depth
                .set(queue_depth(self.capacity, self.room) as i64);
        }
    }

    /// Computes one explanation on this worker. Before each batch of points, a classify batch that
    /// waits for a worker (none is free) is scored first — one, so that a steady stream of texts
    /// cannot starve the explanation — and while other texts are queued the points go in small
    /// batches: with one worker, texts wait for a few points, not for the whole explanation.
    /// Explanations handed over meanwhile go to `deferred`.
    fn explain(&self, e: Explanation, deferred: &mut std::collections::VecDeque<Explanation>) {
        let Worker {
            batches,
            capacity,
            room,
            max_batch_tokens,
            threads,
            metrics,
        } = *self;
        if e.reply.is_closed() {
            return;
        }
        let started = Instant::now();
        let own_room = e.room.0.num_permits();
        let others_waiting = || queue_depth(capacity, room) > own_room;
        // libtorch's set_num_threads also resizes pools and clears oneDNN's cache: only on a change.
        let current = std::cell::Cell::new(threads.batches);
        let set_threads = |alone: bool| {
            let n = if alone {
                threads.explanations
            } else {
                threads.batches
            };
            if let (Some(n), false) = (n, n == current.get()) {
                tch::set_num_threads(n);
                current.set(Some(n));
            }
        };
        let tokens = e.work.text.encoded.ids.len();
        let budget = common::explain::points_within(max_batch_tokens, tokens);
        let mut next_batch = |remaining: usize| {
            if e.reply.is_closed() {
                return None;
            }
            // `try_lock`: a worker waiting in `recv` holds the lock, and it takes the next batch.
            let waiting = || batches.try_lock().ok()?.try_recv().ok();
            let mut scored_one = false;
            while let Some(work) = waiting() {
                match work {
                    Work::Batch(scorer, mut batch) => {
                        set_threads(false);
                        drop_abandoned(&mut batch, metrics);
                        if !batch.is_empty() {
                            infer(scorer.as_ref(), batch, metrics);
                        }
                        scored_one = true;
                    }
                    Work::Explanation(next) => deferred.push_back(next),
                }
                if scored_one {
                    break;
                }
            }
            let alone = !others_waiting();
            set_threads(alone);
            let points = if alone {
                ALONE_POINTS
            } else {
                INTERLEAVED_POINTS
            };
            Some(points.min(budget).min(remaining))
        };
        // The text's and the baseline's logits come first, before any batch of points is asked for.
        set_threads(!others_waiting());
        let result = e.scorer.explain(&e.work, &mut next_batch);
        set_threads(false);
        if let Err(ExplainError::Abandoned { done, steps }) = result {
            tracing::debug!(done, steps, "explanation abandoned by its caller");
            return;
        }
        metrics
            .explain_seconds
            .observe(started.elapsed().as_secs_f64());
        let _ = e.reply.send(result);
    }
}

/// Removes the texts nobody waits for any more (their room is released with them).
fn drop_abandoned(jobs: &mut Vec<Job>, metrics: &Metrics) {
    let before = jobs.len();
    jobs.retain(|job| !job.abandoned());
    let dropped = before - jobs.len();
    if dropped > 0 {
        metrics.abandoned_texts.inc_by(dropped as u64);
    }
}

/// Cuts items of one length bucket (each padded to `padded` tokens) into batches within the
/// size and padded-token budgets.
pub(crate) fn split_by_budget<T>(
    items: Vec<T>,
    max_size: usize,
    max_tokens: usize,
    padded: usize,
) -> Vec<Vec<T>> {
    let per_batch = (max_tokens / padded.max(1)).clamp(1, max_size.max(1));
    let mut batches = Vec::new();
    let mut current: Vec<T> = Vec::new();
    for item in items {
        if current.len() == per_batch {
            batches.push(std::mem::take(&mut current));
        }
        current.push(item);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Scores one batch; if it fails, scores its texts one by one so only the offending ones fail.
fn infer(scorer: &dyn Scorer, batch: Vec<Job>, metrics: &Metrics) {
    let started = Instant::now();
    let items: Vec<&Encoded> = batch.iter().map(|j| &j.encoded).collect();
    let longest = items.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let result = scorer.score(&items);
    metrics.batch_size.observe(batch.len() as f64);
    metrics
        .batch_tokens
        .observe((scorer.bucket(longest) * batch.len()) as f64);
    metrics
        .inference_seconds
        .observe(started.elapsed().as_secs_f64());
    let l = scorer.num_labels();
    match result {
        Ok(flat) if flat.len() == batch.len() * l => {
            for (i, job) in batch.into_iter().enumerate() {
                let _ = job.reply.send(Ok(flat[i * l..(i + 1) * l].to_vec()));
            }
        }
        Ok(flat) => {
            let e = InferenceError::Shape {
                found: flat.len(),
                texts: batch.len(),
                labels: l,
            };
            isolate(scorer, batch, e, metrics);
        }
        Err(e) => isolate(scorer, batch, e, metrics),
    }
}

fn isolate(scorer: &dyn Scorer, batch: Vec<Job>, error: InferenceError, metrics: &Metrics) {
    if batch.len() == 1 {
        tracing::warn!(error = %error, tokens = batch[0].encoded.ids.len(), "inference failed for a text");
        metrics.inference_failures.inc();
        for job in batch {
            let _ = job.reply.send(Err(error.clone()));
        }
        return;
    }
    tracing::warn!(error = %error, texts = batch.len(), "batch failed; scoring its texts one by one");
    for job in batch {
        infer(scorer, vec![job], metrics);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn batches_hold_one_bucket_within_size_and_padded_token_budgets() {
        let lengths = vec![2, 3, 3, 5, 16, 17, 20, 24, 25, 40];
        let runs = split_by_bucket(lengths, |&n| common::tokenizer::length_bucket(n, 128));
        assert_eq!(
            runs,
            vec![vec![2, 3, 3, 5, 16], vec![17, 20, 24], vec![25], vec![40]],
            "16, 24, 32 and 40 tokens are four buckets"
        );
        // Size budget 3 over a bucket of 5 texts padded to 16.
        assert_eq!(
            split_by_budget(runs[0].clone(), 3, 1000, 16),
            vec![vec![2, 3, 3], vec![5, 16]]
        );
        // 40 padded tokens at most, texts padded to 16: two per batch.
        assert_eq!(
            split_by_budget(runs[0].clone(), 10, 40, 16),
            vec![vec![2, 3], vec![3, 5], vec![16]]
        );
        // A text longer than the budget still gets a batch of its own.
        assert_eq!(split_by_budget(vec![50], 4, 16, 64), vec![vec![50]]);
        assert!(split_by_budget(Vec::<usize>::new(), 4, 16, 16).is_empty());
    }

    /// Fails any batch holding a text of 13 tokens; scores are the text's length.
    struct Picky {
        labels: usize,
    }
    impl Scorer for Picky {
        fn score(&self, items: &[&Encoded]) -> Result<Vec<f32>, InferenceError> {
            if items.iter().any(|e| e.ids.len() == 13) {
                return Err(InferenceError::Forward("index out of range".into()));
            }
            Ok(items
                .iter()
                .flat_map(|e| vec![e.ids.len() as f32; self.labels])
                .collect())
        }
        fn num_labels(&self) -> usize {
            self.labels
        }
        fn bucket(&self, tokens: usize) -> usize {
            common::tokenizer::length_bucket(tokens, 128)
        }
    }

    fn text(tokens: usize) -> Encoded {
        Encoded {
            ids: vec![7; tokens],
            truncated: false,
        }
    }

    #[tokio::test]
    async fn a_bad_text_fails_alone_and_the_rest_of_its_batch_is_answered() {
        let batcher = Batcher::start(
            BatcherConfig {
                max_wait: Duration::from_millis(50),
                ..Default::default()
            },
            Metrics::new(),
        );
        let scorer: Arc<dyn Scorer> = Arc::new(Picky { labels: 2 });
        let mut receivers = Vec::new();
        for tokens in [5, 13, 6, 7] {
            let room = batcher.reserve(1, None).await.unwrap();
            receivers.push(
                batcher
                    .submit(room, scorer.clone(), text(tokens), None)
                    .unwrap(),
            );
        }
        let mut results = Vec::new();
        for rx in receivers {
            results.push(rx.await.unwrap());
        }
        assert_eq!(results[0].as_ref().unwrap(), &vec![5.0, 5.0]);
        assert!(results[1].is_err());
        assert_eq!(results[2].as_ref().unwrap(), &vec![6.0, 6.0]);
        assert_eq!(results[3].as_ref().unwrap(), &vec![7.0, 7.0]);
        // A worker answers a text before it drops the text's room: give it a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while batcher.depth() != 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(batcher.depth(), 0, "room released");
    }

    #[tokio::test]
    async fn texts_of_a_closed_stream_never_reach_the_model() {
        struct Counting(std::sync::atomic::AtomicUsize);
        impl Scorer for Counting {
            fn score(&self, items: &[&Encoded]) -> Result<Vec<f32>, InferenceError> {
                std::thread::sleep(Duration::from_millis(30));
                self.0
                    .fetch_add(items.len(), std::sync::atomic::Ordering::SeqCst);
                Ok(vec![0.5; items.len()])
            }
            fn num_labels(&self) -> usize {
                1
            }
            fn bucket(&self, tokens: usize) -> usize {
                common::tokenizer::length_bucket(tokens, 128)
            }
        }
        let counting = Arc::new(Counting(Default::default()));
        let scorer: Arc<dyn Scorer> = counting.clone();
        let batcher = Batcher::start(
            BatcherConfig {
                max_batch_size: 1,
                ..Default::default()
            },
            Metrics::new(),
        );
        let gone = CancellationToken::new();
        let mut receivers = Vec::new();
        for _ in 0..50 {
            let room = batcher.reserve(1, None).await.unwrap();
            receivers.push(
                batcher
                    .submit(room, scorer.clone(), text(4), Some(gone.clone()))
                    .unwrap(),
            );
        }
        gone.cancel();
        // A fresh caller is answered right away, not after the 50 abandoned texts.
        let started = Instant::now();
        let room = batcher.reserve(1, None).await.unwrap();
        batcher
            .submit(room, scorer.clone(), text(4), None)
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        let scored = counting.0.load(std::sync::atomic::Ordering::SeqCst);
        assert!(scored < 10, "{scored} abandoned texts were scored");
        drop(receivers);
    }

    /// Two workers score two batches at the same time, each with the libtorch threads it was
    /// given: both calls must be inside `score` together (one worker would time out alone).
    #[tokio::test]
    async fn workers_score_batches_side_by_side_on_their_own_threads() {
        use std::sync::{Condvar, Mutex};
        #[derive(Default)]
        struct Meeting {
            inside: Mutex<(usize, usize)>,
            changed: Condvar,
            threads: Mutex<Vec<i32>>,
        }
        impl Scorer for Meeting {
            fn score(&self, items: &[&Encoded]) -> Result<Vec<f32>, InferenceError> {
                self.threads.lock().unwrap().push(tch::get_num_threads());
                let mut inside = self.inside.lock().unwrap();
                inside.0 += 1;
                inside.1 = inside.1.max(inside.0);
                self.changed.notify_all();
                let (mut inside, _) = self
                    .changed
                    .wait_timeout_while(inside, Duration::from_secs(5), |(_, most)| *most < 2)
                    .unwrap();
                inside.0 -= 1;
                Ok(vec![0.5; items.len()])
            }
            fn num_labels(&self) -> usize {
                1
            }
            fn bucket(&self, tokens: usize) -> usize {
                common::tokenizer::length_bucket(tokens, 128)
            }
        }
        let meeting = Arc::new(Meeting::default());
        let scorer: Arc<dyn Scorer> = meeting.clone();
        let batcher = Batcher::start(
            BatcherConfig {
                max_batch_size: 1,
                workers: 2,
                threads_per_worker: Some(1),
                ..Default::default()
            },
            Metrics::new(),
        );
        let mut receivers = Vec::new();
        for _ in 0..2 {
            let room = batcher.reserve(1, None).await.unwrap();
            receivers.push(batcher.submit(room, scorer.clone(), text(4), None).unwrap());
        }
        let started = Instant::now();
        for rx in receivers {
            rx.await.unwrap().unwrap();
        }
        assert_eq!(
            meeting.inside.lock().unwrap().1,
            2,
            "batches ran one at a time"
        );
        assert!(started.elapsed() < Duration::from_secs(4));
        assert_eq!(*meeting.threads.lock().unwrap(), vec![1, 1]);
    }

    /// A scorer whose explanations take `per_point` per integration point, in the batches the
    /// worker asks for, until told to stop; a text's score is how many explanations finished.
    struct SlowExplainer {
        per_point: Duration,
        explained: AtomicUsize,
        points: AtomicUsize,
    }

    impl SlowExplainer {
        fn new(per_point: Duration) -> Self {
            Self {
                per_point,
                explained: AtomicUsize::new(0),
                points: AtomicUsize::new(0),
            }
        }
    }

    impl Scorer for SlowExplainer {
        fn score(&self, items: &[&Encoded]) -> Result<Vec<f32>, InferenceError> {
            Ok(vec![
                self.explained.load(Ordering::SeqCst) as f32;
                items.len()
            ])
        }
        fn num_labels(&self) -> usize {
            1
        }
        fn bucket(&self, tokens: usize) -> usize {
            common::tokenizer::length_bucket(tokens, 128)
        }
        fn explain(
            &self,
            work: &ExplainWork,
            next_batch: &mut dyn FnMut(usize) -> Option<usize>,
        ) -> Result<Attributions, ExplainError> {
            let steps = work.steps;
            let mut done = 0;
            while done < steps {
                let Some(points) = next_batch(steps - done) else {
                    return Err(ExplainError::Abandoned { done, steps });
                };
                let points = points.clamp(1, steps - done);
                std::thread::sleep(self.per_point * points as u32);
                self.points.fetch_add(points, Ordering::SeqCst);
                done += points;
            }
            self.explained.fetch_add(1, Ordering::SeqCst);
            Ok(Attributions {
                logits: vec![0.0],
                baseline_logits: vec![0.0],
                labels: vec![],
                steps,
                batches: 1,
            })
        }
    }

    /// The explanation of a 4-token text's label 0 in `steps` points.
    fn explain_work(steps: usize) -> ExplainWork {
        ExplainWork {
            text: common::tokenizer::Explainable {
                encoded: text(4),
                special: vec![true, false, false, true],
                word_ids: vec![None, Some(0), Some(1), None],
                offsets: vec![(0, 0), (0, 1), (2, 3), (0, 0)],
            },
            steps,
            labels: crate::engine::LabelPick::Given(vec![0]),
            threshold: None,
        }
    }

    /// A caller that goes away (a cancelled RPC drops its receiver) frees the worker: the
    /// explanation stops before its next batch of points instead of computing all of them.
    #[tokio::test]
    async fn an_explanation_nobody_waits_for_stops_at_its_next_batch_of_points() {
        let slow = Arc::new(SlowExplainer::new(Duration::from_millis(5)));
        let scorer: Arc<dyn Scorer> = slow.clone();
        let batcher = Batcher::start(BatcherConfig::default(), Metrics::new());
        let room = batcher.reserve(258, None).await.unwrap();
        let answer = batcher
            .submit_explanation(room, scorer.clone(), explain_work(256))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(answer);
        // All 256 points take 1.3 s; the batch under way when the caller left ends by 0.2 s.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let computed = slow.points.load(Ordering::SeqCst);
        assert!(
            (1..=64).contains(&computed),
            "{computed} of 256 points computed, the caller left after the first batch began"
        );
        // Its room went with it: the whole queue is free again.
        let all = BatcherConfig::default().queue_capacity;
        assert!(batcher
            .reserve(all, Some(Duration::from_millis(100)))
            .await
            .is_ok());
    }

    /// Explanations are slow (steps × a text, plus backward passes): with one worker, a text
    /// that arrives behind a burst of them is scored between two batches of points of the one
    /// being computed — not after it, let alone after the burst.
    #[tokio::test]
    async fn a_text_queued_behind_a_burst_of_explanations_is_not_starved() {
        let slow = Arc::new(SlowExplainer::new(Duration::from_millis(2)));
        let scorer: Arc<dyn Scorer> = slow.clone();
        let batcher = Batcher::start(BatcherConfig::default(), Metrics::new());
        let work = explain_work(32);
        let mut explanations = Vec::new();
        for _ in 0..6 {
            let room = batcher.reserve(34, None).await.unwrap();
            explanations.push(
                batcher
                    .submit_explanation(room, scorer.clone(), work.clone())
                    .unwrap(),
            );
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
        let room = batcher.reserve(1, None).await.unwrap();
        let seen = batcher
            .submit(room, scorer.clone(), text(4), None)
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        assert!(
            seen[0] == 0.0,
            "the text waited for {} explanations",
            seen[0]
        );
        for rx in explanations {
            assert_eq!(rx.await.unwrap().unwrap().steps, 32);
        }
        assert_eq!(slow.explained.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn a_full_queue_pushes_back_and_a_dead_worker_is_reported() {
        struct Panics;
        impl Scorer for Panics {
            fn score(&self, _: &[&Encoded]) -> Result<Vec<f32>, InferenceError> {
                panic!("worker bug")
            }
            fn num_labels(&self) -> usize {
                1
            }
            fn bucket(&self, tokens: usize) -> usize {
                common::tokenizer::length_bucket(tokens, 128)
            }
        }
        let batcher = Batcher::start(
            BatcherConfig {
                queue_capacity: 2,
                ..Default::default()
            },
            Metrics::new(),
        );
        let held = batcher.reserve(2, None).await.unwrap();
        let err = batcher
            .reserve(1, Some(Duration::from_millis(20)))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, SubmitError::QueueFull { capacity: 2 }),
            "{err}"
        );
        assert!(matches!(
            batcher.reserve(3, None).await.err().unwrap(),
            SubmitError::TooMany { .. }
        ));
        drop(held);
        // A scorer that panics outside the model's own guard kills the worker: noticed at once.
        let room = batcher.reserve(1, None).await.unwrap();
        let rx = batcher
            .submit(room, Arc::new(Panics), text(3), None)
            .unwrap();
        assert!(rx.await.is_err(), "no answer from a dead worker");
        tokio::time::timeout(Duration::from_secs(5), batcher.stopped())
            .await
            .expect("stopped() resolves");
        assert!(batcher.is_stopped());
        assert!(matches!(
            batcher.reserve(1, None).await.err().unwrap(),
            SubmitError::Stopped
        ));
    }
}
