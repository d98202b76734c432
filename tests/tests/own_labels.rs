//! A classifier on someone else's labels, end to end: small datasets made here with their own
//! label names (a CSV with one grouping and no dev / test files, a single-label JSON Lines set),
//! trained and published by the real trainer, served by the real predictor and classified over
//! goemotions.v1, the Open Inference Protocol over gRPC (NVIDIA's Triton client) and REST (curl).
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use goemotions_tests::*;
use proto::v1::{ClassifyOptions, ClassifyRequest, GetModelInfoRequest};

const BILLING: [&str; 6] = [
    "I was charged twice for my subscription",
    "please refund the payment on my card",
    "the invoice amount is wrong",
    "why did my bill go up this month",
    "cancel the recurring charge on my account",
    "my credit card was billed without consent",
];
const BUG: [&str; 6] = [
    "the app crashes when I open settings",
    "error 500 on the login page",
    "the screen freezes after the update",
    "buttons do nothing when I tap them",
    "sync fails with a timeout error",
    "the export feature throws an exception",
];
const PRAISE: [&str; 6] = [
    "thanks, your support team is great",
    "love the new design, well done",
    "fantastic service, very happy",
    "you folks are awesome, thank you",
    "best app I have used this year",
    "great job on the quick fix, cheers",
];

/// Texts of one label with a varying tail, so no two examples are equal.
fn texts(templates: &[&str], n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{} (ticket {i})", templates[i % templates.len()]))
        .collect()
}

fn csv_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A CSV support-ticket dataset: 3 labels, some tickets with two, a "tone" grouping, train only.
fn write_tickets(dir: &Path) {
    let mut csv = String::from("id,text,labels\n");
    let mut id = 0;
    let mut push = |text: &str, labels: &str| {
        id += 1;
        csv.push_str(&format!("t{id},{},{labels}\n", csv_quote(text)));
    };
    for t in texts(&BILLING, 45) {
        push(&t, "billing");
    }
    for t in texts(&BUG, 45) {
        push(&t, "bug");
    }
    for t in texts(&PRAISE, 45) {
        push(&t, "praise");
    }
    for i in 0..15 {
        push(
            &format!("the payment page crashes when I pay my bill ({i})"),
            "billing;bug",
        );
    }
    std::fs::create_dir_all(dir.join("groupings")).unwrap();
    std::fs::write(dir.join("train.csv"), csv).unwrap();
    std::fs::write(
        dir.join("groupings/tone.json"),
        r#"{"negative": ["billing", "bug"], "positive": ["praise"]}"#,
    )
    .unwrap();
}

/// A single-label JSON Lines dataset with all three splits and label names in labels.txt.
fn write_sentiment(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("labels.txt"), "complaint\nbug report\nthanks\n").unwrap();
    std::fs::create_dir_all(dir.join("groupings")).unwrap();
    std::fs::write(
        dir.join("groupings/mood.json"),
        r#"{"unhappy": ["complaint", "bug report"], "happy": ["thanks"]}"#,
    )
    .unwrap();
    for (split, n) in [("train", 40), ("dev", 8), ("test", 8)] {
        let mut out = String::new();
        for (label, templates) in [("complaint", &BILLING), ("bug report", &BUG)] {
            for t in texts(templates, n) {
                out.push_str(
                    &serde_json::json!({"text": format!("{split}: {t}"), "label": label})
                        .to_string(),
                );
                out.push('\n');
            }
        }
        for (i, t) in texts(&PRAISE, n).into_iter().enumerate() {
            // Label ids work too when labels.txt names the labels.
            out.push_str(&serde_json::json!({"text": format!("{split}: {t}"), "labels": [2], "id": format!("{split}-{i}")}).to_string());
            out.push('\n');
        }
        std::fs::write(dir.join(format!("{split}.jsonl")), out).unwrap();
    }
}

