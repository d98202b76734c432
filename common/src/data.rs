//! Labelled texts from a data folder, in one of three formats, as one `Dataset` (train, dev, test
//! and the label schema), plus stratified subsampling for quick runs.
//!
//! A data folder holds a train split and optionally dev and test splits, all in one format:
//! - GoEmotions TSV (`train.tsv`): `text<TAB>label ids<TAB>example id`, ids comma-separated,
//!   label names in `emotions.txt` (or `labels.txt`), one per line in id order;
//! - CSV (`train.csv`): a header row naming a `text` column and a `labels` (or `label`) column of
//!   label names separated by `;`, optionally an `id` column;
//! - JSON Lines (`train.jsonl`): `{"text": "...", "labels": ["name", ...]}` (or `"label"`: one
//!   name), label ids instead of names when `labels.txt` gives the names, optionally `"id"`.
//!
//! Without `labels.txt` / `emotions.txt` the labels are the names found in train, sorted.
//! Groupings come from `groupings/NAME.json` (and GoEmotions' own two files); see `labels`.
//! Missing dev or test splits are made from train, stratified by each example's rarest label,
//! with a fixed seed, and recorded (`Dataset::made_splits`). Every problem is an error naming the
//! file and line, found before any training.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

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
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("{path}: no examples")]
    Empty { path: String },
}

/// One labelled text.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub text: String,
    /// Label ids, ascending, without duplicates.
    pub labels: Vec<u32>,
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

/// One of `count` parts of a training split, for out-of-fold teachers: an example's part is
/// fixed by a hash of its id alone (not by order, seed or subsample), so every run over the same
/// data puts it in the same part. Written `INDEX/COUNT`, e.g. `0/3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fold {
    pub index: u32,
    pub count: u32,
}

impl Fold {
    /// The most parts a split may be cut into.
    pub const MAX_COUNT: u32 = 100;

    /// The part (of `count`) the example with this id is in.
    pub fn index_of(id: &str, count: u32) -> u32 {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(id.as_bytes());
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest[..8]);
        (u64::from_le_bytes(head) % u64::from(count.max(1))) as u32
    }

    pub fn contains(&self, example: &Example) -> bool {
        Self::index_of(&example.id, self.count) == self.index
    }

    /// Why this is not a fold: `count` outside 2..=MAX_COUNT or `index` not below it.
    pub fn check(&self) -> Result<(), String> {
        if !(2..=Self::MAX_COUNT).contains(&self.count) {
            return Err(format!(
                "{self}: the number of folds must be in [2, {}]",
                Self::MAX_COUNT
            ));
        }
        if self.index >= self.count {
            return Err(format!(
                "{self}: the fold index must be below the number of folds (0 to {})",
                self.count - 1
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for Fold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Fold {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |part: &str| part.trim().parse::<u32>().ok();
        let fold = s
            .split_once('/')
            .and_then(|(i, n)| {
                Some(Fold {
                    index: parse(i)?,
                    count: parse(n)?,
                })
            })
            .ok_or_else(|| format!("{s:?} is not INDEX/COUNT (e.g. 0/3)"))?;
        fold.check()?;
        Ok(fold)
    }
}

/// The name GoEmotions' folder loads as; checkpoints from before datasets were recorded were
/// all trained on it.
pub const GOEMOTIONS: &str = "GoEmotions";

/// The split names, in order.
pub const SPLITS: [&str; 3] = ["train", "dev", "test"];

/// Seed of the dev / test splits made from train when a folder lacks them: fixed, so every
/// training run (whatever its own seed) is evaluated on the same texts.
pub const SPLIT_SEED: u64 = 42;
/// Share of train that becomes each missing split.
pub const MADE_SPLIT_FRACTION: f64 = 0.1;

/// The file formats a data folder may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Tsv,
    Csv,
    Jsonl,
}

impl Format {
    const ALL: [Format; 3] = [Format::Tsv, Format::Csv, Format::Jsonl];

    pub fn extension(self) -> &'static str {
        match self {
            Format::Tsv => "tsv",
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }
}

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

/// The three splits of a data folder with their labels and the sha256 of each file read.
pub struct Dataset {
    /// "GoEmotions" for GoEmotions' folder, else the folder's name.
    pub name: String,
    pub format: Format,
    pub labels: LabelSet,
    pub train: Vec<Example>,
    pub dev: Vec<Example>,
    pub test: Vec<Example>,
    /// sha256 of each file as read (before subsampling), by file name.
    pub sha256: BTreeMap<String, String>,
    /// Splits the folder lacked, made from train with `SPLIT_SEED` ("dev", "test").
    pub made_splits: Vec<String>,
}

/// An example as read, before its labels are resolved against the label set.
struct Raw {
    text: String,
    labels: Vec<LabelRef>,
    id: Option<String>,
    line: usize,
}

enum LabelRef {
    Name(String),
    Id(u64),
}

/// Where an example came from, for errors.
struct Origin<'a> {
    path: &'a str,
    line: usize,
}

impl Origin<'_> {
    fn error(&self, message: String) -> DataError {
        DataError::Malformed {
            path: self.path.to_string(),
            line: self.line,
            message,
        }
    }
}

