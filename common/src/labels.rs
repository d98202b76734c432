//! The 28 GoEmotions labels (27 emotions + neutral) and their Ekman and sentiment groupings.
use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Number of GoEmotions labels.
pub const NUM_LABELS: usize = 28;

#[derive(Debug, thiserror::Error)]
pub enum LabelsError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// A named group of labels (e.g. Ekman's "joy" = joy, amusement, ...).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LabelGroup {
    pub name: String,
    pub members: Vec<usize>,
}

/// Label names in id order and the two coarser groupings used for reporting.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LabelSet {
    pub names: Vec<String>,
    /// Ekman's 6 basic emotions plus neutral.
    pub ekman: Vec<LabelGroup>,
    /// positive / negative / ambiguous plus neutral.
    pub sentiment: Vec<LabelGroup>,
}

impl LabelSet {
    /// Reads `emotions.txt`, `ekman_mapping.json` and `sentiment_dict.json` from a GoEmotions data folder.
    pub fn load(dir: &Path) -> Result<Self, LabelsError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| LabelsError::Io {
                path: path.display().to_string(),
                source,
            })
        };
        let emotions_path = dir.join("emotions.txt").display().to_string();
        let names: Vec<String> = read("emotions.txt")?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if names.len() != NUM_LABELS {
            return Err(LabelsError::Invalid {
                path: emotions_path,
                message: format!("expected {NUM_LABELS} label names, found {}", names.len()),
            });
        }
        let ekman = Self::groups(
            &names,
            &read("ekman_mapping.json")?,
            &dir.join("ekman_mapping.json"),
        )?;
        let sentiment = Self::groups(
            &names,
            &read("sentiment_dict.json")?,
            &dir.join("sentiment_dict.json"),
        )?;
        Ok(Self {
            names,
            ekman,
            sentiment,
        })
    }

    /// Parses a `{"group": ["label", ...]}` file; "neutral" is added as its own group.
    fn groups(names: &[String], json: &str, path: &Path) -> Result<Vec<LabelGroup>, LabelsError> {
        let invalid = |message: String| LabelsError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let raw: BTreeMap<String, Vec<String>> =
            serde_json::from_str(json).map_err(|e| invalid(e.to_string()))?;
        let mut groups = Vec::with_capacity(raw.len() + 1);
        for (group, members) in raw {
            let members = members
                .iter()
                .map(|m| {
                    names.iter().position(|n| n == m).ok_or_else(|| {
                        invalid(format!("group {group:?} names unknown label {m:?}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            groups.push(LabelGroup {
                name: group,
                members,
            });
        }
        if let Some(neutral) = names.iter().position(|n| n == "neutral") {
            groups.push(LabelGroup {
                name: "neutral".into(),
                members: vec![neutral],
            });
        }
        Ok(groups)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn loads_names_and_groups_in_id_order() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..27)
            .map(|i| format!("e{i}"))
            .chain(["neutral".into()])
            .collect();
        write(dir.path(), "emotions.txt", &names.join("\n"));
        write(
            dir.path(),
            "ekman_mapping.json",
            r#"{"joy": ["e0", "e3"], "anger": ["e1"]}"#,
        );
        write(dir.path(), "sentiment_dict.json", r#"{"positive": ["e0"]}"#);
        let set = LabelSet::load(dir.path()).unwrap();
        assert_eq!(set.len(), 28);
        assert_eq!(set.index_of("neutral"), Some(27));
        assert_eq!(
            set.ekman[0],
            LabelGroup {
                name: "anger".into(),
                members: vec![1]
            }
        );
        assert_eq!(
            set.ekman[1],
            LabelGroup {
                name: "joy".into(),
                members: vec![0, 3]
            }
        );
        assert_eq!(
            set.ekman[2],
            LabelGroup {
                name: "neutral".into(),
                members: vec![27]
            }
        );
        assert_eq!(set.sentiment.len(), 2);
    }

    #[test]
    fn unknown_group_member_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..28).map(|i| format!("e{i}")).collect();
        write(dir.path(), "emotions.txt", &names.join("\n"));
        write(dir.path(), "ekman_mapping.json", r#"{"joy": ["nope"]}"#);
        write(dir.path(), "sentiment_dict.json", r#"{}"#);
        let err = LabelSet::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("ekman_mapping.json") && err.contains("nope"),
            "{err}"
        );
    }

    #[test]
    fn wrong_label_count_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "emotions.txt", "a\nb\n");
        let err = LabelSet::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("expected 28"), "{err}");
    }
}
