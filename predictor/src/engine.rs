//! A loaded model version and the post-processing of its scores: sigmoid probabilities per label,
//! the labels that pass their thresholds, and the top-k.
use common::checkpoint::{self, Manifest};
use common::model::BertClassifier;
use common::registry::RegistryError;
use common::store::Store;
use common::tokenizer::{Encoded, TextTokenizer};
use proto::v1::{LabelScore, TextResult};
use tch::Device;

pub const DEFAULT_TOP_K: usize = 3;

/// One model version ready to serve. Requests hold an `Arc` to the version they started on.
pub struct ServingModel {
    pub model: BertClassifier,
    pub tokenizer: TextTokenizer,
    pub manifest: Manifest,
    /// Where it was loaded from.
    pub source_uri: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{0}")]
    Invalid(String),
}

// SAFETY: after loading, a ServingModel is never mutated: its tensors are only read by forward
// passes under no_grad (libtorch allows concurrent reads of a tensor), and the tokenizer and
// manifest are plain immutable data. tch marks Tensor !Sync only because it cannot know this.
unsafe impl Sync for ServingModel {}

impl ServingModel {
    /// Reads and verifies a checkpoint (every file's sha256) and builds the model on `device`.
    pub async fn load(store: &Store, device: Device) -> Result<Self, LoadError> {
        let ck = checkpoint::read(store).await?;
        let source_uri = store.uri().to_string();
        let loaded = tokio::task::spawn_blocking(move || ck.load_model(device))
            .await
            .map_err(|e| LoadError::Invalid(format!("load task failed: {e}")))??;
        Ok(Self {
            model: loaded.model,
            tokenizer: loaded.tokenizer,
            manifest: loaded.manifest,
            source_uri,
        })
    }

    pub fn version(&self) -> &str {
        &self.manifest.version
    }

    pub fn encode(&self, text: &str) -> Result<Encoded, String> {
        self.tokenizer.encode(text).map_err(|e| e.to_string())
    }
}

/// What the caller asked for besides the scores.
#[derive(Debug, Clone, Copy)]
pub struct OutputOptions {
    pub top_k: usize,
    pub all_scores: bool,
    /// One threshold for every label instead of the per-label ones.
    pub threshold: Option<f32>,
}

impl OutputOptions {
    /// Validates the wire options.
    pub fn from_proto(
        o: Option<&proto::v1::ClassifyOptions>,
        num_labels: usize,
    ) -> Result<Self, String> {
        let Some(o) = o else {
            return Ok(Self {
                top_k: DEFAULT_TOP_K,
                all_scores: false,
                threshold: None,
            });
        };
        if let Some(t) = o.threshold {
            if !(t > 0.0 && t < 1.0) {
                return Err(format!("threshold must be in (0, 1), got {t}"));
            }
        }
        let top_k = if o.top_k == 0 {
            DEFAULT_TOP_K
        } else {
            o.top_k as usize
        };
        if top_k > num_labels {
            return Err(format!("top_k must be at most {num_labels}, got {top_k}"));
        }
        Ok(Self {
            top_k,
            all_scores: o.return_all_scores,
            threshold: o.threshold,
        })
    }
}

/// Builds a text's result from its scores (label-id order).
pub fn build_result(
    model: &ServingModel,
    scores: &[f32],
    encoded: &Encoded,
    opts: OutputOptions,
) -> TextResult {
    let names = &model.manifest.labels;
    let score_of = |i: usize| LabelScore {
        id: i as u32,
        name: names[i].clone(),
        score: scores[i],
    };
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let passes = |i: usize| scores[i] >= opts.threshold.unwrap_or(model.manifest.thresholds[i]);
    TextResult {
        labels: order
            .iter()
            .copied()
            .filter(|&i| passes(i))
            .map(score_of)
            .collect(),
        top_k: order
            .iter()
            .take(opts.top_k)
            .copied()
            .map(score_of)
            .collect(),
        scores: if opts.all_scores {
            scores.to_vec()
        } else {
            vec![]
        },
        truncated: encoded.truncated,
        num_tokens: encoded.ids.len() as u32,
    }
}

/// The documented answer for an empty or whitespace-only text: no labels, no scores, 0 tokens.
pub fn empty_result() -> TextResult {
    TextResult {
        labels: vec![],
        top_k: vec![],
        scores: vec![],
        truncated: false,
        num_tokens: 0,
    }
}
