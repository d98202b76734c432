//! Reading a batch job's input: JSON Lines, CSV or Parquet files, one row at a time, each row
//! with its place (file and line, or row in a Parquet file) so that a bad row can be reported
//! and skipped. A missing column or an unreadable file is an error for the whole input.
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

/// The input format as asked for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormatChoice {
    Auto,
    Jsonl,
    Csv,
    Parquet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    Jsonl,
    Csv,
    Parquet,
}

impl InputFormat {
    /// The format a file name's extension says, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "ndjson" | "json" => Some(Self::Jsonl),
            "csv" => Some(Self::Csv),
            "parquet" | "pq" => Some(Self::Parquet),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{file}: cannot read: {message}")]
    Unreadable { file: String, message: String },
    #[error("{file}: no column {column:?} (columns: {found})")]
    MissingColumn {
        file: String,
        column: String,
        found: String,
    },
    #[error("{file}: column {column:?} has type {found}; {expected}")]
    ColumnType {
        file: String,
        column: String,
        found: String,
        expected: &'static str,
    },
    #[error("{file}: no row has a field {column:?}")]
    NoSuchField { file: String, column: String },
}

/// Which columns to read.
#[derive(Debug, Clone)]
pub struct Columns {
    pub text: String,
    pub id: Option<String>,
    /// Longest JSON line read (a longer one is a bad row, never held in memory whole).
    pub max_line_bytes: usize,
}

impl Columns {
    /// A JSON line may escape every byte of a text of `max_text_bytes` (`\u00XX`: 6 bytes).
    pub fn new(text: String, id: Option<String>, max_text_bytes: usize) -> Self {
        Self {
            text,
            id,
            max_line_bytes: max_text_bytes.saturating_mul(6).saturating_add(64 * 1024),
        }
    }
}

/// Where a row is: its file (index into the input's files) and its 1-based line (JSON Lines,
/// CSV: the line the record starts on) or row (Parquet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub file: usize,
    pub line: u64,
}

/// One input row: its text, or why it cannot be scored.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub place: Place,
    pub id: Option<String>,
    pub text: Result<String, String>,
}

impl Row {
    /// A row that cannot be scored, and why.
    fn bad(place: Place, why: String) -> Self {
        Self {
            place,
            id: None,
            text: Err(why),
        }
    }
}

/// Reads every row of `files` (in order) and hands it to `each`; `each` returning an error
/// stops the reading with it.
pub fn read_rows<E: From<InputError>>(
    files: &[PathBuf],
    names: &[String],
    format: InputFormat,
    columns: &Columns,
    mut each: impl FnMut(Row) -> Result<(), E>,
) -> Result<(), E> {
    for (index, path) in files.iter().enumerate() {
        let name = names
            .get(index)
            .cloned()
            .unwrap_or_else(|| path.display().to_string());
        match format {
            InputFormat::Jsonl => read_jsonl(path, &name, index, columns, &mut each)?,
            InputFormat::Csv => read_csv(path, &name, index, columns, &mut each)?,
            InputFormat::Parquet => read_parquet(path, &name, index, columns, &mut each)?,
        }
    }
    Ok(())
}

fn unreadable(file: &str, e: impl std::fmt::Display) -> InputError {
    InputError::Unreadable {
        file: file.to_string(),
        message: e.to_string(),
    }
}

fn open(path: &Path, name: &str) -> Result<File, InputError> {
    File::open(path).map_err(|e| unreadable(name, e))
}

