//! A checkpoint is one directory or object-store prefix: `config.json`, `model.safetensors`,
//! `tokenizer.json` (+ vocab / tokenizer config when the base has them) and `manifest.json`, which
//! lists every other file with its sha256 and size. The manifest is written last, so a reader that
//! finds it knows every file it names is complete; loading verifies each file against it.
use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::model::{
    BertClassifier, BertConfig, LoadReport, ModelError, Pooling, Precision, ProblemType,
};
use crate::store::{Store, StoreError};
use crate::tokenizer::{TextTokenizer, TokenizerError};

pub const MANIFEST: &str = "manifest.json";
pub const CONFIG: &str = "config.json";
pub const WEIGHTS: &str = "model.safetensors";
pub const TOKENIZER: &str = "tokenizer.json";
/// Tokenizer side files copied from the base model when present.
pub const TOKENIZER_EXTRAS: [&str; 3] = [
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];
/// Hugging Face remote code shipped in mean-pooled checkpoints (`auto_map` in config.json), so
/// `transformers` with `trust_remote_code=True` scores exactly as the predictor does.
pub const REMOTE_CODE: [(&str, &str); 2] = [
    (
        "configuration_goemotions.py",
        include_str!("../hf/configuration_goemotions.py"),
    ),
    (
        "modeling_goemotions.py",
        include_str!("../hf/modeling_goemotions.py"),
    ),
];
/// The manifest format of multi-label checkpoints (readable by every predictor release).
pub const FORMAT_VERSION: u32 = 1;
/// The format of single-label checkpoints: predictors from before single-label models refuse
/// them instead of serving their softmax scores as independent sigmoids.
pub const SINGLE_LABEL_FORMAT_VERSION: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{uri}: invalid manifest.json: {message}")]
    Manifest { uri: String, message: String },
    #[error("{uri}/{file}: sha256 mismatch (manifest {expected}, found {found}); the checkpoint is corrupt or incomplete")]
    Checksum {
        uri: String,
        file: String,
        expected: String,
        found: String,
    },
    #[error("{uri}/{file}: size mismatch (manifest {expected} bytes, found {found})")]
    Size {
        uri: String,
        file: String,
        expected: u64,
        found: u64,
    },
    #[error("{uri}: {message}")]
    Invalid { uri: String, message: String },
    #[error("{uri}: {source}")]
    Model { uri: String, source: ModelError },
    #[error("{uri}: {source}")]
    Tokenizer { uri: String, source: TokenizerError },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

/// Everything a reader needs to know about a checkpoint besides its weights.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format_version: u32,
    pub model_name: String,
    pub version: String,
    /// Label names in id order.
    pub labels: Vec<String>,
    /// Multi-label (sigmoid scores, thresholds) or single-label (softmax, argmax); absent in
    /// checkpoints from before single-label models, which are all multi-label.
    #[serde(default)]
    pub problem_type: ProblemType,
    /// Per-label decision thresholds in label-id order, tuned on dev; empty for single-label.
    pub thresholds: Vec<f32>,
    /// One threshold for all labels, tuned on dev for micro-F1.
    pub global_threshold: f32,
    pub max_length: usize,
    /// "mean" or "cls".
    pub pooling: String,
    pub base_model: String,
    /// Numeric precision the model was trained in ("fp32", "bf16"); empty in older checkpoints.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub precision: String,
    /// Evaluation figures, e.g. "dev.macro_f1.per_label" or "test.micro_f1.global".
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    #[serde(default)]
    pub hyperparameters: serde_json::Value,
    /// sha256 of the data files used, by file name.
    #[serde(default)]
    pub data_sha256: BTreeMap<String, String>,
    pub created_at: String,
    #[serde(default)]
    pub files: Vec<FileEntry>,
    /// Coarse groupings served beside the labels (GoEmotions: Ekman's, sentiment), with decision
    /// thresholds tuned on dev; empty in checkpoints written before they existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groupings: Vec<Grouping>,
    /// The data the model was trained on; absent in checkpoints from before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetInfo>,
    /// Per-label temperature scaling fitted on dev, and whether the served scores carry it;
    /// absent for single-label models and checkpoints from before it was fitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<crate::calibration::Calibration>,
}

/// What a checkpoint records about its training data (the files' sha256 are in `data_sha256`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatasetInfo {
    /// "GoEmotions", or the data folder's name.
    pub name: String,
    /// "tsv", "csv" or "jsonl".
    pub format: String,
    /// Splits the folder lacked, made from train (stratified by label) with `split_seed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub made_splits: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_seed: Option<u64>,
}

