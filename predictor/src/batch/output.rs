//! One output part as bytes: JSON Lines (one object per row, scores by label name in label
//! order) or Parquet (snappy; one Float32 column per label and per group, lists for labels and
//! top-k), and the errors file of a part's bad rows.
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float32Builder, ListBuilder, StringBuilder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::ser::SerializeMap;
use serde::Serialize;

use crate::engine::Labelled;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Jsonl,
    Parquet,
}

impl OutputFormat {
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Jsonl => "jsonl",
            OutputFormat::Parquet => "parquet",
        }
    }
}

/// The names an output needs: labels, and the asked-for groupings with their groups.
pub struct Names {
    pub labels: Vec<String>,
    /// (grouping name, its group names), in the order asked for.
    pub groupings: Vec<(String, Vec<String>)>,
}

/// One scored row.
pub struct Scored {
    pub row: u64,
    pub id: String,
    pub result: Labelled,
}

/// A bad row, as its line in the errors file.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BadRow {
    pub row: u64,
    pub file: String,
    /// 1-based line (JSON Lines, CSV) or row (Parquet) in `file`.
    pub line: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub error: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("writing Parquet: {0}")]
    Parquet(String),
    #[error("writing JSON: {0}")]
    Json(#[from] serde_json::Error),
}

pub fn encode(
    format: OutputFormat,
    names: &Names,
    rows: &[Scored],
) -> Result<Vec<u8>, OutputError> {
    match format {
        OutputFormat::Jsonl => jsonl(names, rows),
        OutputFormat::Parquet => parquet(names, rows),
    }
}

pub fn encode_errors(rows: &[BadRow]) -> Result<Vec<u8>, OutputError> {
    let mut out = Vec::new();
    for row in rows {
        serde_json::to_writer(&mut out, row)?;
        out.push(b'\n');
    }
    Ok(out)
}

/// `{name: value, …}` in the given order (a JSON object keeps the labels' order).
struct Ordered<'a, V: Serialize>(Vec<(&'a str, V)>);

impl<V: Serialize> Serialize for Ordered<'_, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct LabelScore<'a> {
    label: &'a str,
    score: f32,
}

#[derive(Serialize)]
struct GroupAnswer<'a> {
    labels: Vec<&'a str>,
    scores: Ordered<'a, f32>,
}

#[derive(Serialize)]
struct Line<'a> {
    row: u64,
    id: &'a str,
    labels: Vec<&'a str>,
    scores: Ordered<'a, f32>,
    top_k: Vec<LabelScore<'a>>,
    #[serde(skip_serializing_if = "is_empty")]
    groupings: Ordered<'a, GroupAnswer<'a>>,
    truncated: bool,
}

fn is_empty<V: Serialize>(map: &Ordered<'_, V>) -> bool {
    map.0.is_empty()
}

fn jsonl(names: &Names, rows: &[Scored]) -> Result<Vec<u8>, OutputError> {
    let label = |id: usize| names.labels.get(id).map_or("?", String::as_str);
    let mut out = Vec::with_capacity(rows.len() * (64 + 24 * names.labels.len()));
    for row in rows {
        let r = &row.result;
        let groupings = names
            .groupings
            .iter()
            .zip(&r.groups)
            .map(|((grouping, groups), g)| {
                let group = |id: usize| groups.get(id).map_or("?", String::as_str);
                let answer = GroupAnswer {
                    labels: g.labels.iter().map(|s| group(s.id)).collect(),
                    scores: Ordered(g.scores.iter().map(|s| (group(s.id), s.score)).collect()),
                };
                (grouping.as_str(), answer)
            })
            .collect();
        let line = Line {
            row: row.row,
            id: &row.id,
            labels: r.labels.iter().map(|s| label(s.id)).collect(),
            scores: Ordered(
                names
                    .labels
                    .iter()
                    .map(String::as_str)
                    .zip(r.scores.iter().copied())
                    .collect(),
            ),
            top_k: r
                .top_k
                .iter()
                .map(|s| LabelScore {
                    label: label(s.id),
                    score: s.score,
                })
                .collect(),
            groupings: Ordered(groupings),
            truncated: r.truncated,
        };
        serde_json::to_writer(&mut out, &line)?;
        out.push(b'\n');
    }
    Ok(out)
}

/// The Parquet schema of an output part.
pub fn parquet_schema(names: &Names) -> Schema {
    let list = |name: String, item: DataType| {
        Field::new(
            name,
            DataType::List(Arc::new(Field::new("item", item, true))),
            false,
        )
    };
    let mut fields = vec![
        Field::new("row", DataType::UInt64, false),
        Field::new("id", DataType::Utf8, false),
        list("labels".into(), DataType::Utf8),
        list("top_k_labels".into(), DataType::Utf8),
        list("top_k_scores".into(), DataType::Float32),
    ];
    for label in &names.labels {
        fields.push(Field::new(
            format!("score_{label}"),
            DataType::Float32,
            false,
        ));
    }
    for (grouping, groups) in &names.groupings {
        fields.push(list(format!("{grouping}_labels"), DataType::Utf8));
        for group in groups {
            fields.push(Field::new(
                format!("{grouping}_score_{group}"),
                DataType::Float32,
                false,
            ));
        }
    }
    fields.push(Field::new("truncated", DataType::Boolean, false));
    Schema::new(fields)
}

