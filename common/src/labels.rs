//! A dataset's label schema, read from the data: label names in id order and any number of named
//! groupings of them (GoEmotions: 28 labels with Ekman's and the sentiment grouping).
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Most labels a dataset may have (ids are `u32`; the bound keeps heads and reports sensible).
pub const MAX_LABELS: usize = 10_000;

/// Folder of a dataset's groupings: one `NAME.json` per grouping, `{"group": ["label", ...]}`.
pub const GROUPINGS_DIR: &str = "groupings";

/// GoEmotions' own grouping files and the names their groupings are served under; each also
/// gets a "neutral" group when the labels have one (as the GoEmotions paper groups them).
pub const GOEMOTIONS_GROUPING_FILES: [(&str, &str); 2] = [
    ("ekman", "ekman_mapping.json"),
    ("sentiment", "sentiment_dict.json"),
];

#[derive(Debug, thiserror::Error)]
pub enum LabelsError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("{path}:{line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
}

/// A named group of labels (e.g. Ekman's "joy" = joy, amusement, ...).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LabelGroup {
    pub name: String,
    pub members: Vec<usize>,
}

/// A named way of grouping the labels (e.g. "ekman"); a label may sit in several groups or none.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LabelGrouping {
    pub name: String,
    pub groups: Vec<LabelGroup>,
}

/// Label names in id order and the groupings of them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LabelSet {
    pub names: Vec<String>,
    pub groupings: Vec<LabelGrouping>,
}

/// Checks a label name: not empty, no surrounding space, no control characters, no `;` (the
/// CSV format's separator).
pub fn check_label_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty label name".into());
    }
    if name.trim() != name {
        return Err(format!("label name {name:?} has surrounding spaces"));
    }
    if name.chars().any(|c| c.is_control() || c == ';') {
        return Err(format!(
            "label name {name:?} holds a control character or ';'"
        ));
    }
    Ok(())
}