/// The label names file of a folder, if any.
fn names_file(dir: &Path) -> Option<PathBuf> {
    ["labels.txt", "emotions.txt"]
        .into_iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
}

/// The format of a folder: the one its train file has.
pub fn detect_format(dir: &Path) -> Result<Format, DataError> {
    let found: Vec<Format> = Format::ALL
        .into_iter()
        .filter(|f| split_path(dir, "train", *f).is_file())
        .collect();
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(DataError::Invalid {
            path: dir.display().to_string(),
            message: "no train.tsv, train.csv or train.jsonl: not a data folder".into(),
        }),
        _ => Err(DataError::Invalid {
            path: dir.display().to_string(),
            message: "more than one of train.tsv, train.csv, train.jsonl: keep one format".into(),
        }),
    }
}

impl Dataset {
    /// Loads the labels and the splits of a data folder (making missing dev / test splits from
    /// train), then applies the (seeded) limits.
    pub fn load(dir: &Path, limits: SplitLimits, seed: u64) -> Result<Self, DatasetError> {
        let format = detect_format(dir)?;
        let named = names_file(dir);
        if format == Format::Tsv && named.is_none() {
            return Err(DataError::Invalid {
                path: dir.display().to_string(),
                message: "a TSV folder needs emotions.txt or labels.txt (label names in id order)"
                    .into(),
            }
            .into());
        }
        let mut sha256 = BTreeMap::new();
        let mut raw: Vec<Option<(String, Vec<Raw>)>> = Vec::with_capacity(3);
        for split in SPLITS {
            let path = split_path(dir, split, format);
            if split != "train" && !path.exists() {
                raw.push(None);
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|source| DataError::Io {
                path: path.display().to_string(),
                source,
            })?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            sha256.insert(name, crate::sha256_hex(&bytes));
            let display = path.display().to_string();
            let examples = parse(&bytes, format, &display)?;
            if examples.is_empty() {
                return Err(DataError::Empty { path: display }.into());
            }
            raw.push(Some((display, examples)));
        }
        let mut labels = match &named {
            Some(path) => {
                sha256.insert(
                    path.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    crate::sha256_hex(&std::fs::read(path).unwrap_or_default()),
                );
                LabelSet::read_names(path)?
            }
            None => {
                let (path, train) = raw[0].as_ref().ok_or_else(|| DataError::Invalid {
                    path: dir.display().to_string(),
                    message: "no train split".into(),
                })?;
                names_from(train, path)?
            }
        };
        labels.load_groupings(dir)?;
        let mut splits: Vec<Option<Vec<Example>>> = Vec::with_capacity(3);
        for split in &raw {
            splits.push(match split {
                Some((path, examples)) => Some(resolve(examples, &labels, path)?),
                None => None,
            });
        }
        check_ids(&raw)?;
        let (train_path, _) = raw[0].as_ref().ok_or_else(|| DataError::Invalid {
            path: dir.display().to_string(),
            message: "no train split".into(),
        })?;
        let mut train = splits[0].take().unwrap_or_default();
        check_every_label_trained(&train, &labels, train_path, named.as_deref())?;
        let mut made_splits = Vec::new();
        let missing: Vec<usize> = (1..3).filter(|&i| splits[i].is_none()).collect();
        if !missing.is_empty() {
            let fractions = vec![MADE_SPLIT_FRACTION; missing.len()];
            let (kept, made) = split_stratified(train, labels.len(), &fractions, SPLIT_SEED);
            train = kept;
            for (&i, examples) in missing.iter().zip(made) {
                if examples.is_empty() {
                    return Err(DataError::Invalid {
                        path: train_path.clone(),
                        message: format!(
                            "too few examples to make a {} split from train; add {}",
                            SPLITS[i],
                            split_path(dir, SPLITS[i], format).display()
                        ),
                    }
                    .into());
                }
                made_splits.push(SPLITS[i].to_string());
                splits[i] = Some(examples);
            }
        }
        let subsample = |examples: Vec<Example>, limit: Option<usize>| match limit {
            Some(n) => stratified_subsample(&examples, n, seed),
            None => examples,
        };
        let test = subsample(splits[2].take().unwrap_or_default(), limits.test);
        let dev = subsample(splits[1].take().unwrap_or_default(), limits.dev);
        let train = subsample(train, limits.train);
        let is_goemotions = format == Format::Tsv && dir.join("emotions.txt").is_file();
        let name = if is_goemotions {
            GOEMOTIONS.to_string()
        } else {
            dir.canonicalize()
                .ok()
                .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| dir.display().to_string())
        };
        Ok(Self {
            name,
            format,
            labels,
            train,
            dev,
            test,
            sha256,
            made_splits,
        })
    }

    /// Loads one split (and the labels) only, e.g. to evaluate a checkpoint on it; a split the
    /// folder lacks is made from train exactly as for training.
    pub fn load_split(
        dir: &Path,
        split: &str,
        limit: Option<usize>,
        seed: u64,
    ) -> Result<(LabelSet, Vec<Example>), DatasetError> {
        let mut data = Self::load(dir, SplitLimits::default(), seed)?;
        let all = match split {
            "train" => std::mem::take(&mut data.train),
            "dev" => std::mem::take(&mut data.dev),
            _ => std::mem::take(&mut data.test),
        };
        let examples = match limit {
            Some(n) => stratified_subsample(&all, n, seed),
            None => all,
        };
        Ok((data.labels, examples))
    }

    /// The training file's name in the folder (e.g. `train.tsv`).
    pub fn train_file(&self) -> String {
        format!("train.{}", self.format.extension())
    }

    /// sha256 of the training file as read.
    pub fn train_sha256(&self) -> Option<&str> {
        self.sha256.get(&self.train_file()).map(String::as_str)
    }

    /// Keeps the training examples outside `fold` (the rest of the split trains an out-of-fold
    /// teacher).
    pub fn hold_out(&mut self, fold: Fold) {
        self.train.retain(|e| !fold.contains(e));
    }

    /// The sizes of the three splits as used.
    pub fn sizes(&self) -> [usize; 3] {
        [self.train.len(), self.dev.len(), self.test.len()]
    }

    /// Whether every example, in every split, has exactly one label (a single-label task).
    pub fn is_single_label(&self) -> bool {
        [&self.train, &self.dev, &self.test]
            .iter()
            .all(|s| s.iter().all(|e| e.labels.len() == 1))
    }
}

