//! One training job end to end, shared by `trainer train` and the gRPC service: read the data
//! and base model, fine-tune, evaluate on test (and the baseline when asked), write the report,
//! then publish in recorded, reversible phases — the version's files, its manifest, the alias.
//! Cancellation is honoured at every phase boundary up to the commit point (the alias move, or
//! the manifest when no alias moves); a job that fails or is cancelled before it leaves no
//! version behind.
use std::collections::BTreeMap;

use bytes::Bytes;
use common::checkpoint::{
    self, BaseModel, DatasetInfo, Manifest, CONFIG, TOKENIZER, TOKENIZER_EXTRAS, WEIGHTS,
};
use common::data::{DataError, Dataset, DatasetError};
use common::model::{Pooling, Precision, ProblemType};
use common::registry::{self, Registry};
use common::store::Store;
use tokio::runtime::Handle;

pub use crate::config::{alias_from_request, JobSpec};
use crate::evaluate::{self, EvalError, RunInfo};
use crate::fine_tune::{self, TrainError, TrainOutcome};
use crate::observe::{Observer, Phase};
use crate::report::Report;
use crate::resume::ResumeState;
use crate::start::{self, StartError};
use crate::teachers::{self, Scoring, TeacherError};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Eval(#[from] EvalError),
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
    #[error(transparent)]
    Precision(#[from] common::model::PrecisionError),
    #[error("hyperparameters.problem_type: {0}")]
    Problem(String),
    #[error(transparent)]
    Teachers(#[from] TeacherError),
    #[error(transparent)]
    Start(#[from] StartError),
}

impl From<DataError> for JobError {
    fn from(e: DataError) -> Self {
        JobError::Dataset(e.into())
    }
}

impl JobError {
    pub fn is_cancelled(&self) -> bool {
        matches!(self, JobError::Train(TrainError::Cancelled))
    }

    pub fn is_interrupted(&self) -> bool {
        matches!(self, JobError::Train(TrainError::Interrupted { .. }))
    }
}

pub struct JobOutput {
    pub manifest: Manifest,
    pub report: Report,
}

fn check_cancel(observer: &dyn Observer) -> Result<(), JobError> {
    if observer.cancelled() {
        return Err(TrainError::Cancelled.into());
    }
    Ok(())
}

/// Runs the job on the current (blocking) thread; object-store I/O goes through `handle`.
/// The spec must have passed `validate::check_job`.
pub fn run(
    spec: &JobSpec,
    handle: &Handle,
    observer: &mut dyn Observer,
    resume: Option<ResumeState>,
) -> Result<JobOutput, JobError> {
    let precision = precision(spec)?;
    let mut data = Dataset::load(&spec.data_dir, spec.limits, spec.train.seed)?;
    if let Some(fold) = spec.train.holdout_fold {
        let all = data.train.len();
        data.hold_out(fold);
        tracing::info!(
            fold = %fold,
            kept = data.train.len(),
            held_out = all - data.train.len(),
            "training on every fold but one (an out-of-fold teacher)"
        );
        if data.train.is_empty() {
            return Err(DataError::Invalid {
                path: data.train_file(),
                message: format!("holding out fold {fold} leaves no training examples"),
            }
            .into());
        }
    }
    tracing::info!(
        train = data.train.len(),
        dev = data.dev.len(),
        test = data.test.len(),
        device = common::device::describe(spec.device),
        precision = %precision,
        "data loaded"
    );
    let problem = spec
        .train
        .problem_type
        .resolve(data.is_single_label())
        .map_err(JobError::Problem)?;
    tracing::info!(problem = %problem, labels = data.labels.len(), dataset = %data.name, "task");
    let base = handle.block_on(checkpoint::read_base(&Store::open(&spec.base_model)?))?;
    let (model, tokenizer) = fine_tune::build_model(
        &base,
        &data.labels,
        problem,
        &spec.train,
        spec.device,
        precision,
    )?;
    let init_versions = if spec.train.init_from.is_empty() {
        None
    } else {
        tracing::info!(
            checkpoints = spec.train.init_from.len(),
            "starting from published checkpoints (their weights' mean when several)"
        );
        Some(start::load_mean(
            &model,
            &spec.train.init_from,
            &base.files[TOKENIZER],
            handle,
        )?)
    };
    let teachers = teacher_scores(spec, &data, handle)?;
    let mut run = fine_tune::FineTune::prepare(
        model,
        tokenizer,
        &data.train,
        &data.dev,
        &data.labels,
        &spec.train,
        resume,
    )?;
    let teacher_versions = teachers.as_ref().map(|t| t.versions.clone());
    let teacher_scoring = teachers.as_ref().map(|t| t.scoring.name());
    if let Some(t) = teachers {
        run = run.with_soft_targets(t.scores)?;
    }
    let outcome = run.run(observer)?;

    observer.phase(Phase::Evaluating);
    check_cancel(observer)?;
    let version = spec
        .version
        .clone()
        .unwrap_or_else(registry::new_version_id);
    let hyperparameters = serde_json::json!({
        "train": spec.train,
        "precision": precision,
        "train_examples": data.train.len(),
        "dev_examples": data.dev.len(),
        "test_examples": data.test.len(),
        "best_epoch": outcome.best_epoch,
        "steps": outcome.steps,
        "teacher_versions": teacher_versions,
        "teacher_scoring": teacher_scoring,
        "init_versions": init_versions,
    });
    let baseline = spec
        .run_baseline
        .then(|| evaluate::run_baseline(&data, problem == ProblemType::SingleLabel));
    check_cancel(observer)?;
    let info = RunInfo {
        version: &version,
        device: spec.device,
        hyperparameters: hyperparameters.clone(),
        train_eval_batch_size: spec.train.eval_batch_size,
    };
    // Served the same way for both problem types: a group scores as its best member, with a
    // threshold tuned on dev.
    let groupings = evaluate::tune_groupings(&outcome.dev_scores, &data.dev, &data.labels);
    let report = evaluate::job_report(&outcome, &data, baseline, &info, &groupings)?;
    check_cancel(observer)?;
    if let Some(dir) = &spec.report_dir {
        report.write(dir).map_err(|source| JobError::Report {
            path: dir.display().to_string(),
            source,
        })?;
        tracing::info!(path = %dir.join("report.md").display(), "report written");
    }
    check_cancel(observer)?;

    observer.phase(Phase::Publishing);
    let files = checkpoint_files(&outcome, &base, spec.train.max_length)?;
    let manifest = Manifest {
        format_version: checkpoint::FORMAT_VERSION,
        model_name: spec.model_name.clone(),
        version: version.clone(),
        labels: data.labels.names.clone(),
        problem_type: problem,
        thresholds: outcome.thresholds.per_label.clone(),
        global_threshold: outcome.thresholds.global,
        max_length: spec.train.max_length,
        pooling: spec.train.pooling.as_str().into(),
        base_model: spec.base_model.clone(),
        precision: precision.to_string(),
        metrics: manifest_metrics(&outcome, &data, &report),
        hyperparameters,
        data_sha256: data.sha256.clone(),
        created_at: chrono::Utc::now().to_rfc3339(),
        files: vec![],
        groupings,
        calibration: outcome.calibration.clone(),
        dataset: Some(DatasetInfo {
            name: data.name.clone(),
            format: data.format.extension().into(),
            split_seed: (!data.made_splits.is_empty()).then_some(common::data::SPLIT_SEED),
            made_splits: data.made_splits.clone(),
        }),
    };
    let manifest = publish(spec, handle, observer, &files, manifest)?;
    Ok(JobOutput { manifest, report })
}

/// The teachers' scores on the training texts (their mean, or out of fold), when the job
/// distils; scored in the job's precision, one teacher at a time.
struct TeacherTargets {
    scores: Vec<f32>,
    versions: Vec<String>,
    scoring: Scoring,
}

fn teacher_scores(
    spec: &JobSpec,
    data: &Dataset,
    handle: &Handle,
) -> Result<Option<TeacherTargets>, JobError> {
    let uris = &spec.train.teachers;
    if uris.is_empty() {
        return Ok(None);
    }
    let scoring = handle.block_on(teachers::plan_for(
        uris,
        &data.train_file(),
        data.train_sha256(),
    ))?;
    tracing::info!(
        teachers = uris.len(),
        texts = data.train.len(),
        scoring = scoring.name(),
        weight = spec.train.distill_weight,
        "scoring the training texts with the teachers"
    );
    let (scores, versions) = teachers::soft_targets(
        handle,
        uris,
        &scoring,
        &data.train,
        &data.labels,
        spec.device,
        spec.train.precision,
        spec.train.eval_batch_size,
    )?;
    Ok(Some(TeacherTargets {
        scores,
        versions,
        scoring,
    }))
}

/// The published files: config, weights, tokenizer and its side files, with the tokenizer
/// config's `model_max_length` set to the length the model was trained and is served with, and
/// for mean pooling the Hugging Face modeling code that reproduces it.
fn checkpoint_files(
    outcome: &TrainOutcome,
    base: &BaseModel,
    max_length: usize,
) -> Result<Vec<(String, Bytes)>, JobError> {
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
            let bytes = if extra == "tokenizer_config.json" {
                with_model_max_length(bytes, max_length)
            } else {
                bytes.clone()
            };
            files.push((extra.to_string(), bytes));
        }
    }
    if outcome.model.pooling() == Pooling::Mean {
        for (name, code) in checkpoint::REMOTE_CODE {
            files.push((name.to_string(), Bytes::from_static(code.as_bytes())));
        }
    }
    Ok(files)
}

fn with_model_max_length(bytes: &Bytes, max_length: usize) -> Bytes {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(mut config) if config.is_object() => {
            config["model_max_length"] = max_length.into();
            serde_json::to_vec_pretty(&config)
                .map(Bytes::from)
                .unwrap_or_else(|_| bytes.clone())
        }
        _ => bytes.clone(),
    }
}

