//! Hugging Face `config.json` for BERT, extended with the classification fields of a checkpoint.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-12
}
fn default_type_vocab() -> i64 {
    2
}
fn default_dropout() -> f64 {
    0.1
}

/// The `model_type` and class of mean-pooled checkpoints (their modeling code ships with them).
pub const REMOTE_MODEL_TYPE: &str = "goemotions_bert";
pub const REMOTE_ARCHITECTURE: &str = "GoEmotionsBertForSequenceClassification";

/// A `config.json` value that cannot work, named by its field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} {message}")]
pub struct ConfigError {
    pub field: &'static str,
    pub message: String,
}

/// The fields of a BERT `config.json` this project reads; everything else is kept as-is in `extra`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BertConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: i64,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: i64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: i64,
    /// Label names by id (as strings, as Hugging Face writes them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label2id: Option<BTreeMap<String, i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    /// Dropout before the classification head; `hidden_dropout_prob` when absent (as in transformers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_dropout: Option<f64>,
    /// This project's extension: how the sequence is pooled for the head, "mean" or "cls".
    /// Absent means "cls", Hugging Face's BertForSequenceClassification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_pooling: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl BertConfig {
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Checks that the numbers describe a model that can be built and run: positive sizes, heads
    /// that divide the hidden size, dropout probabilities in [0, 1), a supported activation.
    /// Errors name the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field: &'static str, message: String| Err(ConfigError { field, message });
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if value <= 0 {
                return err(field, format!("must be positive, found {value}"));
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return err(
                "num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            );
        }
        let dropouts = [
            ("hidden_dropout_prob", Some(self.hidden_dropout_prob)),
            (
                "attention_probs_dropout_prob",
                Some(self.attention_probs_dropout_prob),
            ),
            ("classifier_dropout", self.classifier_dropout),
        ];
        for (field, value) in dropouts {
            if let Some(p) = value {
                if !(0.0..1.0).contains(&p) {
                    return err(field, format!("must be in [0, 1), found {p}"));
                }
            }
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return err(
                "layer_norm_eps",
                format!("must be a positive number, found {}", self.layer_norm_eps),
            );
        }
        if !(0..self.vocab_size).contains(&self.pad_token_id) {
            return err(
                "pad_token_id",
                format!(
                    "{} is outside the vocabulary (vocab_size {})",
                    self.pad_token_id, self.vocab_size
                ),
            );
        }
        if !matches!(
            self.hidden_act.as_str(),
            "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "relu"
        ) {
            return err("hidden_act", format!("unsupported: {:?}", self.hidden_act));
        }
        Ok(())
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("config serializes")
    }

    /// Label names in id order, when the config carries `id2label` for ids 0..n.
    pub fn label_names(&self) -> Option<Vec<String>> {
        let map = self.id2label.as_ref()?;
        (0..map.len())
            .map(|i| map.get(&i.to_string()).cloned())
            .collect()
    }

    /// What the head's scores mean: multi-label (independent sigmoids) unless the config says
    /// `single_label_classification` (a softmax across the labels).
    pub fn problem(&self) -> ProblemType {
        match self.problem_type.as_deref() {
            Some(SINGLE_LABEL) => ProblemType::SingleLabel,
            _ => ProblemType::MultiLabel,
        }
    }

    /// Fills the classification fields for `problem` over `labels`: a plain
    /// `BertForSequenceClassification` for CLS pooling, the shipped remote-code class for mean pooling.
    pub fn set_classification(&mut self, labels: &[String], pooling: &str, problem: ProblemType) {
        self.id2label = Some(
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), l.clone()))
                .collect(),
        );
        self.label2id = Some(
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), i as i64))
                .collect(),
        );
        self.problem_type = Some(problem.as_str().into());
        self.classifier_pooling = Some(pooling.into());
        if pooling == "mean" {
            // transformers has no mean-pooled BERT head: the checkpoint ships its own
            // (crate::checkpoint::REMOTE_CODE), and a model type of its own makes the plain
            // `AutoModelForSequenceClassification` refuse it instead of silently using the CLS pooler.
            self.architectures = Some(vec![REMOTE_ARCHITECTURE.into()]);
            self.extra
                .insert("model_type".into(), Value::String(REMOTE_MODEL_TYPE.into()));
            self.extra.insert(
                "auto_map".into(),
                serde_json::json!({
                    "AutoConfig": "configuration_goemotions.GoEmotionsBertConfig",
                    "AutoModelForSequenceClassification":
                        format!("modeling_goemotions.{REMOTE_ARCHITECTURE}"),
                }),
            );
        } else {
            self.architectures = Some(vec!["BertForSequenceClassification".into()]);
            self.extra
                .insert("model_type".into(), Value::String("bert".into()));
            self.extra.remove("auto_map");
        }
    }
}