/// Path of a split in a data folder.
pub fn split_path(dir: &Path, split: &str, format: Format) -> PathBuf {
    dir.join(format!("{split}.{}", format.extension()))
}

/// Labels named in train, sorted by name (when the folder does not list them).
fn names_from(train: &[Raw], path: &str) -> Result<LabelSet, DatasetError> {
    let mut names = std::collections::BTreeSet::new();
    for r in train {
        for l in &r.labels {
            match l {
                LabelRef::Name(n) => {
                    names.insert(n.clone());
                }
                LabelRef::Id(id) => {
                    return Err(Origin { path, line: r.line }
                        .error(format!(
                            "label id {id} but the folder has no labels.txt to name the labels"
                        ))
                        .into())
                }
            }
        }
    }
    Ok(LabelSet::new(names.into_iter().collect(), path)?)
}

/// Resolves label names and ids against the label set.
fn resolve(raw: &[Raw], labels: &LabelSet, path: &str) -> Result<Vec<Example>, DataError> {
    let lookup: HashMap<&str, u32> = labels
        .names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i as u32))
        .collect();
    raw.iter()
        .map(|r| {
            let at = Origin { path, line: r.line };
            let mut ids = r
                .labels
                .iter()
                .map(|l| match l {
                    LabelRef::Name(n) => lookup.get(n.as_str()).copied().ok_or_else(|| {
                        at.error(format!(
                            "unknown label {n:?} (the labels are {})",
                            preview(&labels.names)
                        ))
                    }),
                    LabelRef::Id(id) => u32::try_from(*id)
                        .ok()
                        .filter(|&id| (id as usize) < labels.len())
                        .ok_or_else(|| {
                            at.error(format!("label id {id} outside 0..{}", labels.len() - 1))
                        }),
                })
                .collect::<Result<Vec<u32>, _>>()?;
            ids.sort_unstable();
            ids.dedup();
            Ok(Example {
                text: r.text.clone(),
                labels: ids,
                id: r.id.clone().unwrap_or_default(),
            })
        })
        .collect()
}

