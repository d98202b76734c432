//! What a batch job records in its output folder: `_job.json`, the plan every shard and rerun
//! follows (the model version resolved once, the input's identity, the output's shape), created
//! by whichever process gets there first with a create-only write; the parts' names; and
//! `_manifest.json`, written once every part exists.
use serde::{Deserialize, Serialize};

use super::input::InputFormat;
use super::output::OutputFormat;

pub const PLAN: &str = "_job.json";
pub const MANIFEST: &str = "_manifest.json";
pub const ERRORS_DIR: &str = "errors";
pub const PLAN_FORMAT: u32 = 1;

pub fn part_name(index: u64, format: OutputFormat) -> String {
    format!("part-{index:06}.{}", format.extension())
}

pub fn errors_name(index: u64) -> String {
    format!("{ERRORS_DIR}/part-{index:06}.jsonl")
}

/// The part index of an output name, when it is one of `format`'s parts.
pub fn part_index(name: &str, format: OutputFormat) -> Option<u64> {
    let digits = name
        .strip_prefix("part-")?
        .strip_suffix(format.extension())?
        .strip_suffix('.')?;
    (digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    pub format: u32,
    pub created_at: String,
    pub model: PlannedModel,
    pub input: PlannedInput,
    pub output: PlannedOutput,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlannedModel {
    /// The URI the job was started with (an alias or a fixed version).
    pub asked: String,
    /// The version it named when the job was planned, and where that version lives.
    pub version: String,
    pub checkpoint: String,
    /// sha256 of that version's manifest: loading anything else is refused.
    pub manifest_sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlannedInput {
    pub uri: String,
    pub format: InputFormat,
    pub text_column: String,
    pub id_column: Option<String>,
    pub files: Vec<InputFile>,
    pub rows: u64,
    pub bad_rows: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InputFile {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlannedOutput {
    pub format: OutputFormat,
    pub rows_per_part: u64,
    pub parts: u64,
    pub top_k: usize,
    pub threshold: Option<f32>,
    pub groupings: Vec<String>,
    pub max_text_bytes: usize,
}

impl Plan {
    /// Why `self` (found in the output folder) is not the job `asked` describes: the first
    /// field that differs, or `None` when the output belongs to this job.
    pub fn mismatch(&self, asked: &Plan) -> Option<String> {
        let differ = |what: &str, found: String, wanted: String| {
            (found != wanted)
                .then(|| format!("{what}: the job there has {found}, this run asks for {wanted}"))
        };
        fn json<T: Serialize>(v: &T) -> String {
            serde_json::to_string(v).unwrap_or_default()
        }
        differ("model", self.model.asked.clone(), asked.model.asked.clone())
            .or_else(|| differ("input", self.input.uri.clone(), asked.input.uri.clone()))
            .or_else(|| {
                differ(
                    "input files",
                    json(&self.input.files),
                    json(&asked.input.files),
                )
            })
            .or_else(|| {
                differ(
                    "input format and columns",
                    json(&(
                        self.input.format,
                        &self.input.text_column,
                        &self.input.id_column,
                    )),
                    json(&(
                        asked.input.format,
                        &asked.input.text_column,
                        &asked.input.id_column,
                    )),
                )
            })
            .or_else(|| differ("output", json(&self.output), json(&asked.output)))
    }
}

/// The finished job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub finished_at: String,
    pub model: PlannedModel,
    pub input: PlannedInput,
    pub output: PlannedOutput,
    /// Rows written to parts (input rows minus bad rows).
    pub rows_scored: u64,
    pub bad_rows: u64,
    pub parts: Vec<PartRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartRecord {
    pub name: String,
    /// Input rows `first_row .. first_row + rows` (0-based, across files in name order).
    pub first_row: u64,
    pub rows: u64,
    pub scored: u64,
    pub bad: u64,
    pub bytes: u64,
    /// Its bad rows' file, when it has any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names_round_trip_and_nothing_else_is_a_part() {
        let name = part_name(42, OutputFormat::Jsonl);
        assert_eq!(name, "part-000042.jsonl");
        assert_eq!(part_index(&name, OutputFormat::Jsonl), Some(42));
        assert_eq!(part_index(&name, OutputFormat::Parquet), None);
        for other in [
            "part-42.jsonl",
            "_job.json",
            "part-000042.jsonl.tmp",
            "part-00004x.jsonl",
        ] {
            assert_eq!(part_index(other, OutputFormat::Jsonl), None, "{other}");
        }
    }

    #[test]
    fn a_plan_names_the_first_field_that_differs() {
        let plan = Plan {
            format: PLAN_FORMAT,
            created_at: "t".into(),
            model: PlannedModel {
                asked: "m/aliases/latest".into(),
                version: "v1".into(),
                checkpoint: "m/versions/v1".into(),
                manifest_sha256: "s".into(),
            },
            input: PlannedInput {
                uri: "in".into(),
                format: InputFormat::Jsonl,
                text_column: "text".into(),
                id_column: None,
                files: vec![InputFile {
                    name: "a.jsonl".into(),
                    bytes: 3,
                    sha256: "h".into(),
                }],
                rows: 1,
                bad_rows: 0,
            },
            output: PlannedOutput {
                format: OutputFormat::Jsonl,
                rows_per_part: 10,
                parts: 1,
                top_k: 3,
                threshold: None,
                groupings: vec![],
                max_text_bytes: 4096,
            },
        };
        let mut later = plan.clone();
        later.created_at = "later".into();
        later.model.version = "v2".into();
        assert_eq!(
            plan.mismatch(&later),
            None,
            "the alias may have moved: same job"
        );
        later.input.files[0].sha256 = "other".into();
        let why = plan.mismatch(&later).unwrap();
        assert!(why.starts_with("input files"), "{why}");
        let mut later = plan.clone();
        later.output.top_k = 5;
        assert!(plan.mismatch(&later).unwrap().starts_with("output"));
    }
}