const MULTI_LABEL: &str = "multi_label_classification";
const SINGLE_LABEL: &str = "single_label_classification";

/// A classifier's task, named as Hugging Face's `problem_type` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ProblemType {
    /// Any number of labels per text: independent sigmoids, per-label thresholds.
    #[default]
    #[serde(rename = "multi_label_classification")]
    MultiLabel,
    /// Exactly one label per text: a softmax across the labels, the best one wins.
    #[serde(rename = "single_label_classification")]
    SingleLabel,
}

impl ProblemType {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemType::MultiLabel => MULTI_LABEL,
            ProblemType::SingleLabel => SINGLE_LABEL,
        }
    }
}

impl std::fmt::Display for ProblemType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ProblemType {
    type Err = crate::ParseEnumError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            MULTI_LABEL => Ok(ProblemType::MultiLabel),
            SINGLE_LABEL => Ok(ProblemType::SingleLabel),
            _ => Err(crate::ParseEnumError {
                what: "problem_type",
                value: s.to_string(),
                expected: "multi_label_classification or single_label_classification",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pooling_declares_its_remote_code_and_cls_stays_plain_bert() {
        let base = r#"{"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 32}"#;
        let labels = vec!["joy".to_string(), "neutral".to_string()];
        let mut c = BertConfig::from_json(base.as_bytes()).unwrap();
        c.set_classification(&labels, "mean", ProblemType::MultiLabel);
        let json: Value = serde_json::from_slice(&c.to_json()).unwrap();
        assert_eq!(json["model_type"], REMOTE_MODEL_TYPE);
        assert_eq!(json["architectures"][0], REMOTE_ARCHITECTURE);
        assert_eq!(
            json["auto_map"]["AutoModelForSequenceClassification"],
            "modeling_goemotions.GoEmotionsBertForSequenceClassification"
        );
        // Retrained with CLS pooling from that checkpoint: plain BERT again, no remote code.
        let mut again = BertConfig::from_json(&c.to_json()).unwrap();
        again.set_classification(&labels, "cls", ProblemType::SingleLabel);
        assert_eq!(again.problem(), ProblemType::SingleLabel);
        let json: Value = serde_json::from_slice(&again.to_json()).unwrap();
        assert_eq!(json["model_type"], "bert");
        assert_eq!(json["architectures"][0], "BertForSequenceClassification");
        assert!(json.get("auto_map").is_none(), "{json}");
    }

    #[test]
    fn validation_names_the_field() {
        let base = r#""vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
            "intermediate_size": 16, "max_position_embeddings": 32"#;
        let parse =
            |extra: &str| BertConfig::from_json(format!("{{{base}, {extra}}}").as_bytes()).unwrap();
        assert!(parse(r#""num_attention_heads": 2"#).validate().is_ok());
        let cases = [
            (
                r#""num_attention_heads": 0"#,
                "num_attention_heads must be positive",
            ),
            (r#""num_attention_heads": 3"#, "does not divide hidden_size"),
            (
                r#""num_attention_heads": 2, "hidden_dropout_prob": 5"#,
                "hidden_dropout_prob",
            ),
            (
                r#""num_attention_heads": 2, "hidden_act": "swish""#,
                "hidden_act",
            ),
            (
                r#""num_attention_heads": 2, "pad_token_id": 10"#,
                "pad_token_id",
            ),
        ];
        for (extra, needle) in cases {
            let err = parse(extra).validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{extra}: {err}");
        }
    }

    #[test]
    fn keeps_unknown_fields_and_adds_labels() {
        let json = br#"{"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 16, "max_position_embeddings": 32, "model_type": "bert", "foo": [1]}"#;
        let mut c = BertConfig::from_json(json).unwrap();
        c.set_classification(
            &["joy".into(), "neutral".into()],
            "mean",
            ProblemType::MultiLabel,
        );
        let back = BertConfig::from_json(&c.to_json()).unwrap();
        assert_eq!(back.extra["foo"], serde_json::json!([1]));
        assert_eq!(back.label_names().unwrap(), vec!["joy", "neutral"]);
        assert_eq!(back.label2id.unwrap()["neutral"], 1);
        assert_eq!(
            back.problem_type.as_deref(),
            Some("multi_label_classification")
        );
    }
}