fn read_jsonl<E: From<InputError>>(
    path: &Path,
    name: &str,
    file: usize,
    columns: &Columns,
    each: &mut impl FnMut(Row) -> Result<(), E>,
) -> Result<(), E> {
    let mut reader = BufReader::with_capacity(1 << 20, open(path, name)?);
    let mut buf = Vec::new();
    let mut line = 0u64;
    let mut text_seen = false;
    let mut rows = 0u64;
    loop {
        buf.clear();
        let (n, whole) = read_line_bounded(&mut reader, &mut buf, columns.max_line_bytes)
            .map_err(|e| unreadable(name, e))?;
        if n == 0 {
            break;
        }
        line += 1;
        let trimmed = buf.trim_ascii();
        if trimmed.is_empty() && whole {
            continue;
        }
        rows += 1;
        let place = Place { file, line };
        if !whole {
            each(Row::bad(place, format!(
                    "line is {n} bytes, over the {} a line may have (6 × --max-text-bytes + 64 KiB)",
                    columns.max_line_bytes
                )))?;
            continue;
        }
        let row = match jsonl_row(trimmed, columns) {
            Ok((id, text)) => {
                text_seen |= text.is_ok();
                Row { place, id, text }
            }
            Err(message) => Row::bad(place, message),
        };
        each(row)?;
    }
    if rows > 0 && !text_seen {
        return Err(InputError::NoSuchField {
            file: name.to_string(),
            column: columns.text.clone(),
        }
        .into());
    }
    Ok(())
}

/// Reads one line (through its `\n`) into `buf`, keeping at most `limit` bytes of it: returns the
/// bytes the line had and whether all of them were kept. A line without end is never held whole.
fn read_line_bounded(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<(usize, bool)> {
    let mut total = 0;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok((total, total <= limit));
        }
        let (take, end) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if total + take <= limit {
            buf.extend_from_slice(&available[..take]);
        }
        total += take;
        reader.consume(take);
        if end {
            return Ok((total, total <= limit));
        }
    }
}

/// The id and text of one JSON line; `Err` when the line itself is unusable.
#[allow(clippy::type_complexity)]
fn jsonl_row(
    line: &[u8],
    columns: &Columns,
) -> Result<(Option<String>, Result<String, String>), String> {
    let text = std::str::from_utf8(line)
        .map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to()))?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let serde_json::Value::Object(mut object) = value else {
        return Err("not a JSON object".into());
    };
    let id = match &columns.id {
        None => None,
        Some(field) => match object.remove(field) {
            Some(serde_json::Value::String(s)) => Some(s),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            Some(serde_json::Value::Null) | None => return Err(format!("missing id {field:?}")),
            Some(_) => return Err(format!("id {field:?} is neither a string nor a number")),
        },
    };
    let text = match object.remove(&columns.text) {
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(serde_json::Value::Null) | None => Err(format!("missing text {:?}", columns.text)),
        Some(_) => Err(format!("text {:?} is not a string", columns.text)),
    };
    Ok((id, text))
}

fn read_csv<E: From<InputError>>(
    path: &Path,
    name: &str,
    file: usize,
    columns: &Columns,
    each: &mut impl FnMut(Row) -> Result<(), E>,
) -> Result<(), E> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .buffer_capacity(1 << 20)
        .from_reader(open(path, name)?);
    let header = reader
        .byte_headers()
        .map_err(|e| unreadable(name, e))?
        .clone();
    let header: Vec<String> = header
        .iter()
        .map(|h| String::from_utf8_lossy(h).trim().to_string())
        .collect();
    let find = |column: &str| {
        header
            .iter()
            .position(|h| h == column)
            .ok_or_else(|| InputError::MissingColumn {
                file: name.to_string(),
                column: column.to_string(),
                found: header.join(", "),
            })
    };
    let text_at = find(&columns.text)?;
    let id_at = columns.id.as_deref().map(find).transpose()?;
    let mut record = csv::ByteRecord::new();
    loop {
        let more = reader
            .read_byte_record(&mut record)
            .map_err(|e| unreadable(name, e))?;
        if !more {
            break;
        }
        let line = record.position().map_or(0, |p| p.line());
        let place = Place { file, line };
        if record.len() != header.len() {
            each(Row::bad(
                place,
                format!(
                    "{} fields where the header has {}",
                    record.len(),
                    header.len()
                ),
            ))?;
            continue;
        }
        let field = |at: usize, what: &str| {
            std::str::from_utf8(&record[at])
                .map(str::to_string)
                .map_err(|e| format!("{what} is invalid UTF-8 at byte {}", e.valid_up_to()))
        };
        let id = match id_at.map(|at| field(at, "id")) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(message)) => {
                each(Row::bad(place, message))?;
                continue;
            }
        };
        let text = field(text_at, "text");
        each(Row { place, id, text })?;
    }
    Ok(())
}