fn preview(names: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut s: Vec<String> = names.iter().take(SHOWN).map(|n| format!("{n:?}")).collect();
    if names.len() > SHOWN {
        s.push(format!("… {} in all", names.len()));
    }
    s.join(", ")
}

/// An example id given twice, within a split or across splits, is an error naming both places.
fn check_ids(raw: &[Option<(String, Vec<Raw>)>]) -> Result<(), DataError> {
    let mut seen: HashMap<&str, (&str, usize)> = HashMap::new();
    for (path, examples) in raw.iter().flatten() {
        for r in examples {
            let Some(id) = r.id.as_deref().filter(|id| !id.is_empty()) else {
                continue;
            };
            if let Some((first_path, first_line)) = seen.insert(id, (path, r.line)) {
                return Err(Origin {
                    path,
                    line: r.line,
                }
                .error(format!(
                    "example id {id:?} is used again (first at {first_path}:{first_line}); ids must be unique across splits"
                )));
            }
        }
    }
    Ok(())
}

/// A label no training example carries cannot be learned: an error naming the label.
fn check_every_label_trained(
    train: &[Example],
    labels: &LabelSet,
    train_path: &str,
    names_file: Option<&Path>,
) -> Result<(), DataError> {
    let mut count = vec![0usize; labels.len()];
    for e in train {
        for &l in &e.labels {
            count[l as usize] += 1;
        }
    }
    let Some(id) = count.iter().position(|&c| c == 0) else {
        return Ok(());
    };
    let name = &labels.names[id];
    let message = format!(
        "label {name:?} has no training example in {train_path}; add examples or remove the label"
    );
    let listed_at = names_file.and_then(|path| {
        let text = std::fs::read_to_string(path).ok()?;
        let line = text.lines().position(|l| l.trim() == name)? + 1;
        Some((path.display().to_string(), line))
    });
    Err(match listed_at {
        Some((path, line)) => DataError::Malformed {
            path,
            line,
            message,
        },
        None => DataError::Invalid {
            path: train_path.to_string(),
            message,
        },
    })
}

/// Parses a split's bytes in `format`; `source` names the file in errors.
fn parse(bytes: &[u8], format: Format, source: &str) -> Result<Vec<Raw>, DataError> {
    let raw = match format {
        Format::Tsv => parse_tsv(bytes, source)?,
        Format::Csv => parse_csv(bytes, source)?,
        Format::Jsonl => parse_jsonl(bytes, source)?,
    };
    for r in &raw {
        if r.text.trim().is_empty() {
            return Err(Origin {
                path: source,
                line: r.line,
            }
            .error("empty text".into()));
        }
    }
    Ok(raw)
}

