//! A loaded model version and the post-processing of its scores: the labels that pass their
//! thresholds and the top-k, as plain data (the service turns them into proto messages).
use common::checkpoint::{self, Grouping, Manifest};
use common::explain::{self, Attributions, ExplainError};
use common::inference::{self, InferenceError};
use common::model::{BertClassifier, Precision, ProblemType};
use common::registry::RegistryError;
use common::store::Store;
use common::tokenizer::{Encoded, Explainable, TextTokenizer, TokenizerError};
use tch::Device;

pub const DEFAULT_TOP_K: usize = 3;

/// One model version ready to serve. Requests hold an `Arc` to the version they started on.
pub struct ServingModel {
    pub model: ReadOnlyModel,
    pub tokenizer: TextTokenizer,
    pub manifest: Manifest,
    /// Where it was loaded from.
    pub source_uri: String,
    /// sha256 of its manifest: with `source_uri`, the identity of what is served.
    pub manifest_sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("loading the model failed: {0}")]
    Task(String),
}

/// A loaded classifier that is only ever read: shared by the inference workers.
pub struct ReadOnlyModel(BertClassifier);

// SAFETY: a ReadOnlyModel gives out only `&BertClassifier`, and nothing reachable through it
// mutates the model: after loading, its tensors are only read by forward passes under no_grad
// (libtorch allows concurrent reads of a tensor). tch marks Tensor !Sync only because it cannot
// know this. The rest of ServingModel is Sync on its own.
unsafe impl Sync for ReadOnlyModel {}

impl std::ops::Deref for ReadOnlyModel {
    type Target = BertClassifier;
    fn deref(&self) -> &BertClassifier {
        &self.0
    }
}

impl ServingModel {
    /// Reads and verifies a checkpoint (every file's sha256, config against weights, labels
    /// against the head, max length against the position table) and builds it on `device`.
    pub async fn load(
        store: &Store,
        device: Device,
        precision: Precision,
    ) -> Result<Self, LoadError> {
        let ck = checkpoint::read(store).await?;
        let manifest_sha256 = ck.manifest_sha256.clone();
        let source_uri = store.uri().to_string();
        let loaded = tokio::task::spawn_blocking(move || ck.load_model(device, precision))
            .await
            .map_err(|e| LoadError::Task(e.to_string()))??;
        Ok(Self {
            model: ReadOnlyModel(loaded.model),
            tokenizer: loaded.tokenizer,
            manifest: loaded.manifest,
            source_uri,
            manifest_sha256,
        })
    }

    pub fn version(&self) -> &str {
        &self.manifest.version
    }

    pub fn num_labels(&self) -> usize {
        self.manifest.labels.len()
    }

    pub fn encode(&self, text: &str) -> Result<Encoded, TokenizerError> {
        self.tokenizer.encode(text)
    }

    /// How this model turns scores into labels.
    pub fn decision(&self) -> Decision<'_> {
        match self.manifest.problem_type {
            ProblemType::MultiLabel => Decision::Thresholds(&self.manifest.thresholds),
            ProblemType::SingleLabel => Decision::Best,
        }
    }

    /// Scores of a batch, row-major `[items × labels]`.
    pub fn score(&self, items: &[&Encoded]) -> Result<Vec<f32>, InferenceError> {
        inference::predict_batch(&self.model, &self.tokenizer, items)
    }
}

/// Which labels a worker explains.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LabelPick {
    /// These label ids, in this order.
    Given(Vec<usize>),
    /// The labels the model predicts for the text (at `ExplainWork::threshold` when given),
    /// highest score first and at most `max`; its best label when none is predicted.
    Predicted { max: usize },
}

/// An explanation on its way to a worker.
#[derive(Debug, Clone)]
pub(crate) struct ExplainWork {
    pub text: Explainable,
    pub steps: usize,
    pub labels: LabelPick,
    /// The threshold the caller asked for, if any (also decides `ExplainedLabel::predicted`).
    pub threshold: Option<f32>,
}

