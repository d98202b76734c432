//! Evaluation beside the training loop: a fine-tuned model on test, a published checkpoint on any
//! split, the TF-IDF baseline, and raw scores for cross-checks. Each builds the `Report` it
//! belongs in, so the binary only prints.
use std::path::Path;
use std::time::Instant;

use common::calibration::Calibration;
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
use crate::report::{
    CalibrationReport, Cost, GroupingResult, LabelCalibration, ModelResults, Report, SplitSizes,
    GROUPING_REFERENCES,
};

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
        calibration: outcome
            .calibration
            .as_ref()
            .map(|c| calibration_report(c, &scores, &data::targets(&data.test, l), &data.labels)),
        fine_tuned,
        baseline,
    })
}

/// Calibration of the test scores without and with the per-label maps fitted on dev. The scores
/// given are the served ones: scaled when `calibration.applied`.
pub fn calibration_report(
    calibration: &Calibration,
    test_scores: &[f32],
    test_targets: &[u8],
    labels: &LabelSet,
) -> CalibrationReport {
    use common::calibration as cal;
    let l = labels.len();
    let maps = calibration.scaling();
    let (unscaled, scaled) = if calibration.applied {
        (maps.inverse().apply(test_scores), test_scores.to_vec())
    } else {
        (test_scores.to_vec(), maps.apply(test_scores))
    };
    let column = |scores: &[f32], j: usize| cal::label_column(scores, test_targets, l, j);
    let ece = |(scores, targets): (Vec<f32>, Vec<u8>)| {
        cal::expected_calibration_error(&cal::reliability(&scores, &targets))
    };
    let per_label = labels
        .names
        .iter()
        .enumerate()
        .map(|(j, name)| LabelCalibration {
            label: name.clone(),
            temperature: maps.label(j).0,
            shift: maps.label(j).1,
            ece_unscaled: ece(column(&unscaled, j)),
            ece_scaled: ece(column(&scaled, j)),
        })
        .collect();
    let bins_unscaled = cal::reliability(&unscaled, test_targets);
    let bins_scaled = cal::reliability(&scaled, test_targets);
    CalibrationReport {
        method: calibration.method.clone(),
        applied: calibration.applied,
        reason: calibration.reason.clone(),
        ece_unscaled: cal::expected_calibration_error(&bins_unscaled),
        ece_scaled: cal::expected_calibration_error(&bins_scaled),
        bins_unscaled,
        bins_scaled,
        test_log_loss_unscaled: cal::log_loss(&unscaled, test_targets),
        test_log_loss_scaled: cal::log_loss(&scaled, test_targets),
        dev_log_loss_unscaled: calibration.dev_log_loss,
        dev_log_loss_scaled_cross_fitted: calibration.dev_log_loss_scaled,
        per_label,
    }
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
        calibration: None,
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
        calibration: None,
    })
}

/// The mean of several checkpoints' scores (sigmoids, or softmaxes) for each of `splits`,
/// `[examples × labels]` each: an ensemble's scores. Each checkpoint is loaded once, scores
/// every split and is dropped before the next; one whose labels are not `labels` is refused.
/// Runs on the calling (blocking) thread; checkpoints are read through `handle`.
pub fn mean_scores(
    handle: &tokio::runtime::Handle,
    uris: &[String],
    splits: &[&[Example]],
    labels: &LabelSet,
    device: Device,
    precision: PrecisionChoice,
    batch_size: usize,
) -> Result<MeanScores, EvalError> {
    let mut sums: Vec<Vec<f64>> = splits
        .iter()
        .map(|examples| vec![0f64; examples.len() * labels.len()])
        .collect();
    let texts: Vec<Vec<&str>> = splits.iter().map(|examples| texts(examples)).collect();
    let mut versions = Vec::with_capacity(uris.len());
    for uri in uris {
        let scored = score_checkpoint(handle, uri, &texts, labels, device, precision, batch_size)?;
        for (sum, scores) in sums.iter_mut().zip(&scored.scores) {
            for (s, v) in sum.iter_mut().zip(scores) {
                *s += f64::from(*v);
            }
        }
        versions.push(scored.version);
    }
    let n = uris.len().max(1) as f64;
    Ok(MeanScores {
        scores: sums
            .into_iter()
            .map(|sum| sum.iter().map(|s| (s / n) as f32).collect())
            .collect(),
        versions,
    })
}