fn manifest_metrics(
    outcome: &TrainOutcome,
    data: &Dataset,
    report: &Report,
) -> BTreeMap<String, f64> {
    let targets = common::data::targets(&data.dev, data.labels.len());
    let dev = if report.fine_tuned.single_label {
        common::metrics::evaluate_argmax(&outcome.dev_scores, &targets, &data.labels)
    } else {
        common::metrics::evaluate(
            &outcome.dev_scores,
            &targets,
            &data.labels,
            &outcome.thresholds.per_label,
        )
    };
    let mut metrics = BTreeMap::new();
    if report.fine_tuned.single_label {
        metrics.insert("dev.accuracy".into(), dev.subset_accuracy);
        metrics.insert(
            "test.accuracy".into(),
            report.fine_tuned.at_per_label.subset_accuracy,
        );
    }
    metrics.insert("dev.macro_f1.per_label".into(), dev.macro_f1);
    metrics.insert("dev.micro_f1.per_label".into(), dev.micro_f1);
    let ft = &report.fine_tuned;
    for (key, e) in [
        ("half", &ft.at_half),
        ("global", &ft.at_global),
        ("per_label", &ft.at_per_label),
    ] {
        metrics.insert(format!("test.macro_f1.{key}"), e.macro_f1);
        metrics.insert(format!("test.micro_f1.{key}"), e.micro_f1);
    }
    if let Some(c) = &report.calibration {
        let served = |unscaled: f64, scaled: f64| if c.applied { scaled } else { unscaled };
        metrics.insert(
            "test.expected_calibration_error".into(),
            served(c.ece_unscaled, c.ece_scaled),
        );
        metrics.insert(
            "test.log_loss".into(),
            served(c.test_log_loss_unscaled, c.test_log_loss_scaled),
        );
    }
    for g in &report.served_groups {
        metrics.insert(format!("test.{}_macro_f1.served", g.grouping), g.macro_f1);
    }
    metrics
}