/// Trains and publishes `data` as `name` (alias latest) with the real trainer; returns the
/// version's manifest and the report's markdown.
fn train(registry: &Path, data: &Path, name: &str) -> (serde_json::Value, String) {
    let report = registry.join(format!("report-{name}"));
    let out = Command::new(bin("trainer"))
        .args([
            "train",
            "--epochs",
            "4",
            "--lr",
            "3e-4",
            "--batch-size",
            "16",
        ])
        .args(["--baseline", "true", "--threads", "2", "--device", "cpu"])
        .args(["--model-name", name])
        .arg("--registry")
        .arg(registry)
        .arg("--report-dir")
        .arg(&report)
        .arg("--data-dir")
        .arg(data)
        .arg("--base-model")
        .arg(base_model())
        .output()
        .expect("run trainer");
    assert!(
        out.status.success(),
        "trainer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let alias: serde_json::Value = serde_json::from_slice(
        &std::fs::read(registry.join(format!("models/{name}/aliases/latest.json"))).unwrap(),
    )
    .unwrap();
    let version = alias["version"].as_str().unwrap();
    let manifest = serde_json::from_slice(
        &std::fs::read(registry.join(format!("models/{name}/versions/{version}/manifest.json")))
            .unwrap(),
    )
    .unwrap();
    (
        manifest,
        std::fs::read_to_string(report.join("report.md")).unwrap(),
    )
}

fn python(var: &str, venv: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        workspace_root()
            .join(format!(".cache/tools/{venv}/bin/python"))
            .display()
            .to_string()
    })
}