/// A coarse grouping of the labels as served: its groups, their members and thresholds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Grouping {
    /// The grouping's name, e.g. "ekman" (a data folder's `groupings/NAME.json`).
    pub name: String,
    pub groups: Vec<ServedGroup>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServedGroup {
    pub name: String,
    /// Label ids.
    pub members: Vec<usize>,
    /// Decision threshold on the group's score (its best member's), tuned on dev.
    pub threshold: f32,
}

impl Manifest {
    pub fn pooling(&self) -> Result<Pooling, crate::ParseEnumError> {
        self.pooling.parse()
    }
}

/// A model and a setting (or tokenizer) that do not fit together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FitError {
    #[error("max_length must be in {MIN_MAX_LENGTH}..={limit} (the model's max_position_embeddings), found {max_length}")]
    MaxLength { max_length: usize, limit: usize },
    #[error("tokenizer.json has {tokens} tokens but config.json vocab_size is {vocab_size}")]
    Vocab { tokens: usize, vocab_size: i64 },
}

/// Smallest sensible max length: [CLS], one token, [SEP].
pub const MIN_MAX_LENGTH: usize = 3;

/// Checks that texts of `max_length` tokens fit the model: `2 < max_length ≤
/// max_position_embeddings` (longer inputs would index past the position table).
pub fn check_max_length(config: &BertConfig, max_length: usize) -> Result<(), FitError> {
    let limit = config.max_position_embeddings.max(0) as usize;
    if max_length < MIN_MAX_LENGTH || max_length > limit {
        return Err(FitError::MaxLength { max_length, limit });
    }
    Ok(())
}

/// Checks that every token id the tokenizer can produce has a row in the embedding table.
pub fn check_vocab(config: &BertConfig, tokenizer: &TextTokenizer) -> Result<(), FitError> {
    let tokens = tokenizer.vocab_size();
    if tokens as i64 > config.vocab_size {
        return Err(FitError::Vocab {
            tokens,
            vocab_size: config.vocab_size,
        });
    }
    Ok(())
}

/// A checkpoint's verified files.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub manifest: Manifest,
    /// sha256 of `manifest.json` as read: with the URI, what identifies this checkpoint.
    pub manifest_sha256: String,
    pub files: BTreeMap<String, Bytes>,
    pub uri: String,
}

/// Writes `files` and then `manifest.json` (with each file's sha256 and size) under `store`.
/// Returns the manifest as written.
pub async fn write(
    store: &Store,
    files: &[(String, Bytes)],
    manifest: Manifest,
) -> Result<Manifest, CheckpointError> {
    let manifest = write_files(store, files, manifest).await?;
    write_manifest(store, &manifest).await?;
    Ok(manifest)
}

/// Writes `files` under `store` and returns `manifest` listing them (not yet written): a
/// checkpoint without its manifest is invisible to readers.
pub async fn write_files(
    store: &Store,
    files: &[(String, Bytes)],
    mut manifest: Manifest,
) -> Result<Manifest, CheckpointError> {
    manifest.format_version = match manifest.problem_type {
        ProblemType::MultiLabel => FORMAT_VERSION,
        ProblemType::SingleLabel => SINGLE_LABEL_FORMAT_VERSION,
    };
    manifest.files = files
        .iter()
        .map(|(path, bytes)| FileEntry {
            path: path.clone(),
            sha256: crate::sha256_hex(bytes),
            size: bytes.len() as u64,
        })
        .collect();
    for (path, bytes) in files {
        store.put(path, bytes.clone()).await?;
    }
    Ok(manifest)
}

/// Writes `manifest.json`, the commit point of a checkpoint.
pub async fn write_manifest(store: &Store, manifest: &Manifest) -> Result<(), CheckpointError> {
    let json = serde_json::to_vec_pretty(manifest).map_err(|e| CheckpointError::Manifest {
        uri: store.uri().to_string(),
        message: e.to_string(),
    })?;
    store.put(MANIFEST, Bytes::from(json)).await?;
    Ok(())
}

/// Reads `manifest.json` alone.
pub async fn read_manifest(store: &Store) -> Result<Manifest, CheckpointError> {
    Ok(read_manifest_with_sha256(store).await?.0)
}

/// Reads `manifest.json` alone, with the sha256 of its bytes.
pub async fn read_manifest_with_sha256(
    store: &Store,
) -> Result<(Manifest, String), CheckpointError> {
    let bytes = store.get(MANIFEST).await?;
    Ok((
        parse_manifest(&bytes, store.uri())?,
        crate::sha256_hex(&bytes),
    ))
}