fn parquet(names: &Names, rows: &[Scored]) -> Result<Vec<u8>, OutputError> {
    let n = rows.len();
    let label = |id: usize| names.labels.get(id).map_or("?", String::as_str);
    let mut row_col = UInt64Builder::with_capacity(n);
    let mut id_col = StringBuilder::new();
    let mut labels_col = ListBuilder::new(StringBuilder::new());
    let mut top_labels = ListBuilder::new(StringBuilder::new());
    let mut top_scores = ListBuilder::new(Float32Builder::new());
    let mut scores: Vec<Float32Builder> = (0..names.labels.len())
        .map(|_| Float32Builder::with_capacity(n))
        .collect();
    let mut group_labels: Vec<ListBuilder<StringBuilder>> = names
        .groupings
        .iter()
        .map(|_| ListBuilder::new(StringBuilder::new()))
        .collect();
    let mut group_scores: Vec<Vec<Float32Builder>> = names
        .groupings
        .iter()
        .map(|(_, groups)| {
            (0..groups.len())
                .map(|_| Float32Builder::with_capacity(n))
                .collect()
        })
        .collect();
    let mut truncated = BooleanBuilder::with_capacity(n);
    for row in rows {
        let r = &row.result;
        row_col.append_value(row.row);
        id_col.append_value(&row.id);
        for s in &r.labels {
            labels_col.values().append_value(label(s.id));
        }
        labels_col.append(true);
        for s in &r.top_k {
            top_labels.values().append_value(label(s.id));
            top_scores.values().append_value(s.score);
        }
        top_labels.append(true);
        top_scores.append(true);
        for (column, &score) in scores.iter_mut().zip(&r.scores) {
            column.append_value(score);
        }
        for (g, ((_, groups), answer)) in names.groupings.iter().zip(&r.groups).enumerate() {
            for s in &answer.labels {
                group_labels[g]
                    .values()
                    .append_value(groups.get(s.id).map_or("?", String::as_str));
            }
            group_labels[g].append(true);
            for (column, s) in group_scores[g].iter_mut().zip(&answer.scores) {
                column.append_value(s.score);
            }
        }
        truncated.append_value(r.truncated);
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(row_col.finish()),
        Arc::new(id_col.finish()),
        Arc::new(labels_col.finish()),
        Arc::new(top_labels.finish()),
        Arc::new(top_scores.finish()),
    ];
    columns.extend(scores.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    for (labels, scores) in group_labels.iter_mut().zip(group_scores.iter_mut()) {
        columns.push(Arc::new(labels.finish()));
        columns.extend(scores.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    }
    columns.push(Arc::new(truncated.finish()));
    let schema = Arc::new(parquet_schema(names));
    let batch = RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| OutputError::Parquet(e.to_string()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, schema, Some(props))
        .map_err(|e| OutputError::Parquet(e.to_string()))?;
    writer
        .write(&batch)
        .map_err(|e| OutputError::Parquet(e.to_string()))?;
    writer
        .close()
        .map_err(|e| OutputError::Parquet(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{LabelledGrouping, Scored as LabelScore};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn sample() -> (Names, Vec<Scored>) {
        let names = Names {
            labels: vec!["joy".into(), "anger".into()],
            groupings: vec![("tone".into(), vec!["good".into(), "bad".into()])],
        };
        let result = Labelled {
            labels: vec![LabelScore { id: 0, score: 0.75 }],
            top_k: vec![
                LabelScore { id: 0, score: 0.75 },
                LabelScore { id: 1, score: 0.25 },
            ],
            scores: vec![0.75, 0.25],
            truncated: false,
            num_tokens: 4,
            groups: vec![LabelledGrouping {
                grouping: 0,
                labels: vec![LabelScore { id: 0, score: 0.75 }],
                scores: vec![
                    LabelScore { id: 0, score: 0.75 },
                    LabelScore { id: 1, score: 0.25 },
                ],
            }],
        };
        let rows = vec![Scored {
            row: 3,
            id: "x-3".into(),
            result,
        }];
        (names, rows)
    }

    #[test]
    fn a_jsonl_row_names_labels_scores_top_k_and_groups() {
        let (names, rows) = sample();
        let bytes = encode(OutputFormat::Jsonl, &names, &rows).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(
            text,
            concat!(
                r#"{"row":3,"id":"x-3","labels":["joy"],"scores":{"joy":0.75,"anger":0.25},"#,
                r#""top_k":[{"label":"joy","score":0.75},{"label":"anger","score":0.25}],"#,
                r#""groupings":{"tone":{"labels":["good"],"scores":{"good":0.75,"bad":0.25}}},"truncated":false}"#,
                "\n"
            )
        );
    }

    #[test]
    fn a_parquet_part_reads_back_with_a_column_per_label() {
        let (names, rows) = sample();
        let bytes = encode(OutputFormat::Parquet, &names, &rows).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
            .unwrap()
            .build()
            .unwrap();
        let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
        assert_eq!(batches.len(), 1);
        let b = &batches[0];
        assert_eq!(b.num_rows(), 1);
        let names: Vec<&str> = b
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(
            names,
            [
                "row",
                "id",
                "labels",
                "top_k_labels",
                "top_k_scores",
                "score_joy",
                "score_anger",
                "tone_labels",
                "tone_score_good",
                "tone_score_bad",
                "truncated"
            ]
        );
        use arrow_array::cast::AsArray;
        let joy = b.column_by_name("score_joy").unwrap();
        assert_eq!(
            joy.as_primitive::<arrow_array::types::Float32Type>()
                .value(0),
            0.75
        );
    }
}