impl ServingModel {
    /// Integrated gradients for one text (on an inference worker); `next_batch` says how many
    /// of the remaining points to evaluate next.
    pub(crate) fn explain(
        &self,
        work: &ExplainWork,
        next_batch: &mut dyn FnMut(usize) -> Option<usize>,
    ) -> Result<Attributions, ExplainError> {
        explain::integrated_gradients(
            &self.model,
            &work.text,
            self.tokenizer.pad_id(),
            work.steps,
            next_batch,
            |logits| {
                Ok(match &work.labels {
                    LabelPick::Given(ids) => ids.clone(),
                    LabelPick::Predicted { max } => {
                        let labelled = self.label_logits(logits, &work.text, work.threshold);
                        let predicted: Vec<usize> =
                            labelled.labels.iter().map(|s| s.id).take(*max).collect();
                        if predicted.is_empty() {
                            labelled.top_k.iter().map(|s| s.id).collect()
                        } else {
                            predicted
                        }
                    }
                })
            },
        )
    }

    /// The labels these logits get, as Classify decides them, with the best one as top-1 and
    /// every label's score.
    pub(crate) fn label_logits(
        &self,
        logits: &[f32],
        text: &Explainable,
        threshold: Option<f32>,
    ) -> Labelled {
        let scores = self.model.probabilities(logits);
        let opts = OutputOptions {
            top_k: 1,
            all_scores: true,
            threshold,
            ..Default::default()
        };
        label(&scores, self.decision(), &[], &text.encoded, opts)
    }
}

/// A caller's global threshold, if any, must lie in (0, 1).
pub(crate) fn check_threshold(threshold: Option<f32>) -> Result<(), OptionsError> {
    match threshold {
        Some(t) if !(t > 0.0 && t < 1.0) => Err(OptionsError::Threshold(t)),
        _ => Ok(()),
    }
}

/// What the caller asked for besides the scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutputOptions {
    pub top_k: usize,
    pub all_scores: bool,
    /// One threshold for every label instead of the per-label ones.
    pub threshold: Option<f32>,
    /// Indices into the manifest's groupings to answer, in order (at most `MAX_GROUPINGS`).
    pub groupings: [Option<usize>; MAX_GROUPINGS],
}

/// Groupings one request can ask for.
pub const MAX_GROUPINGS: usize = 4;

impl Default for OutputOptions {
    fn default() -> Self {
        Self {
            top_k: DEFAULT_TOP_K,
            all_scores: false,
            threshold: None,
            groupings: [None; MAX_GROUPINGS],
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OptionsError {
    #[error("threshold must be in (0, 1), got {0}")]
    Threshold(f32),
    #[error("top_k must be at most {max}, got {got}")]
    TopK { max: usize, got: usize },
    #[error("unknown grouping {0}; ask for ekman or sentiment")]
    UnknownGrouping(String),
    #[error("the served model has no grouping {name:?}; {available}")]
    NoGrouping { name: String, available: String },
    #[error("at most {MAX_GROUPINGS} groupings per request")]
    TooManyGroupings,
}

impl OutputOptions {
    /// Checks caller-supplied options; `top_k` 0 means the default.
    pub fn new(
        top_k: usize,
        all_scores: bool,
        threshold: Option<f32>,
        num_labels: usize,
    ) -> Result<Self, OptionsError> {
        check_threshold(threshold)?;
        let top_k = if top_k == 0 { DEFAULT_TOP_K } else { top_k };
        if top_k > num_labels {
            return Err(OptionsError::TopK {
                max: num_labels,
                got: top_k,
            });
        }
        Ok(Self {
            top_k,
            all_scores,
            threshold,
            groupings: [None; MAX_GROUPINGS],
        })
    }

    /// Adds the named groupings (as the manifest names them) to answer.
    pub fn with_groupings<'a>(
        mut self,
        names: impl Iterator<Item = &'a str>,
        stored: &[Grouping],
    ) -> Result<Self, OptionsError> {
        let mut slots = self.groupings.iter_mut();
        for name in names {
            let index = stored
                .iter()
                .position(|g| g.name == name)
                .ok_or_else(|| OptionsError::NoGrouping {
                    name: name.to_string(),
                    available: if stored.is_empty() {
                        "it serves none (its data had no groupings, or it was trained before groupings were stored)".into()
                    } else {
                        format!(
                            "it serves {}",
                            stored
                                .iter()
                                .map(|g| format!("{:?}", g.name))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    },
                })?;
            *slots.next().ok_or(OptionsError::TooManyGroupings)? = Some(index);
        }
        Ok(self)
    }
}

/// A label with its score.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub id: usize,
    pub score: f32,
}

/// One text's answer, before it becomes a proto message.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Labelled {
    /// Labels at or above their threshold, highest score first.
    pub labels: Vec<Scored>,
    /// The `top_k` best labels, highest first.
    pub top_k: Vec<Scored>,
    /// All scores in label-id order, when asked for.
    pub scores: Vec<f32>,
    pub truncated: bool,
    pub num_tokens: usize,
    /// The groupings asked for, in order.
    pub groups: Vec<LabelledGrouping>,
}

/// One grouping's answer: predicted groups (highest first) and every group's score, with `id`
/// the group's index in its grouping.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledGrouping {
    pub grouping: usize,
    pub labels: Vec<Scored>,
    pub scores: Vec<Scored>,
}

