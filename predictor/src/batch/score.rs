//! Scoring one shard's parts with both cores busy: a reader thread parses and tokenizes the
//! next part while inference workers score length-sorted batches of the parts before it, and a
//! writer labels and puts each part once its last batch is scored. Channels are bounded, so at
//! most a few parts are in memory whatever the input's size.
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use common::store::Store;
use common::tokenizer::Encoded;
use tokio::runtime::Handle;

use super::input::{self, Columns, InputError, InputFormat};
use super::output::{self, BadRow, Names, OutputFormat};
use super::progress::Progress;
use super::{check_row, job, BatchError};
use crate::batcher::{split_by_bucket, split_by_budget};
use crate::engine::{self, OutputOptions, ServingModel};

pub(super) struct Job {
    pub files: Vec<PathBuf>,
    pub names: Vec<String>,
    pub format: InputFormat,
    pub columns: Columns,
    pub rows_per_part: u64,
    pub max_text_bytes: usize,
    pub output_format: OutputFormat,
    /// The parts to score.
    pub todo: BTreeSet<u64>,
    pub batch_size: usize,
    pub max_batch_tokens: usize,
    pub workers: usize,
    pub threads_per_worker: Option<i32>,
    pub opts: OutputOptions,
    pub output: Store,
    pub progress: Progress,
}

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Stats {
    pub parts: u64,
    pub rows: u64,
    pub bad: u64,
}

/// A part on its way through: its rows (input row number, id), their tokens, its bad rows, and
/// the scores its batches fill in.
struct Part {
    index: u64,
    rows: Vec<(u64, String)>,
    encoded: Vec<Encoded>,
    bad: Vec<BadRow>,
    scores: Mutex<Vec<f32>>,
    batches_left: AtomicUsize,
}

