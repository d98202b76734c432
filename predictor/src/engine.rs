//! A loaded model version and the post-processing of its scores: the labels that pass their
//! thresholds and the top-k, as plain data (the service turns them into proto messages).
use common::checkpoint::{self, Manifest};
use common::inference::{self, InferenceError};
use common::model::{BertClassifier, Precision};
use common::registry::RegistryError;
use common::store::Store;
use common::tokenizer::{Encoded, TextTokenizer, TokenizerError};
use tch::Device;

pub const DEFAULT_TOP_K: usize = 3;

/// One model version ready to serve. Requests hold an `Arc` to the version they started on.
pub struct ServingModel {
    pub model: BertClassifier,
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

// SAFETY: after loading, a ServingModel is never mutated: its tensors are only read by forward
// passes under no_grad (libtorch allows concurrent reads of a tensor), and the tokenizer and
// manifest are plain immutable data. tch marks Tensor !Sync only because it cannot know this.
unsafe impl Sync for ServingModel {}

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
            model: loaded.model,
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

    /// Scores of a batch, row-major `[items × labels]`.
    pub fn score(&self, items: &[&Encoded]) -> Result<Vec<f32>, InferenceError> {
        inference::predict_batch(&self.model, &self.tokenizer, items)
    }
}

/// What the caller asked for besides the scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutputOptions {
    pub top_k: usize,
    pub all_scores: bool,
    /// One threshold for every label instead of the per-label ones.
    pub threshold: Option<f32>,
}

impl Default for OutputOptions {
    fn default() -> Self {
        Self {
            top_k: DEFAULT_TOP_K,
            all_scores: false,
            threshold: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OptionsError {
    #[error("threshold must be in (0, 1), got {0}")]
    Threshold(f32),
    #[error("top_k must be at most {max}, got {got}")]
    TopK { max: usize, got: usize },
}

impl OutputOptions {
    /// Checks caller-supplied options; `top_k` 0 means the default.
    pub fn new(
        top_k: usize,
        all_scores: bool,
        threshold: Option<f32>,
        num_labels: usize,
    ) -> Result<Self, OptionsError> {
        if let Some(t) = threshold {
            if !(t > 0.0 && t < 1.0) {
                return Err(OptionsError::Threshold(t));
            }
        }
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
        })
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
}

/// Labels a text's scores (label-id order) with the model's thresholds or the caller's.
pub fn label(
    scores: &[f32],
    thresholds: &[f32],
    encoded: &Encoded,
    opts: OutputOptions,
) -> Labelled {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let scored = |i: usize| Scored {
        id: i,
        score: scores[i],
    };
    let passes = |i: usize| scores[i] >= opts.threshold.unwrap_or(thresholds[i]);
    Labelled {
        labels: order
            .iter()
            .copied()
            .filter(|&i| passes(i))
            .map(scored)
            .collect(),
        top_k: order.iter().take(opts.top_k).copied().map(scored).collect(),
        scores: if opts.all_scores {
            scores.to_vec()
        } else {
            vec![]
        },
        truncated: encoded.truncated,
        num_tokens: encoded.ids.len(),
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
            &thresholds,
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
        let r = label(&scores, &thresholds, &encoded(3, false), global);
        let ids: Vec<usize> = r.labels.iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![1, 2, 0]);
        assert_eq!(r.top_k.len(), 1);
        assert_eq!(r.scores, scores);
    }

    #[test]
    fn ties_break_by_label_id() {
        let r = label(
            &[0.5, 0.5, 0.5],
            &[0.9; 3],
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