/// How a model decides which labels a text carries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision<'a> {
    /// Multi-label: every label whose score reaches its threshold (in label-id order).
    Thresholds(&'a [f32]),
    /// Single-label: the best label (when a caller's threshold is given, only if it reaches it).
    Best,
}

/// Labels a text's scores (label-id order) by the model's decision rule, or with the caller's
/// threshold.
pub fn label(
    scores: &[f32],
    decision: Decision<'_>,
    groupings: &[Grouping],
    encoded: &Encoded,
    opts: OutputOptions,
) -> Labelled {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let scored = |i: usize| Scored {
        id: i,
        score: scores[i],
    };
    let labels: Vec<Scored> = match decision {
        Decision::Thresholds(thresholds) => order
            .iter()
            .copied()
            .filter(|&i| scores[i] >= opts.threshold.unwrap_or(thresholds[i]))
            .map(scored)
            .collect(),
        Decision::Best => order
            .first()
            .copied()
            .filter(|&i| opts.threshold.is_none_or(|t| scores[i] >= t))
            .map(scored)
            .into_iter()
            .collect(),
    };
    Labelled {
        labels,
        top_k: order.iter().take(opts.top_k).copied().map(scored).collect(),
        scores: if opts.all_scores {
            scores.to_vec()
        } else {
            vec![]
        },
        truncated: encoded.truncated,
        num_tokens: encoded.ids.len(),
        groups: opts
            .groupings
            .iter()
            .flatten()
            .filter_map(|&g| groupings.get(g).map(|grouping| (g, grouping)))
            .map(|(g, grouping)| label_grouping(scores, g, grouping))
            .collect(),
    }
}

