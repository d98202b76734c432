//! Evaluation beside the training loop: a fine-tuned model on test, a published checkpoint on any
//! split, the TF-IDF baseline, and raw scores for cross-checks. Each builds the `Report` it
//! belongs in, so the binary only prints.
use std::path::Path;
use std::time::Instant;

use common::checkpoint::{self, Grouping, LoadedModel, ServedGroup};
use common::data::{self, Dataset, DatasetError, Example, GOEMOTIONS};
use common::inference::{self, InferenceError};
use common::labels::{LabelGroup, LabelSet};
use common::metrics;
use common::model::{PrecisionChoice, ProblemType};
use common::registry::{ModelRef, RegistryError};
use common::tokenizer::TokenizerError;
use serde::Serialize;
use tch::Device;

use crate::baseline::Baseline;
use crate::fine_tune::TrainOutcome;
use crate::report::{Cost, GroupingResult, ModelResults, Report, SplitSizes, GROUPING_REFERENCES};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Inference(#[from] InferenceError),
    #[error(transparent)]
    Precision(#[from] common::model::PrecisionError),
    #[error("the labels of {data} ({data_labels}) are not the checkpoint's ({model_labels} labels): evaluate it on the data it was trained for")]
    LabelsDiffer {
        data: String,
        data_labels: usize,
        model_labels: usize,
    },
}

/// A split of the data folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    Train,
    Dev,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::Test => "test",
        }
    }
}

fn texts(examples: &[Example]) -> Vec<&str> {
    examples.iter().map(|e| e.text.as_str()).collect()
}

/// Hyperparameters and identity recorded with a job's report and manifest.
pub struct RunInfo<'a> {
    pub version: &'a str,
    pub device: Device,
    pub hyperparameters: serde_json::Value,
    pub train_eval_batch_size: usize,
}