/// One checkpoint's scores for each list of texts, and the version `uri` resolved to.
pub(crate) struct CheckpointScores {
    pub scores: Vec<Vec<f32>>,
    pub version: String,
}

/// Loads the checkpoint at `uri` (refused unless its labels are `labels`), scores each list of
/// `texts` (`[texts × labels]` each) and drops it. Runs on the calling (blocking) thread.
pub(crate) fn score_checkpoint(
    handle: &tokio::runtime::Handle,
    uri: &str,
    texts: &[Vec<&str>],
    labels: &LabelSet,
    device: Device,
    precision: PrecisionChoice,
    batch_size: usize,
) -> Result<CheckpointScores, EvalError> {
    let started = Instant::now();
    let loaded = handle.block_on(load_checkpoint(uri, device, precision))?;
    if loaded.manifest.labels != labels.names {
        return Err(EvalError::LabelsDiffer {
            data: uri.to_string(),
            data_labels: labels.len(),
            model_labels: loaded.manifest.labels.len(),
        });
    }
    let mut scores = Vec::with_capacity(texts.len());
    for list in texts {
        let encoded = loaded.tokenizer.encode_all(list)?;
        scores.push(inference::score_all(
            &loaded.model,
            &loaded.tokenizer,
            &encoded,
            batch_size,
        )?);
    }
    tracing::info!(
        checkpoint = %uri,
        version = %loaded.manifest.version,
        texts = texts.iter().map(Vec::len).sum::<usize>(),
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        "scored"
    );
    Ok(CheckpointScores {
        scores,
        version: loaded.manifest.version.clone(),
    })
}

/// An ensemble's figures: thresholds tuned on dev for the mean scores, dev and (when asked)
/// test F1 at them.
#[derive(Debug, Serialize)]
pub struct EnsembleResult {
    pub checkpoints: Vec<String>,
    pub versions: Vec<String>,
    pub dev_macro_f1: f64,
    pub dev_micro_f1_global: f64,
    pub test: Option<EnsembleTest>,
}

#[derive(Debug, Serialize)]
pub struct EnsembleTest {
    pub macro_f1: f64,
    pub micro_f1_per_label: f64,
    pub micro_f1_global: f64,
    pub global_threshold: f32,
}

/// Scores dev (and test when `with_test`) with the mean of `uris`, tunes per-label and global
/// thresholds on dev as training does, and evaluates at them. A multi-label task only.
#[allow(clippy::too_many_arguments)]
pub fn ensemble(
    handle: &tokio::runtime::Handle,
    uris: &[String],
    data_dir: &Path,
    limits: data::SplitLimits,
    with_test: bool,
    device: Device,
    precision: PrecisionChoice,
    batch_size: usize,
) -> Result<EnsembleResult, EvalError> {
    let data = Dataset::load(data_dir, limits, 42)?;
    let l = data.labels.len();
    let splits: Vec<&[Example]> = if with_test {
        vec![&data.dev, &data.test]
    } else {
        vec![&data.dev]
    };
    let mean = mean_scores(
        handle,
        uris,
        &splits,
        &data.labels,
        device,
        precision,
        batch_size,
    )?;
    let dev_scores = &mean.scores[0];
    let dev_targets = data::targets(&data.dev, l);
    let t = metrics::tune_thresholds(dev_scores, &dev_targets, l);
    let at = |scores: &[f32], targets: &[u8], thresholds: &[f32]| {
        metrics::evaluate(scores, targets, &data.labels, thresholds)
    };
    let test = mean.scores.get(1).map(|test| {
        let targets = data::targets(&data.test, l);
        let per_label = at(test, &targets, &t.per_label);
        EnsembleTest {
            macro_f1: per_label.macro_f1,
            micro_f1_per_label: per_label.micro_f1,
            micro_f1_global: at(test, &targets, &vec![t.global; l]).micro_f1,
            global_threshold: t.global,
        }
    });
    Ok(EnsembleResult {
        checkpoints: uris.to_vec(),
        dev_macro_f1: at(dev_scores, &dev_targets, &t.per_label).macro_f1,
        dev_micro_f1_global: at(dev_scores, &dev_targets, &vec![t.global; l]).micro_f1,
        versions: mean.versions,
        test,
    })
}

/// An ensemble's scores, one `[examples × labels]` per split asked for, and the versions its
/// members resolved to.
pub struct MeanScores {
    pub scores: Vec<Vec<f32>>,
    pub versions: Vec<String>,
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