fn parse_manifest(bytes: &[u8], uri: &str) -> Result<Manifest, CheckpointError> {
    let manifest: Manifest =
        serde_json::from_slice(bytes).map_err(|e| CheckpointError::Manifest {
            uri: uri.to_string(),
            message: e.to_string(),
        })?;
    if !(FORMAT_VERSION..=SINGLE_LABEL_FORMAT_VERSION).contains(&manifest.format_version) {
        return Err(CheckpointError::Manifest {
            uri: uri.to_string(),
            message: format!(
                "format_version {} (this build reads {FORMAT_VERSION} to {SINGLE_LABEL_FORMAT_VERSION})",
                manifest.format_version
            ),
        });
    }
    let invalid = |message: String| CheckpointError::Manifest {
        uri: uri.to_string(),
        message,
    };
    if manifest.labels.is_empty() {
        return Err(invalid("labels is empty".into()));
    }
    if manifest.labels.len() > crate::labels::MAX_LABELS {
        return Err(invalid(format!(
            "{} labels; at most {} are supported",
            manifest.labels.len(),
            crate::labels::MAX_LABELS
        )));
    }
    let single = manifest.problem_type == ProblemType::SingleLabel;
    if single && manifest.format_version < SINGLE_LABEL_FORMAT_VERSION {
        return Err(invalid(format!(
            "a single-label checkpoint needs format_version {SINGLE_LABEL_FORMAT_VERSION}"
        )));
    }
    if single && !manifest.thresholds.is_empty() {
        return Err(invalid(
            "a single-label checkpoint has no thresholds (it predicts its best label)".into(),
        ));
    }
    if !single && manifest.thresholds.len() != manifest.labels.len() {
        return Err(invalid(format!(
            "{} thresholds for {} labels",
            manifest.thresholds.len(),
            manifest.labels.len()
        )));
    }
    let in_unit = |t: f32| t.is_finite() && (0.0..=1.0).contains(&t);
    if let Some((i, t)) = manifest
        .thresholds
        .iter()
        .enumerate()
        .find(|(_, &t)| !in_unit(t))
    {
        return Err(invalid(format!("thresholds[{i}] is {t}, outside [0, 1]")));
    }
    if !in_unit(manifest.global_threshold) {
        return Err(invalid(format!(
            "global_threshold is {}, outside [0, 1]",
            manifest.global_threshold
        )));
    }
    for g in &manifest.groupings {
        if g.groups.is_empty() {
            return Err(invalid(format!("grouping {:?} has no groups", g.name)));
        }
        for group in &g.groups {
            let what = format!("grouping {:?} group {:?}", g.name, group.name);
            if group.members.is_empty() {
                return Err(invalid(format!("{what} has no members")));
            }
            if !in_unit(group.threshold) {
                return Err(invalid(format!(
                    "{what} threshold is {}, outside [0, 1]",
                    group.threshold
                )));
            }
        }
    }
    manifest
        .pooling()
        .map_err(|e| invalid(format!("pooling: {e}")))?;
    Ok(manifest)
}

/// Reads a checkpoint and verifies every file's size and sha256 against its manifest.
pub async fn read(store: &Store) -> Result<Checkpoint, CheckpointError> {
    let (manifest, manifest_sha256) = read_manifest_with_sha256(store).await?;
    let uri = store.uri().to_string();
    let mut files = BTreeMap::new();
    for entry in &manifest.files {
        let bytes = store.get(&entry.path).await?;
        if bytes.len() as u64 != entry.size {
            return Err(CheckpointError::Size {
                uri,
                file: entry.path.clone(),
                expected: entry.size,
                found: bytes.len() as u64,
            });
        }
        let found = crate::sha256_hex(&bytes);
        if found != entry.sha256 {
            return Err(CheckpointError::Checksum {
                uri,
                file: entry.path.clone(),
                expected: entry.sha256.clone(),
                found,
            });
        }
        files.insert(entry.path.clone(), bytes);
    }
    for required in [CONFIG, WEIGHTS, TOKENIZER] {
        if !files.contains_key(required) {
            return Err(CheckpointError::Invalid {
                uri,
                message: format!("manifest lists no {required}"),
            });
        }
    }
    Ok(Checkpoint {
        manifest,
        manifest_sha256,
        files,
        uri,
    })
}

/// A base encoder to fine-tune: a Hugging Face model folder (or prefix) without a manifest.
#[derive(Debug, Clone)]
pub struct BaseModel {
    pub files: BTreeMap<String, Bytes>,
    pub uri: String,
}

