//! GoEmotions TSV splits (`text<TAB>label ids<TAB>comment id`) as multi-hot examples, the three
//! splits with their labels as one `Dataset`, and stratified subsampling for quick runs.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::labels::{LabelSet, LabelsError};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Malformed {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path}: no examples")]
    Empty { path: String },
}

/// One labelled text.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub text: String,
    /// Label ids, ascending, without duplicates.
    pub labels: Vec<u8>,
    pub id: String,
}

impl Example {
    /// Multi-hot target vector of length `num_labels`.
    pub fn multi_hot(&self, num_labels: usize) -> Vec<f32> {
        let mut v = vec![0.0; num_labels];
        for &l in &self.labels {
            v[l as usize] = 1.0;
        }
        v
    }
}

/// The official split names.
pub const SPLITS: [&str; 3] = ["train", "dev", "test"];

/// Files a GoEmotions data folder must hold.
pub const REQUIRED_FILES: [&str; 6] = [
    "train.tsv",
    "dev.tsv",
    "test.tsv",
    "emotions.txt",
    "ekman_mapping.json",
    "sentiment_dict.json",
];

/// Multi-hot targets of `examples`, row-major `[examples × labels]`, as 0/1 bytes.
pub fn targets(examples: &[Example], num_labels: usize) -> Vec<u8> {
    let mut t = vec![0u8; examples.len() * num_labels];
    for (i, e) in examples.iter().enumerate() {
        for &l in &e.labels {
            t[i * num_labels + l as usize] = 1;
        }
    }
    t
}

/// Optional subsample sizes of the three splits (stratified by labels per example).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SplitLimits {
    pub train: Option<usize>,
    pub dev: Option<usize>,
    pub test: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Labels(#[from] LabelsError),
}

/// The three splits of a GoEmotions folder with their labels and the sha256 of each split file.
pub struct Dataset {
    pub labels: LabelSet,
    pub train: Vec<Example>,
    pub dev: Vec<Example>,
    pub test: Vec<Example>,
    /// sha256 of each split file as read (before subsampling), by file name.
    pub sha256: BTreeMap<String, String>,
}

impl Dataset {
    /// Loads the label files and the three splits, applying the (seeded) limits.
    pub fn load(dir: &Path, limits: SplitLimits, seed: u64) -> Result<Self, DatasetError> {
        let labels = LabelSet::load(dir)?;
        let mut sha256 = BTreeMap::new();
        let mut splits = Vec::with_capacity(3);
        for (split, limit) in SPLITS.iter().zip([limits.train, limits.dev, limits.test]) {
            let path = split_path(dir, split);
            let bytes = std::fs::read(&path).map_err(|source| DataError::Io {
                path: path.display().to_string(),
                source,
            })?;
            sha256.insert(format!("{split}.tsv"), crate::sha256_hex(&bytes));
            let all = parse_nonempty(&bytes, labels.len(), &path.display().to_string())?;
            splits.push(match limit {
                Some(n) => stratified_subsample(&all, n, seed),
                None => all,
            });
        }
        let test = splits.pop().unwrap_or_default();
        let dev = splits.pop().unwrap_or_default();
        let train = splits.pop().unwrap_or_default();
        Ok(Self {
            labels,
            train,
            dev,
            test,
            sha256,
        })
    }

    /// Loads one split (and the labels) only, e.g. to evaluate a checkpoint on it.
    pub fn load_split(
        dir: &Path,
        split: &str,
        limit: Option<usize>,
        seed: u64,
    ) -> Result<(LabelSet, Vec<Example>), DatasetError> {
        let labels = LabelSet::load(dir)?;
        let all = load_split(&split_path(dir, split), labels.len())?;
        let examples = match limit {
            Some(n) => stratified_subsample(&all, n, seed),
            None => all,
        };
        Ok((labels, examples))
    }

    /// The sizes of the three splits as used.
    pub fn sizes(&self) -> [usize; 3] {
        [self.train.len(), self.dev.len(), self.test.len()]
    }
}

/// Path of a split's TSV in a data folder.
pub fn split_path(dir: &Path, split: &str) -> PathBuf {
    dir.join(format!("{split}.tsv"))
}

/// Loads a split file. Every malformed line is an error naming the file and 1-based line number.
pub fn load_split(path: &Path, num_labels: usize) -> Result<Vec<Example>, DataError> {
    let display = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: display.clone(),
        source,
    })?;
    parse_nonempty(&bytes, num_labels, &display)
}

/// Parses a split already read into memory (e.g. to hash it too); an empty split is an error.
pub fn parse_nonempty(
    bytes: &[u8],
    num_labels: usize,
    source: &str,
) -> Result<Vec<Example>, DataError> {
    let examples = parse_split(bytes, num_labels, source)?;
    if examples.is_empty() {
        return Err(DataError::Empty {
            path: source.to_string(),
        });
    }
    Ok(examples)
}