/// Lines of a text file with their 1-based numbers (a trailing newline ends the last line).
fn lines<'a>(
    bytes: &'a [u8],
    source: &'a str,
) -> impl Iterator<Item = Result<(usize, &'a str), DataError>> + 'a {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let parts: Vec<&[u8]> = if body.is_empty() {
        vec![]
    } else {
        body.split(|&b| b == b'\n').collect()
    };
    parts.into_iter().enumerate().map(move |(index, raw)| {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let at = Origin {
            path: source,
            line: index + 1,
        };
        std::str::from_utf8(raw)
            .map(|text| (index + 1, text))
            .map_err(|e| at.error(format!("invalid UTF-8: {e}")))
    })
}

fn parse_tsv(bytes: &[u8], source: &str) -> Result<Vec<Raw>, DataError> {
    let mut out = Vec::new();
    for line in lines(bytes, source) {
        let (line, text) = line?;
        let at = Origin { path: source, line };
        let fields: Vec<&str> = text.split('\t').collect();
        if fields.len() != 3 {
            return Err(at.error(format!(
                "expected 3 tab-separated fields, found {}",
                fields.len()
            )));
        }
        if fields[1].trim().is_empty() {
            return Err(at.error("empty label list".into()));
        }
        let labels = fields[1]
            .split(',')
            .map(|id| {
                let id = id.trim();
                id.parse::<u64>()
                    .map(LabelRef::Id)
                    .map_err(|_| at.error(format!("label id {id:?} is not a number")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.push(Raw {
            text: fields[0].to_string(),
            labels,
            id: Some(fields[2].to_string()),
            line,
        });
    }
    Ok(out)
}

/// Label names of a CSV cell: `;`-separated, trimmed, empty parts skipped.
fn csv_labels(cell: &str) -> Vec<LabelRef> {
    cell.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| LabelRef::Name(s.to_string()))
        .collect()
}

fn parse_csv(bytes: &[u8], source: &str) -> Result<Vec<Raw>, DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes);
    let csv_error = |e: csv::Error| {
        let line = e.position().map(|p| p.line() as usize).unwrap_or(1);
        let message = match e.kind() {
            csv::ErrorKind::UnequalLengths {
                expected_len, len, ..
            } => format!("expected {expected_len} fields as in the header, found {len}"),
            _ => e.to_string(),
        };
        Origin { path: source, line }.error(message)
    };
    let header = reader.byte_headers().map_err(csv_error)?.clone();
    let header: Vec<String> = header
        .iter()
        .map(|h| {
            String::from_utf8_lossy(h)
                .trim()
                .trim_start_matches('\u{feff}')
                .to_string()
        })
        .collect();
    let column = |name: &str| header.iter().position(|h| h == name);
    let at_header = Origin {
        path: source,
        line: 1,
    };
    let text_col = column("text").ok_or_else(|| {
        at_header.error(format!(
            "missing column \"text\" (the header has {header:?})"
        ))
    })?;
    let labels_col = column("labels")
        .or_else(|| column("label"))
        .ok_or_else(|| {
            at_header.error(format!(
                "missing column \"labels\" (or \"label\") (the header has {header:?})"
            ))
        })?;
    let id_col = column("id");
    let mut out = Vec::new();
    let mut record = csv::ByteRecord::new();
    loop {
        let more = reader.read_byte_record(&mut record).map_err(csv_error)?;
        if !more {
            break;
        }
        let line = record.position().map(|p| p.line() as usize).unwrap_or(0);
        let at = Origin { path: source, line };
        let cell = |i: usize| -> Result<String, DataError> {
            let bytes = record.get(i).unwrap_or_default();
            String::from_utf8(bytes.to_vec())
                .map_err(|e| at.error(format!("invalid UTF-8 in column {:?}: {e}", header[i])))
        };
        out.push(Raw {
            text: cell(text_col)?,
            labels: csv_labels(&cell(labels_col)?),
            id: id_col.map(cell).transpose()?,
            line,
        });
    }
    Ok(out)
}

fn parse_jsonl(bytes: &[u8], source: &str) -> Result<Vec<Raw>, DataError> {
    let mut out = Vec::new();
    for line in lines(bytes, source) {
        let (line, text) = line?;
        if text.trim().is_empty() {
            continue;
        }
        let at = Origin { path: source, line };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| at.error(format!("not a JSON object: {e}")))?;
        let serde_json::Value::Object(object) = value else {
            return Err(at.error("not a JSON object".into()));
        };
        let text = match object.get("text") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(_) => return Err(at.error("\"text\" must be a string".into())),
            None => return Err(at.error("missing field \"text\"".into())),
        };
        let one = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => Ok(LabelRef::Name(s.trim().to_string())),
            serde_json::Value::Number(n) => n
                .as_u64()
                .map(LabelRef::Id)
                .ok_or_else(|| at.error(format!("label id {n} is not a non-negative integer"))),
            _ => Err(at.error("a label must be a name (string) or an id (integer)".into())),
        };
        let labels = match (object.get("labels"), object.get("label")) {
            (Some(serde_json::Value::Array(items)), None) => {
                items.iter().map(one).collect::<Result<Vec<_>, _>>()?
            }
            (Some(_), None) => return Err(at.error("\"labels\" must be an array".into())),
            (None, Some(v)) => vec![one(v)?],
            (Some(_), Some(_)) => {
                return Err(at.error("give \"labels\" or \"label\", not both".into()))
            }
            (None, None) => return Err(at.error("missing field \"labels\" (or \"label\")".into())),
        };
        let id = match object.get("id") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            Some(_) => return Err(at.error("\"id\" must be a string or a number".into())),
        };
        out.push(Raw {
            text,
            labels,
            id,
            line,
        });
    }
    Ok(out)
}