/// Reads `config.json`, `model.safetensors`, `tokenizer.json` and the optional tokenizer files.
/// When a manifest is present (fine-tuning from a previous checkpoint) it is verified too.
pub async fn read_base(store: &Store) -> Result<BaseModel, CheckpointError> {
    if store.exists(MANIFEST).await? {
        let ck = read(store).await?;
        return Ok(BaseModel {
            files: ck.files,
            uri: ck.uri,
        });
    }
    let mut files = BTreeMap::new();
    for name in [CONFIG, WEIGHTS, TOKENIZER] {
        files.insert(name.to_string(), store.get(name).await?);
    }
    for name in TOKENIZER_EXTRAS {
        if let Some((bytes, _)) = store.get_opt(name).await? {
            files.insert(name.to_string(), bytes);
        }
    }
    Ok(BaseModel {
        files,
        uri: store.uri().to_string(),
    })
}

/// A model ready to serve or evaluate.
pub struct LoadedModel {
    pub model: BertClassifier,
    pub tokenizer: TextTokenizer,
    pub manifest: Manifest,
    pub load_report: LoadReport,
}

impl Checkpoint {
    /// Builds the model and tokenizer on `device` for inference (in bf16, the weights are stored in
    /// bf16) after checking that config, weights, tokenizer
    /// and manifest agree: layer count and tensor shapes against config.json, a trained head with
    /// one output per manifest label, `2 < max_length ≤ max_position_embeddings`, and a tokenizer
    /// whose ids all fit the embedding table. Each refusal names the field.
    pub fn load_model(
        &self,
        device: Device,
        precision: Precision,
    ) -> Result<LoadedModel, CheckpointError> {
        let uri = self.uri.clone();
        let invalid = |message: String| CheckpointError::Invalid {
            uri: uri.clone(),
            message,
        };
        let m = &self.manifest;
        let pooling = m.pooling().map_err(|e| invalid(e.to_string()))?;
        let config = BertConfig::from_json(&self.files[CONFIG])
            .map_err(|e| invalid(format!("config.json: {e}")))?;
        config
            .validate()
            .map_err(|e| invalid(format!("config.json: {e}")))?;
        check_max_length(&config, m.max_length)
            .map_err(|e| invalid(format!("manifest.json: {e}")))?;
        let tokenizer =
            TextTokenizer::from_bytes(&self.files[TOKENIZER], m.max_length).map_err(|source| {
                CheckpointError::Tokenizer {
                    uri: uri.clone(),
                    source,
                }
            })?;
        check_vocab(&config, &tokenizer).map_err(|e| invalid(e.to_string()))?;
        let (mut model, load_report) = BertClassifier::load(
            &self.files[CONFIG],
            &self.files[WEIGHTS],
            m.labels.len(),
            pooling,
            device,
        )
        .map_err(|source| match source {
            ModelError::Shape { name, found, .. } if name.starts_with("classifier.") => invalid(
                format!(
                    "model.safetensors: the classification head has {} outputs but manifest.json lists {} labels",
                    found.first().copied().unwrap_or_default(),
                    m.labels.len()
                ),
            ),
            source => CheckpointError::Model {
                uri: uri.clone(),
                source,
            },
        })?;
        let head_needed = pooling == Pooling::Cls;
        if let Some(name) = load_report
            .initialised
            .iter()
            .find(|n| n.starts_with("classifier.") || head_needed)
        {
            return Err(invalid(format!(
                "model.safetensors lacks {name}: not a trained classifier"
            )));
        }
        if model.config().problem() != m.problem_type {
            return Err(invalid(format!(
                "config.json problem_type is {} but manifest.json says {}",
                model.config().problem(),
                m.problem_type
            )));
        }
        if let Some(names) = model.config().label_names() {
            if names != m.labels {
                return Err(invalid(
                    "config.json id2label disagrees with manifest labels".into(),
                ));
            }
        }
        // After the head check, so a manifest that lost labels is refused for that first.
        for g in &m.groupings {
            for group in &g.groups {
                if let Some(id) = group.members.iter().find(|&&id| id >= m.labels.len()) {
                    return Err(invalid(format!(
                        "grouping {:?} group {:?} names label id {id}, but there are {} labels",
                        g.name,
                        group.name,
                        m.labels.len()
                    )));
                }
            }
        }
        if let Some(name) = model.first_non_finite_parameter() {
            return Err(invalid(format!(
                "model.safetensors: tensor {name} holds NaN or infinite values; refusing to serve it"
            )));
        }
        model.set_precision(precision);
        model.store_weights_for_inference();
        Ok(LoadedModel {
            model,
            tokenizer,
            manifest: m.clone(),
            load_report,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            model_name: "m".into(),
            version: "v1".into(),
            labels: vec!["a".into(), "b".into()],
            problem_type: ProblemType::MultiLabel,
            thresholds: vec![0.3, 0.6],
            global_threshold: 0.4,
            max_length: 16,
            pooling: "mean".into(),
            base_model: "base".into(),
            precision: "fp32".into(),
            metrics: BTreeMap::new(),
            hyperparameters: serde_json::json!({}),
            data_sha256: BTreeMap::new(),
            created_at: "2026-01-01T00:00:00Z".into(),
            files: vec![],
            groupings: vec![],
            dataset: None,
            calibration: None,
        }
    }

    fn files() -> Vec<(String, Bytes)> {
        vec![
            (CONFIG.into(), Bytes::from_static(b"{}")),
            (WEIGHTS.into(), Bytes::from_static(b"weights")),
            (TOKENIZER.into(), Bytes::from_static(b"tok")),
        ]
    }

    #[tokio::test]
    async fn write_then_read_verifies_and_names_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let written = write(&store, &files(), manifest()).await.unwrap();
        assert_eq!(written.files.len(), 3);
        let ck = read(&store).await.unwrap();
        assert_eq!(ck.files[WEIGHTS], Bytes::from_static(b"weights"));
        assert_eq!(ck.manifest, written);

        std::fs::write(dir.path().join(WEIGHTS), b"weightz").unwrap();
        let err = read(&store).await.unwrap_err().to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("sha256 mismatch"),
            "{err}"
        );

