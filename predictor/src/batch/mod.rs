//! `predictor batch`: score a corpus offline, in parts that are written whole or not at all.
//!
//! 1. The input (a file or a prefix, local or in object storage; remote files are downloaded to
//!    a spool folder first) is read once to check it: columns, every row's text, the share of bad
//!    rows, each file's sha256. A missing column or an unreadable file stops here.
//! 2. The plan (`_job.json` in the output folder) is created by the first process to get there,
//!    with the model version the alias names at that moment; every other shard and every rerun
//!    reads it and scores with that version (or refuses, when the output belongs to another job).
//! 3. Rows are cut into parts of `--rows-per-part`; part p belongs to shard p mod
//!    `--shard-count`; parts already in the output are skipped. A reader thread parses and
//!    tokenizes the next part while inference workers score length-sorted batches of the current
//!    one and a writer labels, encodes and puts finished parts (errors file first, then the part:
//!    each one put, which object storage and `object_store`'s local files make atomic).
//! 4. The process that finds every part present writes `_manifest.json`.
pub(crate) mod input;
pub(crate) mod job;
pub(crate) mod output;
mod progress;
mod score;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use common::checkpoint::{self, CheckpointError};
use common::registry::{ModelRef, RegistryError};
use common::store::{Expect, ObjectInfo, Store, StoreError};
use sha2::Digest;

pub use input::InputFormatChoice;
pub use output::OutputFormat;

