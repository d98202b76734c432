//! `predictor batch` as an analyst runs it: real processes on real files and a real S3 server
//! (moto), a trained checkpoint, GoEmotions test texts. Every row of the input ends up exactly
//! once in a part or in an errors file — after clean runs, after `kill -9` at several points and
//! reruns, and when three shards of an Indexed Job share the work while the alias moves.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::Float32Type;
use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use common::registry::Registry;
use common::store::Store;
use goemotions_tests::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use proto::v1::{ClassifyOptions, ClassifyRequest};

/// `n` GoEmotions test texts with ids `r0`, `r1`, … (cycled, with a suffix, past the split's end).
fn corpus(n: usize) -> Vec<(String, String)> {
    let tsv = std::fs::read_to_string(data_dir().join("test.tsv")).expect("test.tsv");
    let texts: Vec<&str> = tsv.lines().filter_map(|l| l.split('\t').next()).collect();
    (0..n)
        .map(|i| {
            let text = texts[i % texts.len()];
            let text = if i < texts.len() {
                text.to_string()
            } else {
                format!("{text} ({})", i / texts.len())
            };
            (format!("r{i}"), text)
        })
        .collect()
}

fn jsonl(rows: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (id, text) in rows {
        serde_json::to_writer(&mut out, &serde_json::json!({"id": id, "text": text})).unwrap();
        out.push(b'\n');
    }
    out
}

fn batch(model: &str, input: &str, output: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin("predictor"));
    cmd.args([
        "batch", "--model", model, "--input", input, "--output", output,
    ])
    .args(["--device", "cpu"]);
    if !extra.contains(&"--threads") {
        cmd.args(["--threads", "2"]);
    }
    cmd.args(extra).env("RUST_LOG", "info");
    cmd
}

fn run_ok(mut cmd: Command) -> Output {
    let out = cmd.output().expect("run predictor batch");
    assert!(
        out.status.success(),
        "predictor batch failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run_err(mut cmd: Command) -> String {
    let out = cmd.output().expect("run predictor batch");
    assert!(!out.status.success(), "expected a refusal");
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn part_files(dir: &Path) -> Vec<PathBuf> {
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let name = p.file_name().unwrap().to_string_lossy().to_string();
                    name.starts_with("part-") && name.ends_with(".jsonl")
                })
                .collect()
        })
        .unwrap_or_default();
    parts.sort();
    parts
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display())))
        .collect()
}

/// Every row of a JSON Lines output and its errors files.
fn read_jsonl_output(dir: &Path) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let rows = part_files(dir).iter().flat_map(|p| lines(p)).collect();
    let mut errors = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir.join("errors")) {
        for e in entries {
            errors.extend(lines(&e.unwrap().path()));
        }
    }
    (rows, errors)
}