/// Files, then manifest, then alias; anything that fails (or a cancel) before the commit point
/// removes the version again.
fn publish(
    spec: &JobSpec,
    handle: &Handle,
    observer: &mut dyn Observer,
    files: &[(String, Bytes)],
    manifest: Manifest,
) -> Result<Manifest, JobError> {
    let registry = Registry::open(&spec.registry)?;
    let version = manifest.version.clone();
    let steps = || -> Result<Manifest, JobError> {
        let staged = handle.block_on(registry.stage_version(&spec.model_name, files, manifest))?;
        check_cancel(observer)?;
        if spec.alias.is_none() && !observer.commit() {
            return Err(TrainError::Cancelled.into());
        }
        handle.block_on(registry.commit_version(&staged))?;
        tracing::info!(version = %version, uri = %registry.version_store(&spec.model_name, &version).uri(), "checkpoint published");
        if let Some(alias) = &spec.alias {
            if !observer.commit() {
                return Err(TrainError::Cancelled.into());
            }
            handle.block_on(registry.set_alias(&spec.model_name, alias, &version, None))?;
            tracing::info!(alias = %alias, version = %version, "alias moved");
        }
        Ok(staged)
    };
    let result = steps();
    let ours = !matches!(
        result,
        Err(JobError::Registry(
            registry::RegistryError::VersionExists { .. }
        ))
    );
    if let (Err(e), true) = (&result, ours) {
        tracing::warn!(error = %e, version = %version, "publishing did not complete; removing the version");
        if let Err(cleanup) = handle.block_on(registry.delete_version(&spec.model_name, &version)) {
            tracing::error!(error = %cleanup, version = %version, "could not remove the unpublished version");
        }
    }
    result
}

/// Finishes a job whose version was written before a crash: moves the alias when asked.
/// Idempotent: an alias already at the version stays.
pub async fn finish_publishing(
    registry: &Registry,
    model_name: &str,
    alias: Option<&str>,
    version: &str,
) -> Result<(), JobError> {
    if let Some(alias) = alias {
        let current = registry.get_alias(model_name, alias).await?;
        if current.map(|r| r.version).as_deref() != Some(version) {
            registry.set_alias(model_name, alias, version, None).await?;
            tracing::info!(alias = %alias, version = %version, "alias moved after restart");
        }
    }
    Ok(())
}

/// Which precision the spec trains in on its device.
pub fn precision(spec: &JobSpec) -> Result<Precision, JobError> {
    spec.train
        .precision
        .resolve_for_training(spec.device)
        .map_err(JobError::from)
}