/// Scores the fine-tuned model on the test split and builds the job's report.
/// The data's groupings as the predictor serves them (for either problem type): a group's score
/// is its best member's, and each group gets a threshold tuned on dev (with the labels'
/// fallbacks).
pub fn tune_groupings(dev_scores: &[f32], dev: &[Example], labels: &LabelSet) -> Vec<Grouping> {
    let l = labels.len();
    let targets = data::targets(dev, l);
    labels
        .groupings
        .iter()
        .filter(|g| !g.groups.is_empty())
        .map(|g| (g.name.as_str(), &g.groups))
        .map(|(name, groups)| {
            let scores = metrics::group_scores(dev_scores, l, groups);
            let truth = metrics::group_targets(&targets, l, groups);
            let t = metrics::tune_thresholds(&scores, &truth, groups.len());
            Grouping {
                name: name.into(),
                groups: groups
                    .iter()
                    .zip(&t.per_label)
                    .map(|(g, &threshold)| ServedGroup {
                        name: g.name.clone(),
                        members: g.members.clone(),
                        threshold,
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Test macro-F1 of each served grouping at its stored thresholds.
fn grouping_results(
    scores: &[f32],
    test: &[Example],
    l: usize,
    groupings: &[Grouping],
    dataset: &str,
) -> Vec<GroupingResult> {
    let targets = data::targets(test, l);
    groupings
        .iter()
        .map(|g| {
            let groups: Vec<LabelGroup> = g
                .groups
                .iter()
                .map(|s| LabelGroup {
                    name: s.name.clone(),
                    members: s.members.clone(),
                })
                .collect();
            let as_labels = LabelSet {
                names: groups.iter().map(|s| s.name.clone()).collect(),
                groupings: vec![],
            };
            let thresholds: Vec<f32> = g.groups.iter().map(|s| s.threshold).collect();
            let e = metrics::evaluate(
                &metrics::group_scores(scores, l, &groups),
                &metrics::group_targets(&targets, l, &groups),
                &as_labels,
                &thresholds,
            );
            GroupingResult {
                grouping: g.name.clone(),
                macro_f1: e.macro_f1,
                per_group: e
                    .per_label
                    .iter()
                    .map(|m| (m.name.clone(), m.f1, m.threshold))
                    .collect(),
                reference_macro_f1: GROUPING_REFERENCES
                    .iter()
                    .find(|(n, _)| dataset == GOEMOTIONS && *n == g.name)
                    .map(|(_, r)| *r),
            }
        })
        .collect()
}

pub fn job_report(
    outcome: &TrainOutcome,
    data: &Dataset,
    baseline: Option<ModelResults>,
    info: &RunInfo,
    groupings: &[Grouping],
) -> Result<Report, EvalError> {
    let l = data.labels.len();
    let started = Instant::now();
    let encoded = outcome.tokenizer.encode_all(&texts(&data.test))?;
    let scores = inference::score_all(
        &outcome.model,
        &outcome.tokenizer,
        &encoded,
        info.train_eval_batch_size,
    )?;
    let cost = Cost {
        train_seconds: outcome.train_seconds,
        train_samples_per_second: outcome.samples_per_second,
        inference_texts_per_second: data.test.len() as f64
            / started.elapsed().as_secs_f64().max(1e-9),
    };
    let single = outcome.model.config().problem() == ProblemType::SingleLabel;
    let fine_tuned = ModelResults::evaluate(
        "fine-tuned",
        &scores,
        &data::targets(&data.test, l),
        &data.labels,
        (!single).then_some(&outcome.thresholds),
        cost,
    );
    Ok(Report {
        dataset: data.name.clone(),
        created_at: chrono::Utc::now().to_rfc3339(),
        split: "test".into(),
        examples: data.test.len(),
        split_sizes: Some(split_sizes(data)),
        model_version: Some(info.version.to_string()),
        device: common::device::describe(info.device),
        precision: outcome.model.precision().to_string(),
        threshold_fallbacks: fallbacks(&data.labels, &outcome.thresholds),
        hyperparameters: info.hyperparameters.clone(),
        history: outcome.history.clone(),
        best_epoch: Some(outcome.best_epoch),
        served_groups: grouping_results(&scores, &data.test, l, groupings, &data.name),
        fine_tuned,
        baseline,
    })
}

fn split_sizes(data: &Dataset) -> SplitSizes {
    let [train, dev, test] = data.sizes();
    SplitSizes { train, dev, test }
}

fn fallbacks(labels: &LabelSet, t: &metrics::Thresholds) -> Vec<(String, String)> {
    labels
        .names
        .iter()
        .zip(&t.fallbacks)
        .filter_map(|(name, f)| f.as_ref().map(|f| (name.clone(), f.to_string())))
        .collect()
}

/// Fits the TF-IDF + logistic regression baseline (one-vs-rest), tunes its thresholds on dev
/// (with the same rules as the fine-tuned model), scores test; for single-label data it is
/// judged by its best label, as the fine-tuned model is.
pub fn run_baseline(data: &Dataset, single_label: bool) -> ModelResults {
    let l = data.labels.len();
    let started = Instant::now();
    let baseline = Baseline::fit(&data.train, l, 5000, 1.0);
    let train_seconds = started.elapsed().as_secs_f64();
    let dev_scores = baseline.predict_proba(&data.dev);
    let thresholds = metrics::tune_thresholds(&dev_scores, &data::targets(&data.dev, l), l);
    let started = Instant::now();
    let test_scores = baseline.predict_proba(&data.test);
    let cost = Cost {
        train_seconds,
        train_samples_per_second: data.train.len() as f64 / train_seconds.max(1e-9),
        inference_texts_per_second: data.test.len() as f64
            / started.elapsed().as_secs_f64().max(1e-9),
    };
    ModelResults::evaluate(
        "baseline",
        &test_scores,
        &data::targets(&data.test, l),
        &data.labels,
        (!single_label).then_some(&thresholds),
        cost,
    )
}

/// The baseline alone, as its own report.
pub fn baseline_report(data: &Dataset) -> Report {
    Report {
        dataset: data.name.clone(),
        created_at: chrono::Utc::now().to_rfc3339(),
        split: "test".into(),
        examples: data.test.len(),
        split_sizes: Some(split_sizes(data)),
        model_version: None,
        device: "cpu".into(),
        precision: "fp64".into(),
        threshold_fallbacks: vec![],
        hyperparameters: serde_json::json!({"max_features": 5000, "C": 1.0}),
        history: vec![],
        best_epoch: None,
        fine_tuned: run_baseline(data, data.is_single_label()),
        baseline: None,
        served_groups: vec![],
    }
}

/// Reads a checkpoint (a version folder or an alias) and builds it on `device`.
pub async fn load_checkpoint(
    uri: &str,
    device: Device,
    precision: PrecisionChoice,
) -> Result<LoadedModel, EvalError> {
    let precision = precision.resolve(device)?;
    let (store, _) = ModelRef::parse(uri)?.resolve().await?;
    let ck = checkpoint::read(&store).await?;
    Ok(ck.load_model(device, precision)?)
}

/// Evaluates a loaded checkpoint on one split at its stored thresholds.
pub fn checkpoint_report(
    loaded: &LoadedModel,
    data_dir: &Path,
    split: Split,
    limit: Option<usize>,
    batch_size: usize,
    device: Device,
) -> Result<Report, EvalError> {
    let (labels, examples) = Dataset::load_split(data_dir, split.name(), limit, 42)?;
    let m = &loaded.manifest;
    if labels.names != m.labels {
        return Err(EvalError::LabelsDiffer {
            data: data_dir.display().to_string(),
            data_labels: labels.len(),
            model_labels: m.labels.len(),
        });
    }
    let started = Instant::now();
    let encoded = loaded.tokenizer.encode_all(&texts(&examples))?;
    let scores = inference::score_all(&loaded.model, &loaded.tokenizer, &encoded, batch_size)?;
    let stored = metrics::Thresholds {
        per_label: m.thresholds.clone(),
        global: m.global_threshold,
        fallbacks: vec![None; m.labels.len()],
    };
    let cost = Cost {
        inference_texts_per_second: examples.len() as f64
            / started.elapsed().as_secs_f64().max(1e-9),
        ..Cost::default()
    };
    let single = m.problem_type == ProblemType::SingleLabel;
    let results = ModelResults::evaluate(
        "checkpoint",
        &scores,
        &data::targets(&examples, labels.len()),
        &labels,
        (!single).then_some(&stored),
        cost,
    );
    let dataset = m
        .dataset
        .as_ref()
        .map(|d| d.name.clone())
        .unwrap_or_else(|| GOEMOTIONS.into());
    Ok(Report {
        served_groups: grouping_results(&scores, &examples, labels.len(), &m.groupings, &dataset),
        dataset,
        created_at: chrono::Utc::now().to_rfc3339(),
        split: split.name().into(),
        examples: examples.len(),
        split_sizes: None,
        model_version: Some(m.version.clone()),
        device: common::device::describe(device),
        precision: loaded.model.precision().to_string(),
        threshold_fallbacks: vec![],
        hyperparameters: m.hyperparameters.clone(),
        history: vec![],
        best_epoch: None,
        fine_tuned: results,
        baseline: None,
    })
}

/// A checkpoint's scores (sigmoids, or a softmax for a single-label model) for `texts`, for cross-checks with other implementations.
#[derive(Debug, Serialize)]
pub struct Scores {
    pub version: String,
    pub labels: Vec<String>,
    pub scores: Vec<Vec<f32>>,
}

pub fn score_texts(loaded: &LoadedModel, texts: &[String]) -> Result<Scores, EvalError> {
    let encoded = loaded.tokenizer.encode_all(texts)?;
    let l = loaded.manifest.labels.len();
    let flat = inference::score_all(&loaded.model, &loaded.tokenizer, &encoded, 32)?;
    Ok(Scores {
        version: loaded.manifest.version.clone(),
        labels: loaded.manifest.labels.clone(),
        scores: flat.chunks(l).map(<[f32]>::to_vec).collect(),
    })
}