/// Asserts each id of `ids` is in `rows` or `errors` exactly once and nothing else is.
fn assert_each_once(ids: &[String], rows: &[serde_json::Value], errors: &[serde_json::Value]) {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in rows.iter().chain(errors) {
        let key = r["id"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| format!("row {}", r["row"]));
        *seen.entry(key).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "rows written more than once: {twice:?}");
    for id in ids {
        assert!(seen.contains_key(id), "row {id} is missing");
    }
    assert_eq!(seen.len(), ids.len(), "rows that were not in the input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corpus_is_scored_into_parts_with_each_row_once_and_the_served_answers() {
    let dir = tempfile::tempdir().unwrap();
    shared_registry(&dir.path().join("reg"));
    let model = dir.path().join("reg/models/goemotions/aliases/latest");
    let model = model.to_str().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let rows = corpus(1200);
    std::fs::write(input.join("a.jsonl"), jsonl(&rows[..700])).unwrap();
    let mut b = jsonl(&rows[700..]);
    // Bad rows, each with its line: invalid UTF-8 (line 501), a missing text (502), a text over
    // the byte limit (503), not JSON (504); then a blank line, which is no row.
    b.extend_from_slice(b"{\"id\": \"bad-utf8\", \"text\": \"caf\xe9\"}\n");
    b.extend_from_slice(b"{\"id\": \"no-text\"}\n");
    b.extend_from_slice(
        format!("{{\"id\": \"huge\", \"text\": \"{}\"}}\n", "a".repeat(5000)).as_bytes(),
    );
    b.extend_from_slice(b"this is not json\n\n");
    std::fs::write(input.join("b.jsonl"), b).unwrap();
    std::fs::write(input.join("_SUCCESS"), "").unwrap();
    let output = dir.path().join("out");
    let out = run_ok(batch(
        model,
        input.to_str().unwrap(),
        output.to_str().unwrap(),
        &[
            "--id-column",
            "id",
            "--rows-per-part",
            "100",
            "--groupings",
            "ekman",
            "--log-interval-secs",
            "0.05",
        ],
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("written (every part exists)"), "{stdout}");
    assert!(
        stderr.contains("batch progress"),
        "progress is logged off a terminal:\n{stderr}"
    );

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(output.join("_manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["input"]["rows"], 1204);
    assert_eq!(manifest["bad_rows"], 4);
    assert_eq!(manifest["rows_scored"], 1200);
    assert_eq!(manifest["parts"].as_array().unwrap().len(), 13);
    assert_eq!(
        manifest["input"]["files"].as_array().unwrap().len(),
        2,
        "_SUCCESS is no input"
    );
    let (scored, errors) = read_jsonl_output(&output);
    assert_eq!(scored.len(), 1200);
    let mut ids: Vec<String> = rows.iter().map(|(id, _)| id.clone()).collect();
    ids.extend(["no-text", "huge"].map(String::from));
    ids.extend(["row 1200", "row 1203"].map(String::from));
    assert_each_once(&ids, &scored, &errors);
    let error_at = |line: u64| {
        errors
            .iter()
            .find(|e| e["line"] == line)
            .unwrap_or_else(|| panic!("no error at line {line}: {errors:?}"))
    };
    assert_eq!(error_at(501)["file"], "b.jsonl");
    assert!(error_at(501)["error"]
        .as_str()
        .unwrap()
        .contains("invalid UTF-8"));
    assert!(error_at(502)["error"]
        .as_str()
        .unwrap()
        .contains("missing text"));
    assert!(error_at(503)["error"]
        .as_str()
        .unwrap()
        .contains("over --max-text-bytes"));
    assert!(error_at(504)["error"]
        .as_str()
        .unwrap()
        .contains("not JSON"));

    // Each row: 28 scores by name, labels by the model's thresholds, top 3, its Ekman groups.
    let (names, thresholds) = model_labels(&dir.path().join("reg"), &manifest);
    let scores_of = |r: &serde_json::Value| -> Vec<f32> {
        names
            .iter()
            .map(|n| r["scores"][n].as_f64().unwrap() as f32)
            .collect()
    };
    for r in &scored {
        assert_eq!(r["scores"].as_object().unwrap().len(), 28);
        let scores = scores_of(r);
        let labels: BTreeSet<&str> = r["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        let expected: BTreeSet<&str> = names
            .iter()
            .zip(scores.iter().zip(&thresholds))
            .filter(|(_, (&s, &t))| s >= t)
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(labels, expected, "{r}");
        assert_eq!(r["top_k"].as_array().unwrap().len(), 3);
        assert!(r["groupings"]["ekman"]["scores"]
            .as_object()
            .unwrap()
            .contains_key("joy"));
    }

    // The same scores as the served model gives over gRPC.
    let (mut proc, addr, _) = spawn_predictor(model, &[], &[], dir.path().join("serve.log"));
    wait_serving(&mut proc, &addr, Duration::from_secs(60)).await;
    let texts: Vec<String> = rows[..16].iter().map(|(_, t)| t.clone()).collect();
    let served = client(&addr)
        .await
        .classify(ClassifyRequest {
            texts: texts.clone(),
            options: Some(ClassifyOptions {
                return_all_scores: true,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    for (i, result) in served.results.iter().enumerate() {
        let row = scored.iter().find(|r| r["id"] == format!("r{i}")).unwrap();
        assert_eq!(scores_of(row), result.scores, "row r{i}: {}", texts[i]);
    }
}

/// The label names and thresholds of the version a job used.
fn model_labels(registry: &Path, job_manifest: &serde_json::Value) -> (Vec<String>, Vec<f32>) {
    let version = job_manifest["model"]["version"].as_str().unwrap();
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(registry.join(format!(
            "models/goemotions/versions/{version}/manifest.json"
        )))
        .unwrap(),
    )
    .unwrap();
    (
        m["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect(),
        m["thresholds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_f64().unwrap() as f32)
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_any_point_then_a_rerun_ends_with_each_row_once() {
    let dir = tempfile::tempdir().unwrap();
    shared_registry(&dir.path().join("reg"));
    let model = dir.path().join("reg/models/goemotions/aliases/latest");
    let rows = corpus(3000);
    let input = dir.path().join("comments.jsonl");
    std::fs::write(&input, jsonl(&rows)).unwrap();
    let output = dir.path().join("out");
    let (rows_per_part, parts) = (50, 60);
    let cmd = || {
        batch(
            model.to_str().unwrap(),
            input.to_str().unwrap(),
            output.to_str().unwrap(),
            &[
                "--id-column",
                "id",
                "--rows-per-part",
                &rows_per_part.to_string(),
            ],
        )
    };
    let mut kills = Vec::new();
    // Kill as soon as the plan exists, then after 5, 20 and 40 parts.
    for at in [0usize, 5, 20, 40] {
        let mut proc = Proc::spawn(cmd(), dir.path().join(format!("kill-{at}.log")));
        let started = Instant::now();
        loop {
            let ready = if at == 0 {
                output.join("_job.json").exists()
            } else {
                part_files(&output).len() >= at
            };
            if ready || started.elapsed() > Duration::from_secs(120) {
                break;
            }
            assert!(
                proc.wait_timeout(Duration::from_millis(2)).is_none(),
                "the run ended before the kill point {at}:\n{}",
                proc.log_text()
            );
        }
        proc.signal(libc::SIGKILL);
        proc.wait_timeout(Duration::from_secs(10));
        let present = part_files(&output);
        assert!(
            !output.join("_manifest.json").exists(),
            "killed before the end"
        );
        // Whatever exists is whole: every part has all its rows, each a complete JSON line.
        for part in &present {
            assert_eq!(
                lines(part).len(),
                rows_per_part,
                "{} is partial",
                part.display()
            );
        }
        kills.push(present.len());
    }
    assert!(
        kills.windows(2).all(|w| w[0] <= w[1]),
        "reruns keep what was done: {kills:?}"
    );
    let before: BTreeMap<PathBuf, std::time::SystemTime> = part_files(&output)
        .into_iter()
        .map(|p| {
            let t = std::fs::metadata(&p).unwrap().modified().unwrap();
            (p, t)
        })
        .collect();
    assert!(
        before.len() >= 40 && before.len() < parts,
        "{}",
        before.len()
    );
    let out = run_ok(cmd());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "{} scored here, {} already done",
            parts - before.len(),
            before.len()
        )),
        "{stdout}"
    );
    for (part, modified) in &before {
        assert_eq!(
            std::fs::metadata(part).unwrap().modified().unwrap(),
            *modified,
            "{} was written again",
            part.display()
        );
    }
    let (scored, errors) = read_jsonl_output(&output);
    let ids: Vec<String> = rows.iter().map(|(id, _)| id.clone()).collect();
    assert_each_once(&ids, &scored, &errors);
    assert!(output.join("_manifest.json").exists());
    eprintln!("parts present after each kill: {kills:?}");
}

fn write_parquet(rows: &[(String, String)], first: i64) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("comment_id", DataType::Int64, false),
        Field::new("body", DataType::Utf8, true),
    ]));
    let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(
        (0..rows.len() as i64).map(|i| first + i),
    ));
    let texts: ArrayRef = Arc::new(StringArray::from_iter_values(
        rows.iter().map(|(_, t)| t.as_str()),
    ));
    let batch = RecordBatch::try_new(schema.clone(), vec![ids, texts]).unwrap();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_of_an_indexed_job_share_the_parts_with_the_version_planned_first() {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    let v1 = shared_registry(&local);
    // A second version whose thresholds no score reaches: rows labelled by it would have none.
    copy_version(&local, "goemotions", &v1, "v2-strict");
    let v2_manifest = local.join("models/goemotions/versions/v2-strict/manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&v2_manifest).unwrap()).unwrap();
    m["thresholds"] = serde_json::json!(vec![0.9999; 28]);
    std::fs::write(&v2_manifest, serde_json::to_vec(&m).unwrap()).unwrap();

    let s3 = MotoServer::start(dir.path(), "corpora");
    for (k, v) in s3.env() {
        std::env::set_var(k, v);
    }
    let registry = Store::open(&s3.uri("registry")).unwrap();
    upload_dir(&registry, &local).await;
    let rows = corpus(1000);
    let bucket = Store::open(&s3.uri("")).unwrap();
    bucket
        .put("comments/a.parquet", write_parquet(&rows[..600], 0).into())
        .await
        .unwrap();
    bucket
        .put(
            "comments/b.parquet",
            write_parquet(&rows[600..], 600).into(),
        )
        .await
        .unwrap();
    bucket
        .put("comments/_SUCCESS", bytes::Bytes::new())
        .await
        .unwrap();

    let shard = |index: usize| {
        let mut cmd = batch(
            &s3.uri("registry/models/goemotions/aliases/latest"),
            &s3.uri("comments/"),
            &s3.uri("scores/"),
            &[
                "--id-column",
                "comment_id",
                "--text-column",
                "body",
                "--output-format",
                "parquet",
                "--rows-per-part",
                "100",
                "--threads",
                "1",
                "--spool-dir",
            ],
        );
        cmd.arg(dir.path().join("spool"))
            .env("JOB_COMPLETION_INDEX", index.to_string())
            .env("BATCH_SHARD_COUNT", "3")
            .envs(s3.env());
        Proc::spawn(cmd, dir.path().join(format!("shard-{index}.log")))
    };
    let mut first = shard(0);
    let started = Instant::now();
    while !bucket.exists("scores/_job.json").await.unwrap() {
        assert!(
            started.elapsed() < Duration::from_secs(120)
                && first.wait_timeout(Duration::from_millis(20)).is_none(),
            "no plan from shard 0:\n{}",
            first.log_text()
        );
    }
    // The alias moves after the job was planned: the other shards must still score with v1.
    Registry::new(registry.clone())
        .set_alias("goemotions", "latest", "v2-strict", None)
        .await
        .unwrap();
    let mut others = [shard(1), shard(2)];
    let mut scored_by_shard = Vec::new();
    for p in std::iter::once(&mut first).chain(others.iter_mut()) {
        let status = p
            .wait_timeout(Duration::from_secs(300))
            .expect("shard finished");
        let log = p.log_text();
        assert!(status.success(), "{log}");
        let line = log
            .lines()
            .find(|l| l.contains("scored here"))
            .unwrap_or_default()
            .to_string();
        scored_by_shard.push(line);
    }
    let plan: serde_json::Value =
        serde_json::from_slice(&bucket.get("scores/_job.json").await.unwrap()).unwrap();
    assert_eq!(plan["model"]["version"], v1.as_str());
    let manifest: serde_json::Value =
        serde_json::from_slice(&bucket.get("scores/_manifest.json").await.unwrap()).unwrap();
    assert_eq!(manifest["model"]["version"], v1.as_str());
    assert_eq!(manifest["parts"].as_array().unwrap().len(), 10);
    let per_shard: Vec<usize> = scored_by_shard
        .iter()
        .map(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(
        per_shard,
        vec![4, 3, 3],
        "parts p mod 3: {scored_by_shard:?}"
    );

    let thresholds = {
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(local.join(format!("models/goemotions/versions/{v1}/manifest.json")))
                .unwrap(),
        )
        .unwrap();
        m["thresholds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_f64().unwrap() as f32)
            .collect::<Vec<_>>()
    };
    let mut seen = BTreeSet::new();
    let mut labelled = 0;
    for p in 0..10 {
        let bytes = bucket
            .get(&format!("scores/part-{p:06}.parquet"))
            .await
            .unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            let ids = b.column_by_name("id").unwrap().as_string::<i32>().clone();
            let labels = b.column_by_name("labels").unwrap().as_list::<i32>().clone();
            let names: Vec<String> = b
                .schema()
                .fields()
                .iter()
                .filter_map(|f| f.name().strip_prefix("score_").map(String::from))
                .collect();
            assert_eq!(names.len(), 28);
            for i in 0..b.num_rows() {
                assert!(
                    seen.insert(ids.value(i).to_string()),
                    "id {} twice",
                    ids.value(i)
                );
                let got: BTreeSet<String> = labels
                    .value(i)
                    .as_string::<i32>()
                    .iter()
                    .map(|s| s.unwrap().to_string())
                    .collect();
                let want: BTreeSet<String> = names
                    .iter()
                    .zip(&thresholds)
                    .filter(|(n, &t)| {
                        b.column_by_name(&format!("score_{n}"))
                            .unwrap()
                            .as_primitive::<Float32Type>()
                            .value(i)
                            >= t
                    })
                    .map(|(n, _)| n.clone())
                    .collect();
                assert_eq!(
                    got,
                    want,
                    "row {} labelled by v1's thresholds",
                    ids.value(i)
                );
                labelled += usize::from(!got.is_empty());
            }
        }
    }
    assert_eq!(
        seen,
        (0..1000)
            .map(|i: i64| i.to_string())
            .collect::<BTreeSet<_>>()
    );
    assert!(
        labelled > 100,
        "v1 labels many rows; v2 would label almost none ({labelled})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_a_foreign_output_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    shared_registry(&dir.path().join("reg"));
    let model = dir.path().join("reg/models/goemotions/aliases/latest");
    let model = model.to_str().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();

    let csv = dir.path().join("tickets.csv");
    std::fs::write(&csv, "id,body\n1,hello\n").unwrap();
    let err = run_err(batch(model, csv.to_str().unwrap(), out, &[]));
    assert!(
        err.contains("tickets.csv: no column \"text\" (columns: id, body)"),
        "{err}"
    );
    assert!(
        !Path::new(out).join("_job.json").exists(),
        "nothing planned"
    );

    let mostly_bad = dir.path().join("bad.jsonl");
    std::fs::write(&mostly_bad, "{\"text\": \"fine\"}\n{\"text\": \"\"}\n{}\n").unwrap();
    let err = run_err(batch(model, mostly_bad.to_str().unwrap(), out, &[]));
    assert!(
        err.contains("2 of 3 input rows are bad") && err.contains("bad.jsonl line 2: empty text"),
        "{err}"
    );

    let missing = dir.path().join("nope.jsonl");
    let err = run_err(batch(model, missing.to_str().unwrap(), out, &[]));
    assert!(err.contains("nope.jsonl: not found"), "{err}");

    let err = run_err(batch(
        model,
        mostly_bad.to_str().unwrap(),
        out,
        &["--shard-index", "3", "--shard-count", "3"],
    ));
    assert!(err.contains("must be below --shard-count"), "{err}");

    let good = dir.path().join("good.jsonl");
    std::fs::write(&good, jsonl(&corpus(30))).unwrap();
    let err = run_err(batch(
        model,
        good.to_str().unwrap(),
        out,
        &["--groupings", "plutchik"],
    ));
    assert!(err.contains("no grouping \"plutchik\""), "{err}");
    run_ok(batch(model, good.to_str().unwrap(), out, &[]));
    let err = run_err(batch(model, good.to_str().unwrap(), out, &["--top-k", "5"]));
    assert!(
        err.contains("already holds another batch job (output:"),
        "{err}"
    );
    std::fs::write(&good, jsonl(&corpus(31))).unwrap();
    let err = run_err(batch(model, good.to_str().unwrap(), out, &[]));
    assert!(
        err.contains("already holds another batch job (input files:"),
        "{err}"
    );
}