/// Checks a grouping or group name: not empty, no commas (names are listed comma-separated),
/// no control characters, no surrounding space.
fn check_group_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.trim() != name || name.chars().any(|c| c.is_control() || c == ',') {
        return Err(format!(
            "name {name:?} must be non-empty, without commas, control characters or surrounding spaces"
        ));
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, LabelsError> {
    let bytes = std::fs::read(path).map_err(|source| LabelsError::Io {
        path: path.display().to_string(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|e| LabelsError::Invalid {
        path: path.display().to_string(),
        message: format!("invalid UTF-8: {e}"),
    })
}

impl LabelSet {
    /// A label set without groupings; names must be valid, distinct, 1 to `MAX_LABELS` of them.
    /// `source` names where they came from in errors.
    pub fn new(names: Vec<String>, source: &str) -> Result<Self, LabelsError> {
        let invalid = |message: String| LabelsError::Invalid {
            path: source.to_string(),
            message,
        };
        if names.is_empty() {
            return Err(invalid("no label names".into()));
        }
        if names.len() > MAX_LABELS {
            return Err(invalid(format!(
                "{} labels; at most {MAX_LABELS} are supported",
                names.len()
            )));
        }
        let mut seen = BTreeSet::new();
        for name in &names {
            check_label_name(name).map_err(&invalid)?;
            if !seen.insert(name.as_str()) {
                return Err(invalid(format!("label {name:?} is listed twice")));
            }
        }
        Ok(Self {
            names,
            groupings: vec![],
        })
    }

    /// Reads label names from a file, one per line in id order (blank lines skipped); an error
    /// names the file and line.
    pub fn read_names(path: &Path) -> Result<Self, LabelsError> {
        let display = path.display().to_string();
        let text = read(path)?;
        let mut names = Vec::new();
        let mut lines = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            let name = line.trim();
            if name.is_empty() {
                continue;
            }
            let at = |message: String| LabelsError::Line {
                path: display.clone(),
                line: index + 1,
                message,
            };
            check_label_name(name).map_err(at)?;
            if let Some(first) = lines.insert(name.to_string(), index + 1) {
                return Err(at(format!("label {name:?} is listed twice (line {first})")));
            }
            names.push(name.to_string());
        }
        Self::new(names, &display)
    }

    /// Adds the groupings found in a data folder: GoEmotions' `ekman_mapping.json` and
    /// `sentiment_dict.json` when present (as "ekman" and "sentiment"), then every
    /// `groupings/NAME.json` in name order.
    pub fn load_groupings(&mut self, dir: &Path) -> Result<(), LabelsError> {
        for (name, file) in GOEMOTIONS_GROUPING_FILES {
            let path = dir.join(file);
            if path.is_file() {
                let mut grouping = self.parse_grouping(name, &path)?;
                if let Some(neutral) = self.index_of("neutral") {
                    grouping.groups.push(LabelGroup {
                        name: "neutral".into(),
                        members: vec![neutral],
                    });
                }
                self.add_grouping(grouping, &path)?;
            }
        }
        let folder = dir.join(GROUPINGS_DIR);
        if folder.is_dir() {
            let entries = std::fs::read_dir(&folder).map_err(|source| LabelsError::Io {
                path: folder.display().to_string(),
                source,
            })?;
            let mut files: Vec<_> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            files.sort();
            for path in files {
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let grouping = self.parse_grouping(&name, &path)?;
                self.add_grouping(grouping, &path)?;
            }
        }
        Ok(())
    }

    fn add_grouping(&mut self, grouping: LabelGrouping, path: &Path) -> Result<(), LabelsError> {
        if self.grouping(&grouping.name).is_some() {
            return Err(LabelsError::Invalid {
                path: path.display().to_string(),
                message: format!("a grouping named {:?} exists already", grouping.name),
            });
        }
        self.groupings.push(grouping);
        Ok(())
    }

    /// Parses a `{"group": ["label", ...]}` file (groups in the file's key order, sorted).
    fn parse_grouping(&self, name: &str, path: &Path) -> Result<LabelGrouping, LabelsError> {
        let invalid = |message: String| LabelsError::Invalid {
            path: path.display().to_string(),
            message,
        };
        check_group_name(name).map_err(|e| invalid(format!("grouping {e}")))?;
        let raw: BTreeMap<String, Vec<String>> =
            serde_json::from_str(&read(path)?).map_err(|e| invalid(e.to_string()))?;
        if raw.is_empty() {
            return Err(invalid(format!("grouping {name:?} has no groups")));
        }
        let mut groups = Vec::with_capacity(raw.len());
        for (group, members) in raw {
            check_group_name(&group).map_err(|e| invalid(format!("group {e}")))?;
            if members.is_empty() {
                return Err(invalid(format!("group {group:?} has no labels")));
            }
            let mut ids = members
                .iter()
                .map(|m| {
                    self.index_of(m).ok_or_else(|| {
                        invalid(format!("group {group:?} names unknown label {m:?}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            ids.sort_unstable();
            ids.dedup();
            groups.push(LabelGroup {
                name: group,
                members: ids,
            });
        }
        Ok(LabelGrouping {
            name: name.to_string(),
            groups,
        })
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

    pub fn grouping(&self, name: &str) -> Option<&LabelGrouping> {
        self.groupings.iter().find(|g| g.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        if let Some(parent) = dir.join(name).parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn goemotions_groupings_get_neutral_and_other_groupings_are_verbatim() {
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
        write(
            dir.path(),
            "groupings/coarse.json",
            r#"{"all": ["e3", "e0"]}"#,
        );
        let mut set = LabelSet::read_names(&dir.path().join("emotions.txt")).unwrap();
        set.load_groupings(dir.path()).unwrap();
        assert_eq!(set.len(), 28);
        assert_eq!(set.index_of("neutral"), Some(27));
        let names: Vec<&str> = set.groupings.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["ekman", "sentiment", "coarse"]);
        let ekman = &set.grouping("ekman").unwrap().groups;
        assert_eq!(
            ekman[0],
            LabelGroup {
                name: "anger".into(),
                members: vec![1]
            }
        );
        assert_eq!(ekman[1].members, vec![0, 3]);
        assert_eq!(ekman[2].name, "neutral");
        assert_eq!(set.grouping("sentiment").unwrap().groups.len(), 2);
        let coarse = &set.grouping("coarse").unwrap().groups;
        assert_eq!(coarse.len(), 1, "no neutral added to other groupings");
        assert_eq!(coarse[0].members, vec![0, 3]);
    }

    #[test]
    fn bad_groupings_are_errors_naming_the_file() {
        let cases = [
            (r#"{"joy": ["nope"]}"#, "unknown label \"nope\""),
            (r#"{"joy": []}"#, "has no labels"),
            (r#"{}"#, "has no groups"),
            (r#"{"a,b": ["x"]}"#, "without commas"),
            (r#"["x"]"#, "expected a map"),
        ];
        for (json, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), "groupings/g.json", json);
            let mut set = LabelSet::new(vec!["x".into(), "y".into()], "labels").unwrap();
            let err = set.load_groupings(dir.path()).unwrap_err().to_string();
            assert!(err.contains("g.json") && err.contains(want), "{err}");
        }
    }

    #[test]
    fn label_names_are_checked_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "labels.txt", "a\nb\n\na\n");
        let err = LabelSet::read_names(&dir.path().join("labels.txt"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("labels.txt:4:") && err.contains("twice"),
            "{err}"
        );
        write(dir.path(), "labels.txt", "a\nb;c\n");
        let err = LabelSet::read_names(&dir.path().join("labels.txt"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("labels.txt:2:"), "{err}");
        write(dir.path(), "labels.txt", "\n\n");
        let err = LabelSet::read_names(&dir.path().join("labels.txt"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no label names"), "{err}");
    }

    #[test]
    fn one_to_max_labels_are_accepted() {
        assert_eq!(LabelSet::new(vec!["only".into()], "x").unwrap().len(), 1);
        let many: Vec<String> = (0..MAX_LABELS).map(|i| format!("l{i}")).collect();
        assert_eq!(LabelSet::new(many, "x").unwrap().len(), MAX_LABELS);
        let too_many: Vec<String> = (0..=MAX_LABELS).map(|i| format!("l{i}")).collect();
        assert!(LabelSet::new(too_many, "x").is_err());
    }
}
