//! One training job end to end: read the base model and data, fine-tune, tune thresholds,
//! evaluate on test (and the baseline when asked), write the report, publish the checkpoint to
//! the registry and move the alias. Shared by the `trainer train` CLI and the gRPC service.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use common::checkpoint::{self, Manifest, CONFIG, TOKENIZER, TOKENIZER_EXTRAS, WEIGHTS};
use common::data::{self, Example};
use common::labels::LabelSet;
use common::registry::{self, Registry};
use common::store::Store;
use tch::Device;
use tokio::runtime::Handle;

use crate::baseline::Baseline;
use crate::report::{ModelResults, Report};
use crate::train::{self, Observer, Phase, ResumeState, TrainConfig, TrainError};

#[derive(Debug, Clone)]
pub struct JobSpec {
    pub base_model: String,
    pub data_dir: PathBuf,
    pub registry: String,
    pub model_name: String,
    /// Alias to move to the new version (None: publish without an alias).
    pub alias: Option<String>,
    pub train: TrainConfig,
    pub train_limit: Option<usize>,
    pub dev_limit: Option<usize>,
    pub test_limit: Option<usize>,
    pub run_baseline: bool,
    pub report_dir: Option<PathBuf>,
    pub device: Device,
    /// Version id to publish as (default: a new time-based id).
    pub version: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Labels(#[from] common::labels::LabelsError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error(transparent)]
    Store(#[from] common::store::StoreError),
    #[error("publishing failed: {0}")]
    Registry(#[from] registry::RegistryError),
    #[error("writing report to {path}: {source}")]
    Report {
        path: String,
        source: std::io::Error,
    },
}

pub struct JobOutput {
    pub manifest: Manifest,
    pub report: Report,
}

/// Loaded splits and labels.
pub struct Dataset {
    pub labels: LabelSet,
    pub train: Vec<Example>,
    pub dev: Vec<Example>,
    pub test: Vec<Example>,
    pub sha256: BTreeMap<String, String>,
}

impl Dataset {
    /// Loads the three splits, applying stratified limits (seeded) for quick runs.
    pub fn load(dir: &Path, limits: [Option<usize>; 3], seed: u64) -> Result<Self, JobError> {
        let labels = LabelSet::load(dir)?;
        let mut sha256 = BTreeMap::new();
        let mut splits = Vec::new();
        for (split, limit) in data::SPLITS.iter().zip(limits) {
            let path = data::split_path(dir, split);
            let bytes = std::fs::read(&path).map_err(|source| data::DataError::Io {
                path: path.display().to_string(),
                source,
            })?;
            sha256.insert(format!("{split}.tsv"), common::sha256_hex(&bytes));
            let all = data::parse_nonempty(&bytes, labels.len(), &path.display().to_string())?;
            splits.push(match limit {
                Some(n) => data::stratified_subsample(&all, n, seed),
                None => all,
            });
        }
        let test = splits.pop().unwrap_or_default();
        let dev = splits.pop().unwrap_or_default();
        let train = splits.pop().unwrap_or_default();
        Ok(Self {
            labels,
            train,
            dev,
            test,
            sha256,
        })
    }
}

/// Where a job keeps its resumable state; `None` to run without one.
pub struct StateSink {
    pub store: Store,
}

impl StateSink {
    pub const TENSORS: &'static str = "state.safetensors";
    pub const META: &'static str = "state.json";

    pub async fn load(&self) -> Result<Option<ResumeState>, JobError> {
        let Some((meta, _)) = self.store.get_opt(Self::META).await? else {
            return Ok(None);
        };
        let tensors = self.store.get(Self::TENSORS).await?;
        Ok(Some(ResumeState::decode(&tensors, &meta)?))
    }

    pub async fn save(&self, state: &ResumeState) -> Result<(), String> {
        let (tensors, meta) = state.encode().map_err(|e| e.to_string())?;
        self.store
            .put(Self::TENSORS, Bytes::from(tensors))
            .await
            .map_err(|e| e.to_string())?;
        self.store
            .put(Self::META, Bytes::from(meta))
            .await
            .map_err(|e| e.to_string())
    }
}

/// Runs the job on the current (blocking) thread; object-store I/O goes through `handle`.
pub fn run(
    spec: &JobSpec,
    handle: &Handle,
    observer: &mut dyn Observer,
    resume: Option<ResumeState>,
) -> Result<JobOutput, JobError> {
    let seed = spec.train.seed;
    let data = Dataset::load(
        &spec.data_dir,
        [spec.train_limit, spec.dev_limit, spec.test_limit],
        seed,
    )?;
    tracing::info!(
        train = data.train.len(),
        dev = data.dev.len(),
        test = data.test.len(),
        device = common::device::describe(spec.device),
        "data loaded"
    );
    let base = handle.block_on(checkpoint::read_base(&Store::open(&spec.base_model)?))?;
    let (model, tokenizer) = train::build_model(&base, &data.labels, &spec.train, spec.device)?;
    let outcome = train::fine_tune(
        model,
        tokenizer,
        &data.train,
        &data.dev,
        &data.labels,
        &spec.train,
        resume,
        observer,
    )?;

    // Test evaluation.
    observer.phase(Phase::Evaluating);
    let l = data.labels.len();
    let test_texts: Vec<&str> = data.test.iter().map(|e| e.text.as_str()).collect();
    let test_targets = train::targets(&data.test, l);
    let started = Instant::now();
    let encoded = outcome
        .tokenizer
        .encode_all(&test_texts)
        .map_err(TrainError::from)?;
    let test_scores = train::score(
        &outcome.model,
        &outcome.tokenizer,
        &encoded,
        spec.train.eval_batch_size,
    );
    let infer_rate = data.test.len() as f64 / started.elapsed().as_secs_f64().max(1e-9);
    let fine_tuned = ModelResults::evaluate(
        "fine-tuned",
        &test_scores,
        &test_targets,
        &data.labels,
        &outcome.thresholds,
        outcome.global_threshold,
        outcome.train_seconds,
        outcome.samples_per_second,
        infer_rate,
    );
    let baseline = spec
        .run_baseline
        .then(|| run_baseline(&data, &test_targets));

    let version = spec
        .version
        .clone()
        .unwrap_or_else(registry::new_version_id);
    let dev_targets = train::targets(&data.dev, l);
    let dev_eval = common::metrics::evaluate(
        &outcome.dev_scores,
        &dev_targets,
        &data.labels,
        &outcome.thresholds,
    );
    let mut metrics = BTreeMap::new();
    metrics.insert("dev.macro_f1.per_label".into(), dev_eval.macro_f1);
    metrics.insert("dev.micro_f1.per_label".into(), dev_eval.micro_f1);
    for (key, e) in [
        ("half", &fine_tuned.at_half),
        ("global", &fine_tuned.at_global),
        ("per_label", &fine_tuned.at_per_label),
    ] {
        metrics.insert(format!("test.macro_f1.{key}"), e.macro_f1);
        metrics.insert(format!("test.micro_f1.{key}"), e.micro_f1);
    }
    let hyperparameters = serde_json::json!({
        "train": spec.train,
        "train_examples": data.train.len(),
        "dev_examples": data.dev.len(),
        "best_epoch": outcome.best_epoch,
        "steps": outcome.steps,
    });
    let report = Report {
        created_at: chrono::Utc::now().to_rfc3339(),
        split: "test".into(),
        examples: data.test.len(),
        model_version: Some(version.clone()),
        device: common::device::describe(spec.device),
        hyperparameters: hyperparameters.clone(),
        history: outcome.history.clone(),
        best_epoch: Some(outcome.best_epoch),
        fine_tuned,
        baseline,
    };
    if let Some(dir) = &spec.report_dir {
        report.write(dir).map_err(|source| JobError::Report {
            path: dir.display().to_string(),
            source,
        })?;
        tracing::info!(path = %dir.join("report.md").display(), "report written");
    }

    // Publish: every file first, the manifest last, then the alias.
    observer.phase(Phase::Publishing);
    let mut files = vec![
        (
            CONFIG.to_string(),
            Bytes::from(outcome.model.config().to_json()),
        ),
        (
            WEIGHTS.to_string(),
            Bytes::from(outcome.model.to_safetensors().map_err(TrainError::from)?),
        ),
        (TOKENIZER.to_string(), base.files[TOKENIZER].clone()),
    ];
    for extra in TOKENIZER_EXTRAS {
        if let Some(bytes) = base.files.get(extra) {
            files.push((extra.to_string(), bytes.clone()));
        }
    }
    let manifest = Manifest {
        format_version: checkpoint::FORMAT_VERSION,
        model_name: spec.model_name.clone(),
        version: version.clone(),
        labels: data.labels.names.clone(),
        thresholds: outcome.thresholds.clone(),
        global_threshold: outcome.global_threshold,
        max_length: spec.train.max_length,
        pooling: spec.train.pooling.clone(),
        base_model: spec.base_model.clone(),
        metrics,
        hyperparameters,
        data_sha256: data.sha256.clone(),
        created_at: chrono::Utc::now().to_rfc3339(),
        files: vec![],
    };
    let registry = Registry::open(&spec.registry)?;
    let manifest = handle.block_on(registry.publish(&spec.model_name, &files, manifest))?;
    tracing::info!(version = %version, uri = %registry.version_store(&spec.model_name, &version).uri(), "checkpoint published");
    if let Some(alias) = &spec.alias {
        handle.block_on(registry.set_alias(&spec.model_name, alias, &version, None))?;
        tracing::info!(alias = %alias, version = %version, "alias moved");
    }
    Ok(JobOutput { manifest, report })
}

/// Fits the TF-IDF + logistic regression baseline, tunes its thresholds on dev, scores test.
pub fn run_baseline(data: &Dataset, test_targets: &[u8]) -> ModelResults {
    let l = data.labels.len();
    let started = Instant::now();
    let baseline = Baseline::fit(&data.train, l, 5000, 1.0);
    let train_seconds = started.elapsed().as_secs_f64();
    let dev_scores = baseline.predict_proba(&data.dev);
    let dev_targets = train::targets(&data.dev, l);
    let per_label = common::metrics::tune_per_label(&dev_scores, &dev_targets, l);
    let global = common::metrics::tune_global(&dev_scores, &dev_targets);
    let started = Instant::now();
    let test_scores = baseline.predict_proba(&data.test);
    let infer_rate = data.test.len() as f64 / started.elapsed().as_secs_f64().max(1e-9);
    ModelResults::evaluate(
        "baseline",
        &test_scores,
        test_targets,
        &data.labels,
        &per_label,
        global,
        train_seconds,
        data.train.len() as f64 / train_seconds.max(1e-9),
        infer_rate,
    )
}