        std::fs::write(dir.path().join(WEIGHTS), b"short").unwrap();
        let err = read(&store).await.unwrap_err().to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("size mismatch"),
            "{err}"
        );

        std::fs::write(dir.path().join(WEIGHTS), b"weights").unwrap();
        read(&store).await.unwrap();
        std::fs::remove_file(dir.path().join(TOKENIZER)).unwrap();
        let err = read(&store).await.unwrap_err().to_string();
        assert!(
            err.contains("tokenizer.json") && err.contains("not found"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn manifest_with_wrong_threshold_count_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let mut m = manifest();
        m.thresholds.pop();
        write(&store, &files(), m).await.unwrap();
        let err = read(&store).await.unwrap_err().to_string();
        assert!(err.contains("1 thresholds for 2 labels"), "{err}");
    }

    #[tokio::test]
    async fn single_label_checkpoints_are_format_2_without_thresholds_and_older_ones_read_as_multi_label(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let mut m = manifest();
        m.problem_type = ProblemType::SingleLabel;
        m.thresholds = vec![];
        let written = write(&store, &files(), m.clone()).await.unwrap();
        assert_eq!(written.format_version, SINGLE_LABEL_FORMAT_VERSION);
        assert_eq!(
            read(&store).await.unwrap().manifest.problem_type,
            ProblemType::SingleLabel
        );
        m.thresholds = vec![0.5, 0.5];
        write(&store, &files(), m).await.unwrap();
        let err = read(&store).await.unwrap_err().to_string();
        assert!(err.contains("has no thresholds"), "{err}");

        // A manifest written before problem_type existed.
        let mut json: serde_json::Value =
            serde_json::to_value(write(&store, &files(), manifest()).await.unwrap()).unwrap();
        assert_eq!(json["format_version"], FORMAT_VERSION);
        json.as_object_mut().unwrap().remove("problem_type");
        store
            .put(MANIFEST, Bytes::from(serde_json::to_vec(&json).unwrap()))
            .await
            .unwrap();
        assert_eq!(
            read(&store).await.unwrap().manifest.problem_type,
            ProblemType::MultiLabel
        );
    }

    #[tokio::test]
    async fn groupings_without_members_or_with_bad_thresholds_are_refused() {
        let group = |members: Vec<usize>, threshold: f32| Grouping {
            name: "ekman".into(),
            groups: vec![ServedGroup {
                name: "joy".into(),
                members,
                threshold,
            }],
        };
        // (Label ids beyond the labels are refused when the model loads, after the head check.)
        for (g, want) in [
            (group(vec![1], 1.5), "outside [0, 1]"),
            (group(vec![], 0.4), "no members"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path().to_str().unwrap()).unwrap();
            let mut m = manifest();
            m.groupings = vec![g];
            write(&store, &files(), m).await.unwrap();
            let err = read(&store).await.unwrap_err().to_string();
            assert!(err.contains(want), "{err} (wanted {want})");
        }
    }
}