/// Parses TSV bytes; `source` names the file in errors.
pub fn parse_split(
    bytes: &[u8],
    num_labels: usize,
    source: &str,
) -> Result<Vec<Example>, DataError> {
    let mut examples = Vec::new();
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if body.is_empty() {
        return Ok(examples);
    }
    for (index, raw) in body.split(|&b| b == b'\n').enumerate() {
        let line = index + 1;
        let malformed = |message: String| DataError::Malformed {
            path: source.to_string(),
            line,
            message,
        };
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text =
            std::str::from_utf8(raw).map_err(|e| malformed(format!("invalid UTF-8: {e}")))?;
        let fields: Vec<&str> = text.split('\t').collect();
        if fields.len() != 3 {
            return Err(malformed(format!(
                "expected 3 tab-separated fields, found {}",
                fields.len()
            )));
        }
        if fields[1].trim().is_empty() {
            return Err(malformed("empty label list".into()));
        }
        let mut labels = Vec::new();
        for id in fields[1].split(',') {
            let id = id.trim();
            let value: usize = id
                .parse()
                .map_err(|_| malformed(format!("label id {id:?} is not a number")))?;
            if value >= num_labels {
                return Err(malformed(format!(
                    "label id {value} outside 0..{}",
                    num_labels - 1
                )));
            }
            labels.push(value as u8);
        }
        labels.sort_unstable();
        labels.dedup();
        examples.push(Example {
            text: fields[0].to_string(),
            labels,
            id: fields[2].to_string(),
        });
    }
    Ok(examples)
}

/// Picks `limit` examples keeping the proportions of examples with 1, 2, 3, ... labels
/// (largest-remainder rounding), shuffled with `seed`. Returns everything when `limit >= len`.
pub fn stratified_subsample(examples: &[Example], limit: usize, seed: u64) -> Vec<Example> {
    if limit >= examples.len() {
        return examples.to_vec();
    }
    let mut strata: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, e) in examples.iter().enumerate() {
        strata.entry(e.labels.len()).or_default().push(i);
    }
    let total = examples.len() as f64;
    let mut quotas: Vec<(usize, usize, f64)> = strata
        .iter()
        .map(|(&k, members)| {
            let exact = members.len() as f64 * limit as f64 / total;
            (k, exact.floor() as usize, exact - exact.floor())
        })
        .collect();
    let mut remaining = limit - quotas.iter().map(|q| q.1).sum::<usize>();
    let mut by_remainder: Vec<usize> = (0..quotas.len()).collect();
    by_remainder.sort_by(|&a, &b| quotas[b].2.total_cmp(&quotas[a].2).then(a.cmp(&b)));
    for i in by_remainder {
        if remaining == 0 {
            break;
        }
        quotas[i].1 += 1;
        remaining -= 1;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut chosen = Vec::with_capacity(limit);
    for (k, quota, _) in quotas {
        let mut members = strata[&k].clone();
        members.shuffle(&mut rng);
        chosen.extend(members.into_iter().take(quota));
    }
    chosen.shuffle(&mut rng);
    chosen.into_iter().map(|i| examples[i].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Example>, DataError> {
        parse_split(text.as_bytes(), 28, "x.tsv")
    }

    #[test]
    fn parses_multi_label_lines() {
        let ex = parse("I love it\t0,18\tabc\nmeh\t27\tdef\n").unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].labels, vec![0, 18]);
        assert_eq!(ex[1].id, "def");
        let hot = ex[0].multi_hot(28);
        assert_eq!(hot.iter().sum::<f32>(), 2.0);
        assert_eq!(hot[18], 1.0);
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let cases = [
            ("ok\t1\ta\nbad line\t2\n", 2, "expected 3"),
            ("ok\t1\ta\nok\t1\tb\nx\t28\tc\n", 3, "outside 0..27"),
            ("x\t\ta\n", 1, "empty label list"),
            ("ok\t1\ta\nx\tone\tb\n", 2, "not a number"),
            ("a\tb\tc\td\n", 1, "found 4"),
        ];
        for (input, line, needle) in cases {
            let err = parse(input).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with(&format!("x.tsv:{line}:")), "{msg}");
            assert!(msg.contains(needle), "{msg}");
        }
    }

    #[test]
    fn invalid_utf8_is_an_error_with_line() {
        let mut bytes = b"ok\t1\ta\n".to_vec();
        bytes.extend_from_slice(&[0xff, 0xfe, b'\t', b'1', b'\t', b'b', b'\n']);
        let msg = parse_split(&bytes, 28, "u.tsv").unwrap_err().to_string();
        assert!(
            msg.starts_with("u.tsv:2:") && msg.contains("UTF-8"),
            "{msg}"
        );
    }

    #[test]
    fn missing_file_names_it() {
        let msg = load_split(Path::new("/nonexistent/train.tsv"), 28)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("/nonexistent/train.tsv"), "{msg}");
    }

    #[test]
    fn stratified_subsample_keeps_label_count_proportions() {
        // 800 single-label, 150 two-label, 50 three-label examples.
        let mut examples = Vec::new();
        for i in 0..1000 {
            let labels = match i {
                0..=799 => vec![1],
                800..=949 => vec![1, 2],
                _ => vec![1, 2, 3],
            };
            examples.push(Example {
                text: format!("t{i}"),
                labels,
                id: i.to_string(),
            });
        }
        let sample = stratified_subsample(&examples, 100, 7);
        assert_eq!(sample.len(), 100);
        let count = |k: usize| sample.iter().filter(|e| e.labels.len() == k).count();
        assert_eq!((count(1), count(2), count(3)), (80, 15, 5));
        let mut ids: Vec<_> = sample.iter().map(|e| e.id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 100, "no duplicates");
        assert_eq!(sample, stratified_subsample(&examples, 100, 7), "seeded");
        assert_ne!(sample, stratified_subsample(&examples, 100, 8));
    }
}