fn label_grouping(scores: &[f32], index: usize, grouping: &Grouping) -> LabelledGrouping {
    let all: Vec<Scored> = grouping
        .groups
        .iter()
        .enumerate()
        .map(|(id, g)| Scored {
            id,
            score: common::metrics::group_score(scores, &g.members),
        })
        .collect();
    let mut labels: Vec<Scored> = all
        .iter()
        .filter(|s| s.score >= grouping.groups[s.id].threshold)
        .cloned()
        .collect();
    labels.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
    LabelledGrouping {
        grouping: index,
        labels,
        scores: all,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(n: usize, truncated: bool) -> Encoded {
        Encoded {
            ids: vec![1; n],
            truncated,
        }
    }

    #[test]
    fn labels_pass_their_own_threshold_and_come_highest_first() {
        let scores = [0.2, 0.9, 0.5, 0.05];
        let thresholds = [0.1, 0.95, 0.4, 0.5];
        let r = label(
            &scores,
            Decision::Thresholds(&thresholds),
            &[],
            &encoded(7, true),
            OutputOptions::default(),
        );
        let ids: Vec<usize> = r.labels.iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![2, 0], "label 1 (0.9) misses its 0.95 threshold");
        let top: Vec<usize> = r.top_k.iter().map(|s| s.id).collect();
        assert_eq!(top, vec![1, 2, 0]);
        assert!(r.scores.is_empty());
        assert!(r.truncated && r.num_tokens == 7);

        let global = OutputOptions::new(1, true, Some(0.15), 4).unwrap();
        let r = label(
            &scores,
            Decision::Thresholds(&thresholds),
            &[],
            &encoded(3, false),
            global,
        );
        let ids: Vec<usize> = r.labels.iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![1, 2, 0]);
        assert_eq!(r.top_k.len(), 1);
        assert_eq!(r.scores, scores);
    }

    #[test]
    fn groups_score_as_their_best_member_and_pass_their_own_threshold() {
        use common::checkpoint::ServedGroup;
        let group = |name: &str, members: Vec<usize>, threshold: f32| ServedGroup {
            name: name.into(),
            members,
            threshold,
        };
        let stored = vec![
            Grouping {
                name: "ekman".into(),
                groups: vec![
                    group("joy", vec![0, 1], 0.6),
                    group("sadness", vec![2], 0.3),
                ],
            },
            Grouping {
                name: "sentiment".into(),
                groups: vec![group("positive", vec![0, 1, 2], 0.99)],
            },
        ];
        let opts = OutputOptions::default()
            .with_groupings(["sentiment", "ekman"].into_iter(), &stored)
            .unwrap();
        let r = label(
            &[0.2, 0.7, 0.4],
            Decision::Thresholds(&[0.5; 3]),
            &stored,
            &encoded(3, false),
            opts,
        );
        assert_eq!(r.groups.len(), 2);
        assert_eq!(r.groups[0].grouping, 1, "in the order asked for");
        assert!(r.groups[0].labels.is_empty(), "0.7 misses 0.99");
        let ekman = &r.groups[1];
        assert_eq!(
            ekman.scores.iter().map(|s| s.score).collect::<Vec<_>>(),
            vec![0.7, 0.4]
        );
        assert_eq!(
            ekman.labels.iter().map(|s| s.id).collect::<Vec<_>>(),
            vec![0, 1]
        );
        let err = OutputOptions::default()
            .with_groupings(["nope"].into_iter(), &stored)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"nope\"") && err.contains("\"ekman\", \"sentiment\""),
            "{err}"
        );
    }

    #[test]
    fn a_single_label_model_answers_its_best_label() {
        let scores = [0.2, 0.5, 0.3];
        let r = label(
            &scores,
            Decision::Best,
            &[],
            &encoded(3, false),
            OutputOptions::default(),
        );
        assert_eq!(r.labels, vec![Scored { id: 1, score: 0.5 }]);
        let strict = OutputOptions::new(0, false, Some(0.6), 3).unwrap();
        let r = label(&scores, Decision::Best, &[], &encoded(3, false), strict);
        assert!(r.labels.is_empty(), "0.5 misses the caller's 0.6");
    }

    #[test]
    fn ties_break_by_label_id() {
        let r = label(
            &[0.5, 0.5, 0.5],
            Decision::Thresholds(&[0.9; 3]),
            &[],
            &encoded(1, false),
            OutputOptions::default(),
        );
        let top: Vec<usize> = r.top_k.iter().map(|s| s.id).collect();
        assert_eq!(top, vec![0, 1, 2]);
    }

    #[test]
    fn options_are_checked() {
        assert_eq!(
            OutputOptions::new(0, false, None, 28).unwrap().top_k,
            DEFAULT_TOP_K
        );
        assert_eq!(
            OutputOptions::new(29, false, None, 28),
            Err(OptionsError::TopK { max: 28, got: 29 })
        );
        for bad in [0.0, 1.0, 1.5, -0.1, f32::NAN] {
            assert!(
                OutputOptions::new(3, false, Some(bad), 28).is_err(),
                "{bad}"
            );
        }
    }
}