fn read_parquet<E: From<InputError>>(
    path: &Path,
    name: &str,
    file: usize,
    columns: &Columns,
    each: &mut impl FnMut(Row) -> Result<(), E>,
) -> Result<(), E> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(open(path, name)?)
        .map_err(|e| unreadable(name, e))?;
    let schema = builder.schema().clone();
    let find = |column: &str| {
        schema
            .fields()
            .iter()
            .position(|f| f.name() == column)
            .ok_or_else(|| InputError::MissingColumn {
                file: name.to_string(),
                column: column.to_string(),
                found: schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    };
    let text_at = find(&columns.text)?;
    check_type(name, &columns.text, schema.field(text_at).data_type(), true)?;
    let id_at = columns.id.as_deref().map(find).transpose()?;
    if let (Some(at), Some(column)) = (id_at, &columns.id) {
        check_type(name, column, schema.field(at).data_type(), false)?;
    }
    let mut roots = vec![text_at];
    roots.extend(id_at);
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(8192)
        .build()
        .map_err(|e| unreadable(name, e))?;
    let mut line = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| unreadable(name, e))?;
        let texts = batch
            .column_by_name(&columns.text)
            .ok_or_else(|| unreadable(name, "text column missing from a record batch"))?;
        let ids = match &columns.id {
            Some(column) => Some(
                batch
                    .column_by_name(column)
                    .ok_or_else(|| unreadable(name, "id column missing from a record batch"))?,
            ),
            None => None,
        };
        for i in 0..batch.num_rows() {
            line += 1;
            let place = Place { file, line };
            let id = match ids {
                None => None,
                Some(ids) => match value(ids, i) {
                    Ok(Some(id)) => Some(id),
                    Ok(None) => {
                        each(Row::bad(place, "missing id".into()))?;
                        continue;
                    }
                    Err(message) => {
                        each(Row::bad(place, format!("id {message}")))?;
                        continue;
                    }
                },
            };
            let text = match value(texts, i) {
                Ok(Some(text)) => Ok(text),
                Ok(None) => Err(format!("missing text {:?}", columns.text)),
                Err(message) => Err(format!("text {message}")),
            };
            each(Row { place, id, text })?;
        }
    }
    Ok(())
}

fn check_type(file: &str, column: &str, found: &DataType, text: bool) -> Result<(), InputError> {
    let strings = matches!(
        found,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
    );
    let integers = matches!(
        found,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
    );
    if strings || (!text && integers) {
        return Ok(());
    }
    Err(InputError::ColumnType {
        file: file.to_string(),
        column: column.to_string(),
        found: found.to_string(),
        expected: if text {
            "a text column must hold strings (or UTF-8 binary)"
        } else {
            "an id column must hold strings or integers"
        },
    })
}