/// Splits `examples` into the kept part and one part per fraction, stratified by each example's
/// rarest label (examples without labels form their own stratum): every stratum gives each part
/// its share (largest-remainder rounding overall), and never its last example, so a label seen
/// in train stays in train.
pub fn split_stratified(
    examples: Vec<Example>,
    num_labels: usize,
    fractions: &[f64],
    seed: u64,
) -> (Vec<Example>, Vec<Vec<Example>>) {
    let mut frequency = vec![0usize; num_labels];
    for e in &examples {
        for &l in &e.labels {
            frequency[l as usize] += 1;
        }
    }
    let mut strata: BTreeMap<Option<u32>, Vec<usize>> = BTreeMap::new();
    for (i, e) in examples.iter().enumerate() {
        let rarest = e
            .labels
            .iter()
            .copied()
            .min_by_key(|&l| (frequency[l as usize], l));
        strata.entry(rarest).or_default().push(i);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut part_of = vec![0usize; examples.len()];
    for (k, &fraction) in fractions.iter().enumerate() {
        let total = examples.len() as f64 * fraction;
        let mut quotas: Vec<(usize, f64)> = strata
            .values()
            .map(|m| {
                let exact = m.len() as f64 * fraction;
                (exact.floor() as usize, exact - exact.floor())
            })
            .collect();
        let mut remaining =
            (total.round() as usize).saturating_sub(quotas.iter().map(|q| q.0).sum::<usize>());
        let mut order: Vec<usize> = (0..quotas.len()).collect();
        order.sort_by(|&a, &b| quotas[b].1.total_cmp(&quotas[a].1).then(a.cmp(&b)));
        for i in order {
            if remaining == 0 {
                break;
            }
            quotas[i].0 += 1;
            remaining -= 1;
        }
        for ((_, members), (quota, _)) in strata.iter_mut().zip(quotas) {
            if k == 0 {
                members.shuffle(&mut rng);
            }
            let free: Vec<usize> = members
                .iter()
                .copied()
                .filter(|&i| part_of[i] == 0)
                .collect();
            let take = quota.min(free.len().saturating_sub(1));
            for &i in free.iter().take(take) {
                part_of[i] = k + 1;
            }
        }
    }
    let mut kept = Vec::new();
    let mut parts: Vec<Vec<Example>> = vec![Vec::new(); fractions.len()];
    for (e, part) in examples.into_iter().zip(part_of) {
        match part {
            0 => kept.push(e),
            k => parts[k - 1].push(e),
        }
    }
    (kept, parts)
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

    fn write(dir: &Path, name: &str, text: impl AsRef<[u8]>) {
        if let Some(parent) = dir.join(name).parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn load(dir: &Path) -> Result<Dataset, DatasetError> {
        Dataset::load(dir, SplitLimits::default(), 1)
    }

    fn err(dir: &Path) -> String {
        match load(dir) {
            Ok(_) => panic!("{} loaded", dir.display()),
            Err(e) => e.to_string(),
        }
    }

    /// A GoEmotions-style folder with 3 labels.
    fn tsv_folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "emotions.txt", "joy\nanger\nneutral\n");
        write(
            dir.path(),
            "train.tsv",
            "I love it\t0,2\ta\nugh\t1\tb\nok\t2\tc\n",
        );
        write(dir.path(), "dev.tsv", "yay\t0\td\n");
        write(dir.path(), "test.tsv", "grr\t1\te\n");
        dir
    }

    #[test]
    fn goemotions_tsv_folders_load_as_before() {
        let dir = tsv_folder();
        let data = load(dir.path()).unwrap();
        assert_eq!(data.name, "GoEmotions");
        assert_eq!(data.format, Format::Tsv);
        assert_eq!(data.sizes(), [3, 1, 1]);
        assert_eq!(data.train[0].labels, vec![0, 2]);
        assert_eq!(data.train[1].id, "b");
        assert!(data.made_splits.is_empty());
        assert_eq!(data.train[0].multi_hot(3), vec![1.0, 0.0, 1.0]);
        assert!(!data.is_single_label());
        assert!(data.sha256.contains_key("train.tsv") && data.sha256.contains_key("emotions.txt"));
    }

    #[test]
    fn csv_and_jsonl_folders_name_their_labels() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "train.csv",
            "id,text,labels\n1,\"refund, please\",billing\n2,app crashes,bug;billing\n3,\"multi\nline\",bug\n4,hello,other\n",
        );
        write(
            dir.path(),
            "dev.csv",
            "text,label\nwhere is my money,billing\n",
        );
        write(dir.path(), "test.csv", "text,label\nit froze,bug\n");
        write(
            dir.path(),
            "groupings/area.json",
            r#"{"money": ["billing"], "tech": ["bug"]}"#,
        );
        let data = load(dir.path()).unwrap();
        assert_eq!(
            data.labels.names,
            ["billing", "bug", "other"],
            "sorted names from train"
        );
        assert_eq!(data.train[0].text, "refund, please");
        assert_eq!(data.train[1].labels, vec![0, 1]);
        assert_eq!(data.train[2].text, "multi\nline");
        assert_eq!(data.labels.groupings[0].name, "area");
        assert_ne!(data.name, "GoEmotions");

        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "labels.txt", "neg\npos\n");
        write(
            dir.path(),
            "train.jsonl",
            "{\"text\": \"good\", \"label\": \"pos\"}\n\n{\"text\": \"bad\", \"labels\": [0], \"id\": 7}\n",
        );
        write(
            dir.path(),
            "dev.jsonl",
            "{\"text\": \"fine\", \"label\": 1}\n",
        );
        write(
            dir.path(),
            "test.jsonl",
            "{\"text\": \"awful\", \"label\": \"neg\"}\n",
        );
        let data = load(dir.path()).unwrap();
        assert_eq!(data.labels.names, ["neg", "pos"]);
        assert_eq!(data.sizes(), [2, 1, 1]);
        assert_eq!(data.train[1].labels, vec![0]);
        assert_eq!(data.train[1].id, "7");
        assert!(data.is_single_label());
    }

    #[test]
    fn missing_splits_are_made_from_train_stratified_and_seeded() {
        let dir = tempfile::tempdir().unwrap();
        let mut csv = String::from("text,labels\n");
        for i in 0..200 {
            let label = match i % 10 {
                0 => "rare",
                1..=3 => "mid",
                _ => "common",
            };
            csv.push_str(&format!("text {i},{label}\n"));
        }
        csv.push_str("lonely,single\n");
        write(dir.path(), "train.csv", &csv);
        let data = load(dir.path()).unwrap();
        assert_eq!(data.made_splits, ["dev", "test"]);
        assert_eq!(data.sizes().iter().sum::<usize>(), 201);
        assert_eq!(data.dev.len(), 20);
        assert_eq!(data.test.len(), 20);
        let count = |split: &[Example], name: &str| {
            let id = data.labels.index_of(name).unwrap() as u32;
            split.iter().filter(|e| e.labels.contains(&id)).count()
        };
        assert_eq!(
            (count(&data.dev, "rare"), count(&data.test, "rare")),
            (2, 2)
        );
        assert_eq!((count(&data.dev, "mid"), count(&data.test, "mid")), (6, 6));
        assert_eq!(
            count(&data.train, "single"),
            1,
            "a one-example label stays in train"
        );
        let again = load(dir.path()).unwrap();
        assert_eq!(again.dev, data.dev, "the same split every time");
    }

    #[test]
    fn bad_data_is_an_error_naming_file_and_line_before_training() {
        /// (what, files, wanted error)
        type Case<'a> = (&'a str, Vec<(&'a str, &'a [u8])>, &'a str);
        let cases: Vec<Case> = vec![
            (
                "unknown label name",
                vec![
                    ("train.csv", b"text,labels\na,x\nb,y\n"),
                    ("dev.csv", b"text,labels\nc,x\nd,z\n"),
                ],
                "dev.csv:3: unknown label \"z\"",
            ),
            (
                "id out of range",
                vec![
                    ("labels.txt", b"x\ny\n"),
                    (
                        "train.jsonl",
                        b"{\"text\":\"a\",\"label\":0}\n{\"text\":\"b\",\"labels\":[1,2]}\n",
                    ),
                ],
                "train.jsonl:2: label id 2 outside 0..1",
            ),
            (
                "id out of range (TSV, beyond u8)",
                vec![
                    ("labels.txt", b"x\ny\n"),
                    ("train.tsv", b"a\t0\t1\nb\t257\t2\n"),
                ],
                "train.tsv:2: label id 257 outside 0..1",
            ),
            (
                "empty text",
                vec![("train.csv", b"text,labels\na,x\n  ,x\n")],
                "train.csv:3: empty text",
            ),
            (
                "label without a training example",
                vec![
                    ("labels.txt", b"x\ny\nz\n"),
                    (
                        "train.jsonl",
                        b"{\"text\":\"a\",\"label\":\"x\"}\n{\"text\":\"b\",\"label\":\"y\"}\n",
                    ),
                ],
                "labels.txt:3: label \"z\" has no training example",
            ),
            (
                "the same id in two splits",
                vec![
                    ("train.csv", b"id,text,labels\n1,a,x\n2,b,y\n"),
                    ("test.csv", b"id,text,labels\n3,c,x\n2,d,y\n"),
                ],
                "test.csv:3: example id \"2\" is used again (first at",
            ),
            (
                "invalid UTF-8",
                vec![("train.csv", b"text,labels\na,x\n\xff\xfe,y\n")],
                "train.csv:3: invalid UTF-8",
            ),
            (
                "missing column",
                vec![("train.csv", b"body,labels\na,x\n")],
                "train.csv:1: missing column \"text\"",
            ),
            (
                "uneven row",
                vec![("train.csv", b"text,labels\na,x\nb,y,extra\n")],
                "train.csv:3: expected 2 fields",
            ),
            (
                "TSV with a wrong field count",
                vec![
                    ("emotions.txt", b"x\n"),
                    ("train.tsv", b"a\t0\t1\nbad line\t0\n"),
                ],
                "train.tsv:2: expected 3 tab-separated fields",
            ),
            (
                "JSON that is not an object",
                vec![("train.jsonl", b"{\"text\":\"a\",\"label\":\"x\"}\n[1]\n")],
                "train.jsonl:2: not a JSON object",
            ),
            (
                "numeric ids without names",
                vec![("train.jsonl", b"{\"text\":\"a\",\"label\":3}\n")],
                "train.jsonl:1: label id 3 but the folder has no labels.txt",
            ),
            (
                "two formats",
                vec![("train.csv", b"text,labels\na,x\n"), ("train.jsonl", b"")],
                "more than one of",
            ),
            (
                "no train split",
                vec![("dev.csv", b"text,labels\na,x\n")],
                "not a data folder",
            ),
        ];
        for (what, files, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            for (name, bytes) in files {
                write(dir.path(), name, bytes);
            }
            let msg = err(dir.path());
            assert!(msg.contains(want), "{what}: {msg} (wanted {want})");
        }
    }

    #[test]
    fn folds_parse_check_and_split_by_id() {
        let fold: Fold = "1/3".parse().unwrap();
        assert_eq!(fold, Fold { index: 1, count: 3 });
        assert_eq!(fold.to_string(), "1/3");
        for bad in ["3/3", "0/1", "0/101", "1", "a/3", "-1/3", ""] {
            assert!(bad.parse::<Fold>().is_err(), "{bad:?} parsed");
        }
        // The assignment is part of every published out-of-fold teacher: it must never change.
        let pinned: Vec<u32> = ["id0", "id1", "id2", "eebbqej", "ed00q6i"]
            .iter()
            .map(|id| Fold::index_of(id, 3))
            .collect();
        assert_eq!(pinned, [2, 1, 2, 1, 0]);
        let mut sizes = [0usize; 3];
        for i in 0..3000 {
            let e = Example {
                text: String::new(),
                labels: vec![],
                id: format!("id{i}"),
            };
            let owners: Vec<u32> = (0..3)
                .filter(|&k| Fold { index: k, count: 3 }.contains(&e))
                .collect();
            assert_eq!(owners.len(), 1, "each example is in exactly one fold");
            sizes[owners[0] as usize] += 1;
        }
        assert!(
            sizes.iter().all(|&n| (900..=1100).contains(&n)),
            "{sizes:?}"
        );
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