/// GET (`body` None) or POST a JSON body with curl; the answer's JSON (a non-2xx status fails).
fn curl_json(url: &str, body: Option<&str>) -> serde_json::Value {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--fail-with-body"]);
    if let Some(body) = body {
        cmd.args(["-H", "content-type: application/json", "-d", body]);
    }
    let out = cmd.arg(url).output().expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_dataset_with_its_own_labels_and_grouping_is_trained_and_served_by_every_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tickets-data");
    write_tickets(&data);
    let registry = dir.path().join("registry");
    let (manifest, report) = train(&registry, &data, "tickets");
    assert_eq!(
        manifest["labels"],
        serde_json::json!(["billing", "bug", "praise"])
    );
    assert_eq!(manifest["problem_type"], "multi_label_classification");
    assert_eq!(
        manifest["format_version"], 1,
        "readable by older predictors"
    );
    assert_eq!(manifest["dataset"]["name"], "tickets-data");
    assert_eq!(manifest["dataset"]["format"], "csv");
    assert_eq!(
        manifest["dataset"]["made_splits"],
        serde_json::json!(["dev", "test"])
    );
    assert_eq!(manifest["dataset"]["split_seed"], 42);
    assert_eq!(manifest["groupings"][0]["name"], "tone");
    assert_eq!(manifest["thresholds"].as_array().unwrap().len(), 3);
    // A calibration is fitted on dev and recorded, applied or not, with the reason: Platt
    // scaling (a temperature and a shift per label) or temperature scaling.
    let calibration = &manifest["calibration"];
    assert_eq!(calibration["temperatures"].as_array().unwrap().len(), 3);
    match calibration["method"].as_str() {
        Some("platt") => assert_eq!(calibration["shifts"].as_array().unwrap().len(), 3),
        Some("temperature") => assert!(calibration.get("shifts").is_none(), "{calibration}"),
        other => panic!("calibration method {other:?}"),
    }
    assert!(calibration["applied"].is_boolean(), "{calibration}");
    assert!(calibration["reason"]
        .as_str()
        .unwrap()
        .contains("dev log-loss"));
    assert!(report.contains("## Calibration"), "{report}");
    assert!(
        report.contains("![Reliability](reliability.svg)"),
        "{report}"
    );
    assert!(registry.join("report-tickets/reliability.svg").exists());
    assert!(
        report.starts_with("# tickets-data: fine-tuned vs baseline"),
        "{report}"
    );
    assert!(report.contains("| tone macro F1 |"), "{report}");
    assert!(
        !report.contains("Ekman") && !report.contains("Python MiniLM"),
        "{report}"
    );

    let http = format!("127.0.0.1:{}", free_port());
    let alias = registry.join("models/tickets/aliases/latest");
    let (mut proc, addr, _) = spawn_predictor(
        alias.to_str().unwrap(),
        &["--http-listen", &http],
        &[],
        dir.path().join("p.log"),
    );
    wait_serving(&mut proc, &addr, Duration::from_secs(60)).await;

    // goemotions.v1: labels, groupings and output from the loaded model.
    let mut c = client(&addr).await;
    let info = c
        .get_model_info(GetModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.labels, ["billing", "bug", "praise"]);
    assert_eq!(info.dataset, "tickets-data");
    assert_eq!(info.problem_type, "multi_label_classification");
    assert_eq!(info.groupings.len(), 1);
    assert_eq!(info.groupings[0].name, "tone");
    assert_eq!(info.groupings[0].groups[0].name, "negative");
    assert_eq!(info.groupings[0].groups[0].label_ids, [0, 1]);
    let texts = [
        "please refund me, I was charged twice",
        "the app crashes on startup",
        "thank you, great support",
    ];
    let response = c
        .classify(ClassifyRequest {
            texts: texts.iter().map(|t| t.to_string()).collect(),
            options: Some(ClassifyOptions {
                top_k: 3,
                return_all_scores: true,
                grouping_names: vec!["tone".into()],
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    for r in &response.results {
        assert_eq!(r.scores.len(), 3);
        assert_eq!(r.groups.len(), 1);
        assert_eq!(r.groups[0].name, "tone");
        let group_scores: Vec<f32> = r.groups[0].scores.iter().map(|s| s.score).collect();
        assert_eq!(group_scores, [r.scores[0].max(r.scores[1]), r.scores[2]]);
    }
    let best = |i: usize| response.results[i].top_k[0].name.clone();
    assert_eq!(
        (best(0), best(1), best(2)),
        ("billing".into(), "bug".into(), "praise".into()),
        "{response:?}"
    );

    // OIP over gRPC with Triton's client: the output is [n, 3].
    let run = Command::new(python("GRPC_PYTHON", "grpc"))
        .arg(workspace_root().join("examples/python/oip_triton.py"))
        .arg(addr.trim_start_matches("http://"))
        .arg("tickets")
        .args(texts)
        .output()
        .expect("run the Triton client (scripts/setup.sh --with-clients)");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let out: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let width = &out["model"]["outputs"][0]["shape"][1];
    assert_eq!(width.to_string().trim_matches('"'), "3", "{out}");
    for (r, want) in out["results"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&response.results)
    {
        let got: Vec<f32> = r["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got, want.scores, "the same scores over every protocol");
    }

    // REST with curl: groupings by name in the parameters.
    let body = curl_json(
        &format!("http://{http}/v2/models/tickets/infer"),
        Some(
            &serde_json::json!({
                "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [texts[1]]}],
                "parameters": {"groupings": "tone"}
            })
            .to_string(),
        ),
    );
    let outputs = body["outputs"].as_array().unwrap();
    let scores = outputs.iter().find(|o| o["name"] == "scores").unwrap();
    assert_eq!(scores["shape"], serde_json::json!([1, 3]), "{body}");
    let labels = outputs.iter().find(|o| o["name"] == "labels").unwrap();
    let doc: serde_json::Value = serde_json::from_str(labels["data"][0].as_str().unwrap()).unwrap();
    assert!(
        doc["groups"]["tone"]["scores"]["negative"].is_number(),
        "{doc}"
    );
    let meta = curl_json(&format!("http://{http}/v2/models/tickets"), None);
    assert_eq!(
        meta["outputs"][0]["shape"],
        serde_json::json!([-1, 3]),
        "{meta}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_label_dataset_trains_a_softmax_classifier_that_answers_its_best_label() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("support-intent");
    write_sentiment(&data);
    let registry = dir.path().join("registry");
    let (manifest, report) = train(&registry, &data, "intent");
    assert_eq!(manifest["problem_type"], "single_label_classification");
    assert_eq!(manifest["format_version"], 2, "older predictors refuse it");
    assert_eq!(manifest["thresholds"], serde_json::json!([]));
    assert!(
        manifest.get("calibration").is_none(),
        "a softmax is not scaled per label"
    );
    assert!(!report.contains("## Calibration"), "{report}");
    assert_eq!(manifest["groupings"][0]["name"], "mood");
    assert_eq!(
        manifest["labels"],
        serde_json::json!(["complaint", "bug report", "thanks"])
    );
    assert!(
        manifest["metrics"]["test.accuracy"].as_f64().unwrap() > 0.0,
        "{manifest}"
    );
    assert!(
        report.contains("| accuracy |") && report.contains("Single-label"),
        "{report}"
    );
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(registry.join(format!(
            "models/intent/versions/{}/config.json",
            manifest["version"].as_str().unwrap()
        )))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(config["problem_type"], "single_label_classification");

    let alias = registry.join("models/intent/aliases/latest");
    let (mut proc, addr, _) =
        spawn_predictor(alias.to_str().unwrap(), &[], &[], dir.path().join("p.log"));
    wait_serving(&mut proc, &addr, Duration::from_secs(60)).await;
    let mut c = client(&addr).await;
    let info = c
        .get_model_info(GetModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.problem_type, "single_label_classification");
    assert!(info.thresholds.is_empty());
    let response = c
        .classify(ClassifyRequest {
            texts: vec![
                "my card was charged twice".into(),
                "it crashes every time".into(),
                "thanks a lot, awesome".into(),
            ],
            options: Some(ClassifyOptions {
                return_all_scores: true,
                grouping_names: vec!["mood".into()],
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    for r in &response.results {
        let group_scores: Vec<f32> = r.groups[0].scores.iter().map(|s| s.score).collect();
        assert_eq!(
            group_scores,
            [r.scores[2], r.scores[0].max(r.scores[1])],
            "groups (happy, unhappy: sorted by name) served as for multi-label models"
        );
        assert_eq!(r.labels.len(), 1, "exactly the best label: {r:?}");
        assert_eq!(r.labels[0].name, r.top_k[0].name);
        let sum: f32 = r.scores.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "a softmax sums to 1: {sum}");
    }
    let status = c
        .classify(ClassifyRequest {
            texts: vec!["hi".into()],
            options: Some(ClassifyOptions {
                grouping_names: vec!["ekman".into()],
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
}

#[test]
fn bad_data_is_refused_before_training_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("labels.txt"), "a\nb\n").unwrap();
    std::fs::write(
        dir.path().join("train.jsonl"),
        "{\"text\": \"fine\", \"label\": \"a\"}\n{\"text\": \"odd\", \"label\": \"c\"}\n",
    )
    .unwrap();
    let out = Command::new(bin("trainer"))
        .args(["train", "--device", "cpu", "--registry"])
        .arg(dir.path().join("registry"))
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--base-model")
        .arg(base_model())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("train.jsonl:2:") && stderr.contains("unknown label \"c\""),
        "{stderr}"
    );
    assert!(
        !dir.path().join("registry/models").exists(),
        "nothing published"
    );
}

/// A GoEmotions checkpoint as published before labels became data (no `problem_type`, no
/// `dataset` in its manifest) loads as the multi-label GoEmotions model it is and answers
/// exactly what the same weights answer with the current manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_published_before_labels_were_data_answers_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let version = shared_registry(dir.path());
    let old = format!("{version}-old");
    copy_version(dir.path(), "goemotions", &version, &old);
    rewrite_version(
        dir.path(),
        "goemotions",
        &old,
        |_| {},
        |m| {
            let m = m.as_object_mut().unwrap();
            assert!(m.remove("problem_type").is_some() && m.remove("dataset").is_some());
        },
    );
    let texts: Vec<String> = [
        "I'm so happy that I finally passed the exam!",
        "This is the worst thing that has ever happened to me.",
        "Thanks a lot, you really made my day :)",
    ]
    .map(String::from)
    .to_vec();
    let mut answers = Vec::new();
    for v in [&version, &old] {
        let path = dir.path().join(format!("models/goemotions/versions/{v}"));
        let (mut proc, addr, _) = spawn_predictor(
            path.to_str().unwrap(),
            &[],
            &[],
            dir.path().join(format!("p-{v}.log")),
        );
        wait_serving(&mut proc, &addr, Duration::from_secs(60)).await;
        let mut c = client(&addr).await;
        let info = c
            .get_model_info(GetModelInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.problem_type, "multi_label_classification");
        assert_eq!(info.dataset, "GoEmotions");
        assert_eq!(info.labels.len(), 28);
        let mut r = c
            .classify(ClassifyRequest {
                texts: texts.clone(),
                options: Some(ClassifyOptions {
                    return_all_scores: true,
                    grouping_names: vec!["ekman".into(), "sentiment".into()],
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner();
        r.model_version.clear();
        answers.push(r);
    }
    assert_eq!(answers[0], answers[1], "the same scores, labels and groups");
}