use crate::cli::BatchArgs;
use crate::engine::{LoadError, OptionsError, OutputOptions, ServingModel};
use input::{Columns, InputError, InputFormat, Row};
use job::{InputFile, Manifest, PartRecord, Plan, PlannedInput, PlannedModel, PlannedOutput};

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{0}")]
    Args(String),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{0}")]
    Options(#[from] OptionsError),
    #[error("{bad} of {rows} input rows are bad ({share:.2}%, over --max-bad-share {limit}); first ones:\n{first}")]
    TooManyBad {
        bad: u64,
        rows: u64,
        share: f64,
        limit: f64,
        first: String,
    },
    #[error("the input has no rows")]
    Empty,
    #[error("{output} already holds another batch job ({why}); write to a new --output, or rerun with that job's settings")]
    OtherJob { output: String, why: String },
    #[error("the checkpoint {uri} is not the one the job was planned with (manifest sha256 {found}, planned {planned})")]
    ModelChanged {
        uri: String,
        found: String,
        planned: String,
    },
    #[error("{0}")]
    Output(#[from] output::OutputError),
    #[error("scoring failed: {0}")]
    Inference(#[from] common::inference::InferenceError),
    #[error("{0}")]
    Worker(String),
}

/// How a run ended, for the summary and the tests.
#[derive(Debug)]
pub struct Summary {
    pub shard: (u64, u64),
    pub model_version: String,
    pub parts: u64,
    pub parts_scored: u64,
    pub parts_skipped: u64,
    pub rows_scored: u64,
    pub bad_rows: u64,
    pub seconds: f64,
    /// Seconds from the first part read to the last part written.
    pub scoring_seconds: f64,
    /// Whether every part now exists and the manifest was written.
    pub manifest_written: bool,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = self.rows_scored as f64 / self.scoring_seconds.max(1e-9);
        writeln!(
            f,
            "batch shard {}/{} with model version {}",
            self.shard.0, self.shard.1, self.model_version
        )?;
        writeln!(
            f,
            "  parts:     {} scored here, {} already done, {} in the job",
            self.parts_scored, self.parts_skipped, self.parts
        )?;
        writeln!(
            f,
            "  rows:      {} scored, {} bad (see errors/)",
            self.rows_scored, self.bad_rows
        )?;
        writeln!(
            f,
            "  time:      {:.1} s in all, {:.1} s scoring: {rate:.1} rows/s while scoring",
            self.seconds, self.scoring_seconds
        )?;
        write!(
            f,
            "  manifest:  {}",
            if self.manifest_written {
                "written (every part exists)"
            } else {
                "not yet: other shards' parts are missing"
            }
        )
    }
}

/// Files of the input, readable locally, in name order.
struct InputSet {
    uri: String,
    format: InputFormat,
    objects: Vec<ObjectInfo>,
    paths: Vec<PathBuf>,
    /// A spool folder to remove at the end.
    spool: Option<PathBuf>,
}

impl Drop for InputSet {
    fn drop(&mut self) {
        if let Some(dir) = &self.spool {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// What the check pass found.
struct Scan {
    files: Vec<InputFile>,
    rows: u64,
    bad: u64,
    /// Bad rows per part.
    bad_per_part: Vec<u64>,
    first_bad: Vec<String>,
}

pub async fn run(args: BatchArgs) -> Result<Summary, BatchError> {
    let started = Instant::now();
    check_args(&args)?;
    let columns = Columns::new(
        args.text_column.clone(),
        args.id_column.clone(),
        args.max_text_bytes,
    );
    let inputs = open_input(&args).await?;
    let scan = {
        let (paths, names, format, columns) = (
            inputs.paths.clone(),
            inputs
                .objects
                .iter()
                .map(|o| o.name.clone())
                .collect::<Vec<_>>(),
            inputs.format,
            columns.clone(),
        );
        let (rows_per_part, max_bytes) = (args.rows_per_part, args.max_text_bytes);
        tokio::task::spawn_blocking(move || {
            scan(&paths, &names, format, &columns, rows_per_part, max_bytes)
        })
        .await
        .map_err(|e| BatchError::Worker(e.to_string()))??
    };
    if scan.rows == 0 {
        return Err(BatchError::Empty);
    }
    let share = scan.bad as f64 / scan.rows as f64;
    if share > args.max_bad_share {
        return Err(BatchError::TooManyBad {
            bad: scan.bad,
            rows: scan.rows,
            share: share * 100.0,
            limit: args.max_bad_share,
            first: scan.first_bad.join("\n"),
        });
    }
    tracing::info!(
        rows = scan.rows,
        bad = scan.bad,
        files = scan.files.len(),
        "input checked"
    );

    let output = Store::open(&args.output)?;
    let plan = plan(&args, &inputs, &scan, &output).await?;
    tracing::info!(
        version = plan.model.version,
        checkpoint = plan.model.checkpoint,
        parts = plan.output.parts,
        "batch job planned"
    );

    let threads = common::device::init_threads(args.threads);
    let device = common::device::select(&args.device)
        .map_err(|e| BatchError::Args(format!("--device: {e}")))?;
    let precision = args
        .precision
        .resolve(device)
        .map_err(|e| BatchError::Args(format!("--precision: {e}")))?;
    let model =
        ServingModel::load(&Store::open(&plan.model.checkpoint)?, device, precision).await?;
    if model.manifest_sha256 != plan.model.manifest_sha256 {
        return Err(BatchError::ModelChanged {
            uri: plan.model.checkpoint.clone(),
            found: model.manifest_sha256.clone(),
            planned: plan.model.manifest_sha256.clone(),
        });
    }
    let opts = options(&args, &model.manifest)?;

    let done = done_parts(&output, plan.output.format).await?;
    let mine: Vec<u64> = (0..plan.output.parts)
        .filter(|p| p % args.shard_count == args.shard_index)
        .collect();
    let todo: BTreeSet<u64> = mine.iter().copied().filter(|p| !done.contains(p)).collect();
    let todo_rows: u64 = todo
        .iter()
        .map(|&p| part_rows(p, &plan) - scan.bad_per_part[p as usize])
        .sum();
    tracing::info!(
        shard = args.shard_index,
        shards = args.shard_count,
        mine = mine.len(),
        todo = todo.len(),
        rows = todo_rows,
        "parts of this shard"
    );
    let (workers, threads_per_worker) = args.workers(threads, device);
    let job = score::Job {
        files: inputs.paths.clone(),
        names: inputs.objects.iter().map(|o| o.name.clone()).collect(),
        format: inputs.format,
        columns,
        rows_per_part: plan.output.rows_per_part,
        max_text_bytes: plan.output.max_text_bytes,
        output_format: plan.output.format,
        todo: todo.clone(),
        batch_size: args.batch_size.max(1),
        max_batch_tokens: args.max_batch_tokens.max(1),
        workers,
        threads_per_worker,
        opts,
        output: output.clone(),
        progress: progress::Progress::new(todo_rows, args.log_interval()),
    };
    let handle = tokio::runtime::Handle::current();
    let scoring = Instant::now();
    let stats = tokio::task::spawn_blocking(move || score::run(job, &model, &handle))
        .await
        .map_err(|e| BatchError::Worker(e.to_string()))??;
    let scoring_seconds = scoring.elapsed().as_secs_f64();

    let manifest_written = finish(&output, &plan, &scan).await?;
    Ok(Summary {
        shard: (args.shard_index, args.shard_count),
        model_version: plan.model.version,
        parts: plan.output.parts,
        parts_scored: stats.parts,
        parts_skipped: (mine.len() - todo.len()) as u64,
        rows_scored: stats.rows,
        bad_rows: stats.bad,
        seconds: started.elapsed().as_secs_f64(),
        scoring_seconds,
        manifest_written,
    })
}

fn check_args(args: &BatchArgs) -> Result<(), BatchError> {
    if args.shard_index >= args.shard_count {
        return Err(BatchError::Args(format!(
            "--shard-index (JOB_COMPLETION_INDEX) {} must be below --shard-count (BATCH_SHARD_COUNT) {}",
            args.shard_index, args.shard_count
        )));
    }
    if !(0.0..=1.0).contains(&args.max_bad_share) {
        return Err(BatchError::Args(format!(
            "--max-bad-share must be in [0, 1], got {}",
            args.max_bad_share
        )));
    }
    if args.text_column.is_empty() || args.id_column.as_deref() == Some("") {
        return Err(BatchError::Args(
            "--text-column and --id-column must not be empty".into(),
        ));
    }
    if args.id_column.as_deref() == Some(args.text_column.as_str()) {
        return Err(BatchError::Args(
            "--id-column must differ from --text-column".into(),
        ));
    }
    Ok(())
}

/// The asked-for output options, checked against the model.
fn options(args: &BatchArgs, manifest: &checkpoint::Manifest) -> Result<OutputOptions, BatchError> {
    Ok(OutputOptions::new(
        usize::try_from(args.top_k).unwrap_or(usize::MAX),
        true,
        args.threshold,
        manifest.labels.len(),
    )?
    .with_groupings(
        args.groupings.iter().map(String::as_str),
        &manifest.groupings,
    )?)
}

/// Rows of part `p`.
fn part_rows(p: u64, plan: &Plan) -> u64 {
    let first = p * plan.output.rows_per_part;
    (plan.input.rows - first).min(plan.output.rows_per_part)
}

/// Whether a name in an input prefix is data (not `_SUCCESS`, `.hidden`, …).
fn is_data(name: &str) -> bool {
    !name.is_empty()
        && name
            .split('/')
            .all(|part| !part.starts_with('_') && !part.starts_with('.'))
}

async fn open_input(args: &BatchArgs) -> Result<InputSet, BatchError> {
    let uri = args.input.trim_end_matches('/').to_string();
    let store = Store::open(&uri)?;
    let mut objects: Vec<ObjectInfo> = store
        .list_objects("")
        .await?
        .into_iter()
        .filter(|o| is_data(&o.name))
        .collect();
    let store = if objects.is_empty() {
        // Not a folder: one file.
        let (parent, name) = uri.rsplit_once('/').unwrap_or((".", uri.as_str()));
        let parent = Store::open(if parent.is_empty() { "/" } else { parent })?;
        match parent.head(name).await? {
            Some(o) => objects.push(o),
            None => return Err(StoreError::NotFound { uri: uri.clone() }.into()),
        }
        parent
    } else {
        store
    };
    let format = match args.input_format {
        InputFormatChoice::Jsonl => InputFormat::Jsonl,
        InputFormatChoice::Csv => InputFormat::Csv,
        InputFormatChoice::Parquet => InputFormat::Parquet,
        InputFormatChoice::Auto => {
            let formats: BTreeSet<_> = objects
                .iter()
                .filter_map(|o| InputFormat::from_name(&o.name).map(|f| format!("{f:?}")))
                .collect();
            let known: Vec<&ObjectInfo> = objects
                .iter()
                .filter(|o| InputFormat::from_name(&o.name).is_some())
                .collect();
            match (formats.len(), known.first()) {
                (1, Some(first)) => {
                    let format = InputFormat::from_name(&first.name).unwrap_or(InputFormat::Jsonl);
                    objects.retain(|o| InputFormat::from_name(&o.name) == Some(format));
                    format
                }
                (0, _) | (_, None) => {
                    return Err(BatchError::Args(format!(
                        "{uri}: no file ends in .jsonl, .ndjson, .json, .csv or .parquet; name the format with --input-format"
                    )))
                }
                _ => {
                    return Err(BatchError::Args(format!(
                        "{uri} mixes formats ({}); name one with --input-format",
                        formats.into_iter().collect::<Vec<_>>().join(", ")
                    )))
                }
            }
        }
    };
    let mut paths = Vec::with_capacity(objects.len());
    let mut spool = None;
    for (i, o) in objects.iter().enumerate() {
        match store.local_path(&o.name) {
            Some(path) => paths.push(path),
            None => {
                let dir = spool.get_or_insert_with(|| {
                    args.spool_dir
                        .clone()
                        .unwrap_or_else(std::env::temp_dir)
                        .join(format!(
                            "goemotions-batch-{}-{}",
                            std::process::id(),
                            &common::sha256_hex(uri.as_bytes())[..12]
                        ))
                });
                std::fs::create_dir_all(&*dir).map_err(|e| StoreError::Io {
                    uri: dir.display().to_string(),
                    message: e.to_string(),
                })?;
                let path = dir.join(format!("{i:06}"));
                store.download(&o.name, &path).await?;
                paths.push(path);
            }
        }
    }
    tracing::info!(input = uri, files = objects.len(), format = ?format, "input");
    Ok(InputSet {
        uri: store.uri().to_string(),
        format,
        objects,
        paths,
        spool,
    })
}

/// Why a readable row cannot be scored, if it cannot.
fn check_row(row: &Row, max_text_bytes: usize) -> Result<&str, String> {
    let text = row.text.as_deref().map_err(Clone::clone)?;
    if text.trim().is_empty() {
        return Err("empty text".into());
    }
    if text.len() > max_text_bytes {
        return Err(format!(
            "text is {} bytes, over --max-text-bytes {max_text_bytes}",
            text.len()
        ));
    }
    Ok(text)
}

fn scan(
    paths: &[PathBuf],
    names: &[String],
    format: InputFormat,
    columns: &Columns,
    rows_per_part: u64,
    max_text_bytes: usize,
) -> Result<Scan, BatchError> {
    let mut files = Vec::with_capacity(paths.len());
    for (path, name) in paths.iter().zip(names) {
        let (bytes, sha256) = hash_file(path).map_err(|e| InputError::Unreadable {
            file: name.clone(),
            message: e.to_string(),
        })?;
        files.push(InputFile {
            name: name.clone(),
            bytes,
            sha256,
        });
    }
    let mut rows = 0u64;
    let mut bad = 0u64;
    let mut bad_per_part: Vec<u64> = Vec::new();
    let mut first_bad = Vec::new();
    input::read_rows::<BatchError>(paths, names, format, columns, |row| {
        let part = (rows / rows_per_part) as usize;
        if bad_per_part.len() <= part {
            bad_per_part.resize(part + 1, 0);
        }
        if let Err(why) = check_row(&row, max_text_bytes) {
            bad += 1;
            bad_per_part[part] += 1;
            if first_bad.len() < 5 {
                first_bad.push(format!(
                    "  {} line {}: {why}",
                    names[row.place.file], row.place.line
                ));
            }
        }
        rows += 1;
        Ok(())
    })?;
    Ok(Scan {
        files,
        rows,
        bad,
        bad_per_part,
        first_bad,
    })
}

fn hash_file(path: &std::path::Path) -> std::io::Result<(u64, String)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hex::encode(hasher.finalize())))
}

/// The plan in `output`, created with the model version the alias names now when there is none.
async fn plan(
    args: &BatchArgs,
    inputs: &InputSet,
    scan: &Scan,
    output: &Store,
) -> Result<Plan, BatchError> {
    let asked_output = PlannedOutput {
        format: args.output_format,
        rows_per_part: args.rows_per_part,
        parts: scan.rows.div_ceil(args.rows_per_part),
        top_k: if args.top_k == 0 {
            crate::engine::DEFAULT_TOP_K
        } else {
            args.top_k as usize
        },
        threshold: args.threshold,
        groupings: args.groupings.clone(),
        max_text_bytes: args.max_text_bytes,
    };
    let asked_input = PlannedInput {
        uri: inputs.uri.clone(),
        format: inputs.format,
        text_column: args.text_column.clone(),
        id_column: args.id_column.clone(),
        files: scan.files.clone(),
        rows: scan.rows,
        bad_rows: scan.bad,
    };
    let existing = read_plan(output).await?;
    let model = match &existing {
        // Only the model is taken from the existing plan; the rest must match.
        Some(plan) => plan.model.clone(),
        None => {
            let (store, _) = ModelRef::parse(&args.model)?.resolve().await?;
            let (manifest, sha256) = checkpoint::read_manifest_with_sha256(&store).await?;
            // The options are checked against the model before anything is written.
            options(args, &manifest)?;
            PlannedModel {
                asked: args.model.clone(),
                version: manifest.version,
                checkpoint: store.uri().to_string(),
                manifest_sha256: sha256,
            }
        }
    };
    let asked = Plan {
        format: job::PLAN_FORMAT,
        created_at: chrono::Utc::now().to_rfc3339(),
        model,
        input: asked_input,
        output: asked_output,
    };
    if existing.is_none() {
        let bytes = Bytes::from(
            serde_json::to_vec_pretty(&asked).map_err(|e| BatchError::Worker(e.to_string()))?,
        );
        match output.put_if(job::PLAN, bytes, Expect::Absent).await {
            Ok(()) => return Ok(asked),
            Err(StoreError::Conflict { .. }) => {
                tracing::info!("another shard planned the job first")
            }
            Err(e) => return Err(e.into()),
        }
    }
    let found = read_plan(output)
        .await?
        .ok_or_else(|| BatchError::Worker(format!("{}: the plan vanished", output.uri())))?;
    if let Some(why) = found.mismatch(&asked) {
        return Err(BatchError::OtherJob {
            output: output.uri().to_string(),
            why,
        });
    }
    Ok(found)
}

async fn read_plan(output: &Store) -> Result<Option<Plan>, BatchError> {
    match output.get_opt(job::PLAN).await? {
        None => Ok(None),
        Some((bytes, _)) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| BatchError::OtherJob {
                    output: output.uri().to_string(),
                    why: format!("its {} is unreadable: {e}", job::PLAN),
                })
        }
    }
}