struct Work {
    part: Arc<Part>,
    items: Vec<usize>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The first failure, which stops every thread.
struct Failure {
    stop: AtomicBool,
    error: Mutex<Option<BatchError>>,
}

impl Failure {
    fn fail(&self, e: BatchError) {
        lock(&self.error).get_or_insert(e);
        self.stop.store(true, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

pub(super) fn run(job: Job, model: &ServingModel, handle: &Handle) -> Result<Stats, BatchError> {
    let failure = Failure {
        stop: AtomicBool::new(false),
        error: Mutex::new(None),
    };
    let stats = Mutex::new(Stats::default());
    let names = names(model, &job.opts);
    let (part_tx, part_rx) = sync_channel::<Arc<Part>>(1);
    let (work_tx, work_rx) = sync_channel::<Work>(job.workers.max(1) * 2);
    let work_rx = Mutex::new(work_rx);
    let (done_tx, done_rx) = sync_channel::<Arc<Part>>(2);
    std::thread::scope(|s| {
        let (job, failure, stats, names, work_rx) = (&job, &failure, &stats, &names, &work_rx);
        std::thread::Builder::new()
            .name("batch-reader".into())
            .spawn_scoped(s, move || {
                if let Err(e) = read_parts(job, model, &part_tx, failure) {
                    failure.fail(e);
                }
            })
            .map_err(|e| failure.fail(BatchError::Worker(e.to_string())))
            .ok();
        for i in 0..job.workers.max(1) {
            let done_tx = done_tx.clone();
            std::thread::Builder::new()
                .name(format!("batch-inference-{i}"))
                .spawn_scoped(s, move || {
                    if let Some(n) = job.threads_per_worker {
                        tch::set_num_threads(n.max(1));
                    }
                    score_batches(job, model, work_rx, &done_tx, failure);
                })
                .map_err(|e| failure.fail(BatchError::Worker(e.to_string())))
                .ok();
        }
        {
            let done_tx = done_tx.clone();
            std::thread::Builder::new()
                .name("batch-batcher".into())
                .spawn_scoped(s, move || {
                    cut_batches(job, model, part_rx, &work_tx, &done_tx, failure)
                })
                .map_err(|e| failure.fail(BatchError::Worker(e.to_string())))
                .ok();
        }
        drop(done_tx);
        for part in done_rx {
            if failure.stopped() {
                break;
            }
            match write_part(job, model, names, &part, handle) {
                Ok(()) => {
                    let mut stats = lock(stats);
                    stats.parts += 1;
                    stats.rows += part.rows.len() as u64;
                    stats.bad += part.bad.len() as u64;
                }
                Err(e) => {
                    failure.fail(e);
                    break;
                }
            }
        }
    });
    job.progress.finish();
    if let Some(e) = lock(&failure.error).take() {
        return Err(e);
    }
    let stats = *lock(&stats);
    Ok(stats)
}

/// The label and asked-for grouping names the output is written with.
fn names(model: &ServingModel, opts: &OutputOptions) -> Names {
    Names {
        labels: model.manifest.labels.clone(),
        groupings: opts
            .groupings
            .iter()
            .flatten()
            .filter_map(|&g| model.manifest.groupings.get(g))
            .map(|g| {
                (
                    g.name.clone(),
                    g.groups.iter().map(|group| group.name.clone()).collect(),
                )
            })
            .collect(),
    }
}

/// Why the reader stopped early.
enum ReadEnd {
    /// Past the last part to score, or told to stop.
    Done,
    Failed(BatchError),
}

impl From<InputError> for ReadEnd {
    fn from(e: InputError) -> Self {
        ReadEnd::Failed(e.into())
    }
}

/// Reads the input, gathers the rows of the parts to score and tokenizes them, one part at a
/// time.
fn read_parts(
    job: &Job,
    model: &ServingModel,
    tx: &SyncSender<Arc<Part>>,
    failure: &Failure,
) -> Result<(), BatchError> {
    let Some(&last) = job.todo.last() else {
        return Ok(());
    };
    let mut row_number = 0u64;
    let mut current: Option<Part> = None;
    let send = |part: Part| tx.send(Arc::new(part)).map_err(|_| ReadEnd::Done);
    let read =
        input::read_rows::<ReadEnd>(&job.files, &job.names, job.format, &job.columns, |row| {
            let r = row_number;
            row_number += 1;
            let p = r / job.rows_per_part;
            if p > last || failure.stopped() {
                return Err(ReadEnd::Done);
            }
            if current.as_ref().is_some_and(|c| c.index != p) {
                if let Some(done) = current.take() {
                    send(done)?;
                }
            }
            if !job.todo.contains(&p) {
                return Ok(());
            }
            let part = current.get_or_insert_with(|| Part {
                index: p,
                rows: Vec::new(),
                encoded: Vec::new(),
                bad: Vec::new(),
                scores: Mutex::new(Vec::new()),
                batches_left: AtomicUsize::new(0),
            });
            let checked = check_row(&row, job.max_text_bytes).and_then(|text| {
                model
                    .encode(text)
                    .map_err(|e| format!("cannot tokenize: {e}"))
            });
            match checked {
                Ok(encoded) => {
                    part.rows.push((r, row.id.unwrap_or_else(|| r.to_string())));
                    part.encoded.push(encoded);
                }
                Err(error) => part.bad.push(BadRow {
                    row: r,
                    file: job.names.get(row.place.file).cloned().unwrap_or_default(),
                    line: row.place.line,
                    id: row.id,
                    error,
                }),
            }
            Ok(())
        });
    match read {
        Ok(()) | Err(ReadEnd::Done) => {}
        Err(ReadEnd::Failed(e)) => return Err(e),
    }
    if let Some(part) = current.take() {
        if !failure.stopped() {
            let _ = tx.send(Arc::new(part));
        }
    }
    Ok(())
}

/// Length-sorted batches of each part, each within `batch_size` texts and `max_batch_tokens`
/// padded tokens and one length bucket, handed to the workers.
fn cut_batches(
    job: &Job,
    model: &ServingModel,
    parts: Receiver<Arc<Part>>,
    work: &SyncSender<Work>,
    done: &SyncSender<Arc<Part>>,
    failure: &Failure,
) {
    for part in parts {
        if failure.stopped() {
            return;
        }
        let lengths: Vec<usize> = part.encoded.iter().map(|e| e.ids.len()).collect();
        let batches = batches(&lengths, job.batch_size, job.max_batch_tokens, |n| {
            model.tokenizer.bucket(n)
        });
        *lock(&part.scores) = vec![0.0; part.rows.len() * model.num_labels()];
        part.batches_left.store(batches.len(), Ordering::SeqCst);
        if batches.is_empty() {
            if done.send(part).is_err() {
                return;
            }
            continue;
        }
        for items in batches {
            let part = part.clone();
            if work.send(Work { part, items }).is_err() {
                return;
            }
        }
    }
}

/// Indices in ascending length order, cut where the length bucket changes or a batch is full:
/// the server's batcher's cuts (`split_by_bucket`, `split_by_budget`) over a whole part.
fn batches(
    lengths: &[usize],
    batch_size: usize,
    max_batch_tokens: usize,
    bucket: impl Fn(usize) -> usize,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    split_by_bucket(order, |&i| bucket(lengths[i]))
        .into_iter()
        .flat_map(|run| {
            let padded = bucket(lengths[run[0]]);
            split_by_budget(run, batch_size, max_batch_tokens, padded)
        })
        .collect()
}

fn score_batches(
    job: &Job,
    model: &ServingModel,
    work: &Mutex<Receiver<Work>>,
    done: &SyncSender<Arc<Part>>,
    failure: &Failure,
) {
    let labels = model.num_labels();
    loop {
        let next = lock(work).recv();
        let Ok(Work { part, items }) = next else {
            return;
        };
        if failure.stopped() {
            continue;
        }
        let encoded: Vec<&Encoded> = items.iter().map(|&i| &part.encoded[i]).collect();
        match model.score(&encoded) {
            Ok(flat) => {
                let mut scores = lock(&part.scores);
                for (k, &i) in items.iter().enumerate() {
                    scores[i * labels..(i + 1) * labels]
                        .copy_from_slice(&flat[k * labels..(k + 1) * labels]);
                }
            }
            Err(e) => {
                failure.fail(e.into());
                continue;
            }
        }
        job.progress.add(items.len() as u64);
        if part.batches_left.fetch_sub(1, Ordering::SeqCst) == 1 && done.send(part).is_err() {
            return;
        }
    }
}

/// Labels a scored part and puts it: its errors file first, then the part itself, so that a
/// part that exists always has its errors beside it.
fn write_part(
    job: &Job,
    model: &ServingModel,
    names: &Names,
    part: &Part,
    handle: &Handle,
) -> Result<(), BatchError> {
    let labels = model.num_labels();
    let scores = lock(&part.scores);
    let rows: Vec<output::Scored> = part
        .rows
        .iter()
        .zip(&part.encoded)
        .enumerate()
        .map(|(i, ((row, id), encoded))| output::Scored {
            row: *row,
            id: id.clone(),
            result: engine::label(
                &scores[i * labels..(i + 1) * labels],
                model.decision(),
                &model.manifest.groupings,
                encoded,
                job.opts,
            ),
        })
        .collect();
    drop(scores);
    if !part.bad.is_empty() {
        let bytes = output::encode_errors(&part.bad)?;
        handle.block_on(
            job.output
                .put(&job::errors_name(part.index), Bytes::from(bytes)),
        )?;
    }
    let bytes = output::encode(job.output_format, names, &rows)?;
    handle.block_on(job.output.put(
        &job::part_name(part.index, job.output_format),
        Bytes::from(bytes),
    ))?;
    tracing::debug!(
        part = part.index,
        rows = rows.len(),
        bad = part.bad.len(),
        "part written"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_sorted_bucketed_and_bounded_by_texts_and_tokens() {
        let lengths = [30, 5, 6, 31, 7, 64, 5];
        let bucket = |n: usize| n.div_ceil(8) * 8;
        let got = batches(&lengths, 2, 1000, bucket);
        assert_eq!(got, vec![vec![1, 6], vec![2, 4], vec![0, 3], vec![5]]);
        // 64-token texts: at most 100 / 64 = 1 per batch.
        let got = batches(&[64, 64, 64], 8, 100, bucket);
        assert_eq!(got.len(), 3);
        let mut all: Vec<usize> = batches(&lengths, 3, 64, bucket).concat();
        all.sort();
        assert_eq!(all, (0..lengths.len()).collect::<Vec<_>>());
    }
}