/// Row `i` of a string, binary or integer column as text; `Ok(None)` for a null.
fn value(array: &ArrayRef, i: usize) -> Result<Option<String>, String> {
    use arrow_array::types::*;
    if array.is_null(i) {
        return Ok(None);
    }
    let bytes = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(|s| Some(s.to_string()))
            .map_err(|e| format!("is invalid UTF-8 at byte {}", e.valid_up_to()))
    };
    Ok(Some(match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().value(i).to_string(),
        DataType::LargeUtf8 => array.as_string::<i64>().value(i).to_string(),
        DataType::Utf8View => array.as_string_view().value(i).to_string(),
        DataType::Binary => return bytes(array.as_binary::<i32>().value(i)),
        DataType::LargeBinary => return bytes(array.as_binary::<i64>().value(i)),
        DataType::Int8 => array.as_primitive::<Int8Type>().value(i).to_string(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(i).to_string(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(i).to_string(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(i).to_string(),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(i).to_string(),
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(i).to_string(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(i).to_string(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(i).to_string(),
        other => return Err(format!("has unsupported type {other}")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(content: &[u8], name: &str, format: InputFormat, id: Option<&str>) -> Vec<Row> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let mut out = Vec::new();
        read_rows::<InputError>(
            &[path],
            &[name.to_string()],
            format,
            &Columns::new("text".into(), id.map(String::from), 4096),
            |row| {
                out.push(row);
                Ok(())
            },
        )
        .unwrap();
        out
    }

    #[test]
    fn jsonl_rows_carry_their_line_and_bad_lines_are_rows_with_a_reason() {
        let content =
            b"{\"id\": 7, \"text\": \"fine\"}\n\n{\"id\": \"b\", \"text\": \"caf\xe9\"}\n{\"id\": \"c\"}\nnot json\n{\"id\":\"d\",\"text\":\"ok\"}\r\n";
        let got = rows(content, "in.jsonl", InputFormat::Jsonl, Some("id"));
        assert_eq!(got.len(), 5, "the blank line is no row");
        assert_eq!(got[0].id.as_deref(), Some("7"));
        assert_eq!(got[0].text.as_deref(), Ok("fine"));
        assert_eq!(got[1].place.line, 3);
        assert!(got[1].text.as_ref().unwrap_err().contains("invalid UTF-8"));
        assert!(got[2].text.as_ref().unwrap_err().contains("missing text"));
        assert!(got[3].text.as_ref().unwrap_err().contains("not JSON"));
        assert_eq!(got[4].text.as_deref(), Ok("ok"));
        assert_eq!(got[4].place.line, 6);
    }

    #[test]
    fn a_line_over_the_limit_is_a_bad_row_and_the_next_line_is_read() {
        let mut content = b"{\"text\": \"".to_vec();
        content.extend(std::iter::repeat_n(b'a', 100_000));
        content.extend_from_slice(b"\"}\n{\"text\": \"short\"}\n");
        let got = rows(&content, "in.jsonl", InputFormat::Jsonl, None);
        assert_eq!(got.len(), 2);
        assert!(
            got[0].text.as_ref().unwrap_err().contains("over"),
            "{:?}",
            got[0].text
        );
        assert_eq!(
            (got[1].place.line, got[1].text.as_deref()),
            (2, Ok("short"))
        );
    }

    #[test]
    fn csv_rows_quote_and_report_uneven_records() {
        let content = b"id,text\n1,\"a, quoted\nline\"\n2,x,extra\n3,caf\xe9\n4,plain\n";
        let got = rows(content, "in.csv", InputFormat::Csv, Some("id"));
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].text.as_deref(), Ok("a, quoted\nline"));
        assert_eq!(got[1].place.line, 4);
        assert!(got[1].text.as_ref().unwrap_err().contains("3 fields"));
        assert!(got[2].text.as_ref().unwrap_err().contains("invalid UTF-8"));
        assert_eq!((got[3].id.as_deref(), got[3].place.line), (Some("4"), 6));
    }

    #[test]
    fn a_missing_column_refuses_the_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.csv");
        std::fs::write(&path, "id,body\n1,x\n").unwrap();
        let err = read_rows::<InputError>(
            &[path],
            &["in.csv".into()],
            InputFormat::Csv,
            &Columns::new("text".into(), None, 4096),
            |_| Ok(()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no column \"text\""), "{err}");
    }

    #[test]
    fn formats_follow_extensions() {
        assert_eq!(
            InputFormat::from_name("a/b.JSONL"),
            Some(InputFormat::Jsonl)
        );
        assert_eq!(InputFormat::from_name("x.csv"), Some(InputFormat::Csv));
        assert_eq!(
            InputFormat::from_name("x.parquet"),
            Some(InputFormat::Parquet)
        );
        assert_eq!(InputFormat::from_name("x.txt"), None);
    }
}