async fn done_parts(output: &Store, format: OutputFormat) -> Result<BTreeSet<u64>, BatchError> {
    Ok(output
        .list_children("")
        .await?
        .iter()
        .filter_map(|name| job::part_index(name, format))
        .collect())
}

/// Writes the manifest when every part exists; returns whether it did.
async fn finish(output: &Store, plan: &Plan, scan: &Scan) -> Result<bool, BatchError> {
    let listed = output.list_objects("").await?;
    let sizes: std::collections::BTreeMap<&str, u64> =
        listed.iter().map(|o| (o.name.as_str(), o.size)).collect();
    let mut parts = Vec::with_capacity(plan.output.parts as usize);
    for p in 0..plan.output.parts {
        let name = job::part_name(p, plan.output.format);
        let Some(&bytes) = sizes.get(name.as_str()) else {
            return Ok(false);
        };
        let rows = part_rows(p, plan);
        let bad = scan.bad_per_part.get(p as usize).copied().unwrap_or(0);
        parts.push(PartRecord {
            name,
            first_row: p * plan.output.rows_per_part,
            rows,
            scored: rows - bad,
            bad,
            bytes,
            errors: (bad > 0).then(|| job::errors_name(p)),
        });
    }
    let manifest = Manifest {
        format: job::PLAN_FORMAT,
        finished_at: chrono::Utc::now().to_rfc3339(),
        model: plan.model.clone(),
        input: plan.input.clone(),
        output: plan.output.clone(),
        rows_scored: plan.input.rows - plan.input.bad_rows,
        bad_rows: plan.input.bad_rows,
        parts,
    };
    let bytes =
        serde_json::to_vec_pretty(&manifest).map_err(|e| BatchError::Worker(e.to_string()))?;
    output.put(job::MANIFEST, Bytes::from(bytes)).await?;
    Ok(true)
}
