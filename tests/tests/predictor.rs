//! End-to-end tests of the predictor process: a real checkpoint trained by the real trainer,
//! served over gRPC on 127.0.0.1.
use std::collections::HashMap;
use std::time::Duration;

use common::checkpoint;
use common::registry::Registry;
use common::store::Store;
use goemotions_tests::cases::predictor::{self as cases, serve_latest};
use goemotions_tests::*;
use proto::v1::{
    stream_classify_response::Outcome, ClassifyOptions, ClassifyRequest, StreamClassifyRequest,
};
use tch::Device;
use tonic::Code;

const TEXTS: [&str; 6] = [
    "I'm so happy that I finally passed the deep learning exam!",
    "This is the worst thing that has ever happened to me.",
    "Wow, I did not expect that at all...",
    "Thanks a lot, you really made my day :)",
    "ok",
    "Why would anyone do that? I don't get it.",
];

fn all_scores() -> Option<ClassifyOptions> {
    Some(ClassifyOptions {
        top_k: 3,
        return_all_scores: true,
        threshold: None,
        ..Default::default()
    })
}

/// Scores computed in-process with the same checkpoint, each text scored alone through the one
/// scoring path the trainer's evaluation takes.
async fn in_process_scores(version_dir: &std::path::Path, texts: &[&str]) -> Vec<Vec<f32>> {
    let store = Store::open(version_dir.to_str().unwrap()).unwrap();
    let loaded = checkpoint::read(&store)
        .await
        .unwrap()
        .load_model(Device::Cpu, common::model::Precision::Fp32)
        .unwrap();
    texts
        .iter()
        .map(|t| {
            let e = loaded.tokenizer.encode(t).unwrap();
            common::inference::predict_batch(&loaded.model, &loaded.tokenizer, &[&e]).unwrap()
        })
        .collect()
}

/// A predictor serving the shared trained registry copied into `dir` (`extra` flags added);
/// returns it with its gRPC address, metrics port and the served version.
async fn serve_shared(dir: &std::path::Path, extra: &[&str]) -> (Proc, String, u16, String) {
    let version = shared_registry(dir);
    let alias = dir.join("models/goemotions/aliases/latest");
    let (mut proc, addr, metrics) =
        spawn_predictor(alias.to_str().unwrap(), extra, &[], dir.join("p.log"));
    wait_serving(&mut proc, &addr, Duration::from_secs(60)).await;
    (proc, addr, metrics, version)
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-4, "{what}: {a:?} vs {b:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_streaming_results_equal_the_in_process_model() {
    let dir = tempfile::tempdir().unwrap();
    let version = shared_registry(dir.path());
    let alias = dir.path().join("models/goemotions/aliases/latest");
    let (mut proc, addr, _) =
        spawn_predictor(alias.to_str().unwrap(), &[], &[], dir.path().join("p.log"));
    wait_serving(&mut proc, &addr, Duration::from_secs(60)).await;
    let expected = in_process_scores(
        &dir.path()
            .join(format!("models/goemotions/versions/{version}")),
        &TEXTS,
    )
    .await;

    let mut c = client(&addr).await;
    let response = c
        .classify(ClassifyRequest {
            texts: TEXTS.iter().map(|t| t.to_string()).collect(),
            options: all_scores(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.model_version, version);
    assert_eq!(response.results.len(), TEXTS.len());
    let info = c
        .get_model_info(proto::v1::GetModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.labels.len(), 28);
    assert_eq!(info.labels[27], "neutral");
    for (i, r) in response.results.iter().enumerate() {
        assert_close(&r.scores, &expected[i], TEXTS[i]);
        // Predicted labels are exactly those at or above their own threshold, highest first.
        let passing: Vec<u32> = (0..28)
            .filter(|&j| r.scores[j] >= info.thresholds[j])
            .map(|j| j as u32)
            .collect();
        let mut got: Vec<u32> = r.labels.iter().map(|l| l.id).collect();
        assert!(r.labels.windows(2).all(|w| w[0].score >= w[1].score));
        got.sort();
        assert_eq!(got, passing, "{}", TEXTS[i]);
        assert_eq!(r.top_k.len(), 3);
        assert!(r
            .labels
            .iter()
            .all(|l| l.name == info.labels[l.id as usize]));
    }

    // Many in flight on one stream: every id answered once, with the right scores.
    let n = 120;
    let requests: Vec<StreamClassifyRequest> = (0..n)
        .map(|i| StreamClassifyRequest {
            id: format!("id-{i}"),
            text: TEXTS[i % TEXTS.len()].into(),
            options: all_scores(),
        })
        .collect();
    let mut stream = c
        .classify_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut seen = HashMap::new();
    while let Some(item) = stream.message().await.unwrap() {
        let i: usize = item.id.trim_start_matches("id-").parse().unwrap();
        match item.outcome {
            Some(Outcome::Result(r)) => {
                assert_close(&r.scores, &expected[i % TEXTS.len()], &item.id)
            }
            other => panic!("{}: {other:?}", item.id),
        }
        assert!(seen.insert(item.id, ()).is_none(), "duplicate id");
    }
    assert_eq!(seen.len(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_metrics() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let dir = tempfile::tempdir().unwrap();
    // Not published yet: the predictor runs but is NOT_SERVING.
    let alias = dir.path().join("models/goemotions/aliases/latest");
    let (mut proc, addr, metrics_port) = spawn_predictor(
        alias.to_str().unwrap(),
        &["--poll-interval-secs", "0.2"],
        &[],
        dir.path().join("p.log"),
    );
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = health_status(&addr, "goemotions.v1.Predictor").await {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 2, "NOT_SERVING before a model exists");
    // The image's health check command says the same with its exit status.
    let health_cmd = |addr: &str| {
        std::process::Command::new(bin("predictor"))
            .args(["health", "--addr", addr])
            .output()
            .unwrap()
    };
    let out = health_cmd(&addr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "predictor health before a model"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT_SERVING"));
    let err = client(&addr)
        .await
        .classify(ClassifyRequest {
            texts: vec!["hi".into()],
            options: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);

    shared_registry(dir.path());
    wait_serving(&mut proc, &addr, Duration::from_secs(60)).await;
    assert_eq!(
        health_status(&addr, "goemotions.v1.Predictor").await,
        Some(1)
    );
    let out = health_cmd(&addr);
    assert!(out.status.success(), "predictor health once serving");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SERVING");
    let closed = format!("127.0.0.1:{}", free_port());
    assert_eq!(
        health_cmd(&closed).status.code(),
        Some(1),
        "nothing listening"
    );

    let channel = tonic::transport::Channel::from_shared(addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("{response:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"goemotions.v1.Predictor".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
    // Every listed service is describable, the reflection services included.
    let describe: Vec<ServerReflectionRequest> = names
        .iter()
        .map(|name| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(name.clone())),
        })
        .collect();
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(describe))
        .await
        .unwrap()
        .into_inner();
    for name in &names {
        let answer = answers.message().await.unwrap().unwrap();
        assert!(
            matches!(
                answer.message_response,
                Some(MessageResponse::FileDescriptorResponse(_))
            ),
            "{name}: {answer:?}"
        );
    }
    // buf curl lists every method of every service through reflection (it stops at the first
    // service it cannot describe).
    let buf = std::env::var("BUF_BIN").unwrap_or_else(|_| {
        workspace_root()
            .join(".cache/tools/buf/bin/buf")
            .display()
            .to_string()
    });
    let listed = std::process::Command::new(&buf)
        .args([
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "--list-methods",
        ])
        .arg(&addr)
        .output()
        .expect("run buf curl (scripts/setup.sh --with-clients)");
    let methods = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "{methods}{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    for method in [
        "goemotions.v1.Predictor/ClassifyStream",
        "inference.GRPCInferenceService/ModelInfer",
        "grpc.health.v1.Health/Check",
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ] {
        assert!(methods.contains(method), "{method} not in {methods}");
    }

    client(&addr)
        .await
        .classify(ClassifyRequest {
            texts: vec!["hello".into()],
            options: None,
        })
        .await
        .unwrap();
    let body = metrics_text(metrics_port).await;
    assert!(
        body.contains("predictor_requests_total{code=\"Ok\",method=\"Classify\"} 1"),
        "{body}"
    );
    assert!(body.contains("predictor_model_version{version="), "{body}");
    assert!(body.contains("predictor_batch_size_bucket"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_bad_input_get_documented_status_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (_proc, addr, _) = serve_latest(
        dir.path(),
        &[
            "--max-texts-per-request",
            "4",
            "--max-text-bytes",
            "2000",
            "--auth-token",
            "s3cret",
        ],
    )
    .await;
    let channel = tonic::transport::Channel::from_shared(addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut anonymous = proto::v1::predictor_client::PredictorClient::new(channel.clone());
    let req = |texts: Vec<String>, options| ClassifyRequest { texts, options };
    let err = anonymous
        .classify(req(vec!["hi".into()], None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut c = proto::v1::predictor_client::PredictorClient::with_interceptor(
        channel,
        |mut r: tonic::Request<()>| {
            r.metadata_mut()
                .insert("authorization", "Bearer s3cret".parse().unwrap());
            Ok(r)
        },
    );

    let err = c
        .classify(req(vec!["a".into(); 5], None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("limit is 4"), "{}", err.message());

    let err = c
        .classify(req(vec!["x".repeat(2001)], None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("2001 bytes") && err.message().contains("2000"),
        "{}",
        err.message()
    );

    let bad = Some(ClassifyOptions {
        top_k: 0,
        return_all_scores: false,
        threshold: Some(1.5),
        ..Default::default()
    });
    assert_eq!(
        c.classify(req(vec!["a".into()], bad))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let bad = Some(ClassifyOptions {
        top_k: 29,
        return_all_scores: false,
        threshold: None,
        ..Default::default()
    });
    assert_eq!(
        c.classify(req(vec!["a".into()], bad))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    // Empty text: a defined, empty answer. Long text: truncated to max length and reported.
    let long = "so happy and grateful today ".repeat(60);
    let r = c
        .classify(req(vec!["   ".into(), long, "fine".into()], all_scores()))
        .await
        .unwrap()
        .into_inner();
    assert!(
        r.results[0].labels.is_empty()
            && r.results[0].scores.is_empty()
            && r.results[0].num_tokens == 0
    );
    assert!(
        r.results[1].truncated && r.results[1].num_tokens == 128,
        "{:?}",
        r.results[1]
    );
    assert!(!r.results[2].truncated && r.results[2].scores.len() == 28);

    // A global threshold override changes which labels pass.
    let low = Some(ClassifyOptions {
        top_k: 1,
        return_all_scores: true,
        threshold: Some(0.01),
        ..Default::default()
    });
    let r = c
        .classify(req(vec!["fine".into()], low))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.results[0].labels.len(),
        r.results[0].scores.iter().filter(|&&s| s >= 0.01).count()
    );

    // Per-item errors on a stream leave the stream open.
    let items = vec![
        StreamClassifyRequest {
            id: "too-long".into(),
            text: "y".repeat(3000),
            options: None,
        },
        StreamClassifyRequest {
            id: "ok".into(),
            text: "great!".into(),
            options: None,
        },
    ];
    let mut s = c
        .classify_stream(tokio_stream::iter(items))
        .await
        .unwrap()
        .into_inner();
    let mut outcomes = HashMap::new();
    while let Some(m) = s.message().await.unwrap() {
        outcomes.insert(m.id.clone(), m.outcome.unwrap());
    }
    assert!(
        matches!(&outcomes["too-long"], Outcome::Error(e) if e.code == Code::InvalidArgument as i32)
    );
    assert!(matches!(&outcomes["ok"], Outcome::Result(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let (_proc, addr, _) = serve_latest(
        dir.path(),
        &[
            "--queue-capacity",
            "16",
            "--queue-wait-ms",
            "1",
            "--max-batch-size",
            "1",
            "--max-texts-per-request",
            "64",
        ],
    )
    .await;
    let c = client(&addr).await;
    let long = "what a wonderful and surprising day it was ".repeat(10);
    let calls = (0..8).map(|_| {
        let mut c = c.clone();
        let texts = vec![long.clone(); 16];
        tokio::spawn(async move {
            c.classify(ClassifyRequest {
                texts,
                options: None,
            })
            .await
            .map(|_| ())
        })
    });
    let results = futures::future::join_all(calls).await;
    let codes: Vec<Code> = results
        .into_iter()
        .map(|r| r.unwrap().err().map(|s| s.code()).unwrap_or(Code::Ok))
        .collect();
    // The queue holds one request's 16 texts: while it is being scored, the others wait 1 ms for
    // room and are refused; at least one is served.
    assert!(codes.contains(&Code::ResourceExhausted), "{codes:?}");
    assert!(codes.contains(&Code::Ok), "{codes:?}");
    assert!(
        codes
            .iter()
            .all(|c| matches!(c, Code::Ok | Code::ResourceExhausted)),
        "{codes:?}"
    );
    // The predictor recovers once the queue drains (texts of rejected requests are skipped).
    let mut c = client(&addr).await;
    let mut recovered = false;
    for _ in 0..100 {
        if c.classify(ClassifyRequest {
            texts: vec!["fine".into()],
            options: None,
        })
        .await
        .is_ok()
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "predictor kept rejecting after the load ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_streaming_load_and_corrupt_versions_refused() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = shared_registry(dir.path());
    let registry = Registry::open(dir.path().to_str().unwrap()).unwrap();
    let alias = dir.path().join("models/goemotions/aliases/latest");
    let (mut proc, addr, _) = spawn_predictor(
        alias.to_str().unwrap(),
        &["--poll-interval-secs", "0.2"],
        &[],
        dir.path().join("p.log"),
    );
    wait_serving(&mut proc, &addr, Duration::from_secs(60)).await;

    // Continuous load: 3 streams sending texts until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loaders = Vec::new();
    for s in 0..3 {
        let mut c = client(&addr).await;
        let stop = stop.clone();
        loaders.push(tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            let producer = tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let item = StreamClassifyRequest {
                        id: format!("{s}-{i}"),
                        text: TEXTS[i % TEXTS.len()].into(),
                        options: None,
                    };
                    if tx.send(item).await.is_err() {
                        break;
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                i
            });
            let mut stream = c
                .classify_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            let mut versions = HashMap::<String, usize>::new();
            let mut failures = Vec::new();
            while let Some(m) = stream.message().await.expect("stream must not fail") {
                match m.outcome {
                    Some(Outcome::Result(_)) => *versions.entry(m.model_version).or_default() += 1,
                    other => failures.push(format!("{}: {other:?}", m.id)),
                }
            }
            let sent = producer.await.unwrap();
            (sent, versions, failures)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    copy_version(dir.path(), "goemotions", &v1, "v2-same-weights");
    registry
        .set_alias(
            "goemotions",
            "latest",
            "v2-same-weights",
            Some(Some(v1.clone())),
        )
        .await
        .unwrap();
    let mut c = client(&addr).await;
    let wait_version = |want: &'static str| {
        let mut c = c.clone();
        async move {
            for _ in 0..200 {
                let info = c
                    .get_model_info(proto::v1::GetModelInfoRequest {})
                    .await
                    .unwrap()
                    .into_inner();
                if info.version == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("never switched to {want}");
        }
    };
    wait_version("v2-same-weights").await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A corrupt version: the weights do not match the manifest's sha256. It is refused and v2 stays.
    copy_version(dir.path(), "goemotions", &v1, "v3-corrupt");
    let weights = dir
        .path()
        .join("models/goemotions/versions/v3-corrupt/model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0xff;
    std::fs::write(&weights, bytes).unwrap();
    registry
        .set_alias("goemotions", "latest", "v3-corrupt", None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let info = c
        .get_model_info(proto::v1::GetModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.version, "v2-same-weights");
    let log = proc.log_text();
    assert!(
        log.contains("sha256 mismatch") && log.contains("model.safetensors"),
        "{log}"
    );
    c.classify(ClassifyRequest {
        texts: vec!["still serving".into()],
        options: None,
    })
    .await
    .unwrap();

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    let mut all_versions = HashMap::new();
    for l in loaders {
        let (sent, versions, failures) = l.await.unwrap();
        assert!(
            failures.is_empty(),
            "failed items during reload: {failures:?}"
        );
        let answered: usize = versions.values().sum();
        assert_eq!(answered, sent, "every text sent got a result");
        total += answered;
        for (v, n) in versions {
            *all_versions.entry(v).or_insert(0) += n;
        }
    }
    assert!(total > 50, "load was continuous ({total} texts)");
    assert!(
        all_versions.contains_key(&v1) && all_versions.contains_key("v2-same-weights"),
        "{all_versions:?}"
    );
    assert!(!all_versions.contains_key("v3-corrupt"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_a_checkpoint_from_a_real_s3_server() {
    let dir = tempfile::tempdir().unwrap();
    let version = shared_registry(&dir.path().join("local"));
    let mut s3 = S3Server::start(&dir.path().join("s3"), "models-bucket");
    s3.export_env();
    let root = Store::open(&s3.uri("registry")).unwrap();
    upload_dir(&root, &dir.path().join("local")).await;
    let (mut proc, addr, _) = spawn_predictor(
        &s3.uri("registry/models/goemotions/aliases/latest"),
        &[],
        &s3.env(),
        dir.path().join("p.log"),
    );
    let cold_start = wait_serving(&mut proc, &addr, Duration::from_secs(60)).await;
    eprintln!("cold start from S3 to SERVING: {cold_start:?}");
    let r = client(&addr)
        .await
        .classify(ClassifyRequest {
            texts: vec![TEXTS[0].into()],
            options: all_scores(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.model_version, version);
    assert_eq!(r.results[0].scores.len(), 28);
    s3.stop();
}

macro_rules! case_tests {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let dir = tempfile::tempdir().unwrap();
            cases::$case(dir.path()).await.assert();
        }
    )*};
}

case_tests!(
    oversized_items,
    sigterm_mid_stream,
    invalid_checkpoints_refused,
    version_name_mismatch_loads_once,
    mass_hang_up,
    many_streams_back_pressure,
    threads_follow_the_cpu_allowance,
    reflection_lists_what_is_served,
    auth_token_file_and_exposure,
    failed_bind_says_so,
    idle_connection_closed,
    missing_model_creates_nothing,
);

/// The Python with grpcio (scripts/setup.sh --with-clients) and a folder of stubs generated from
/// proto/ under `dir`, as the README tells Python users to make them.
fn python_stubs(dir: &std::path::Path) -> (String, std::path::PathBuf) {
    let root = workspace_root();
    let python = std::env::var("GRPC_PYTHON").unwrap_or_else(|_| {
        root.join(".cache/tools/grpc/bin/python")
            .display()
            .to_string()
    });
    let gen = dir.join("gen");
    std::fs::create_dir_all(&gen).unwrap();
    let protoc = std::process::Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(root.join("proto"))
        .arg(format!("--python_out={}", gen.display()))
        .arg(format!("--grpc_python_out={}", gen.display()))
        .arg(root.join("proto/goemotions/v1/predictor.proto"))
        .output()
        .expect("run grpc_tools.protoc (scripts/setup.sh --with-clients)");
    assert!(
        protoc.status.success(),
        "{}",
        String::from_utf8_lossy(&protoc.stderr)
    );
    (python, gen)
}

/// Under the default settings a text gets the same scores, bit for bit, whatever it is batched
/// with: alone, in one Classify request with texts of every length, and on streams running beside
/// 8 other streams — and the same scores as the trainer's evaluation path computes in-process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_texts_scores_do_not_depend_on_what_else_is_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    // Defaults but for the threads: two single-threaded inference workers, as on 2 cores.
    let (_proc, addr, _, version) =
        serve_shared(dir.path(), &["--threads", "2", "--max-wait-ms", "5"]).await;
    let pool: Vec<String> = std::fs::read_to_string(data_dir().join("test.tsv"))
        .unwrap()
        .lines()
        .take(400)
        .map(|l| l.split('\t').next().unwrap_or_default().to_string())
        .collect();
    // 24 texts of many lengths (and buckets), two of them repeated.
    let mut texts: Vec<&str> = pool.iter().step_by(16).map(String::as_str).collect();
    texts.extend([texts[0], texts[3]]);
    let expected = in_process_scores(
        &dir.path()
            .join(format!("models/goemotions/versions/{version}")),
        &texts,
    )
    .await;
    let mut c = client(&addr).await;
    let classify = |texts: Vec<String>| ClassifyRequest {
        texts,
        options: all_scores(),
    };
    let mut alone = Vec::new();
    for t in &texts {
        let r = c.classify(classify(vec![t.to_string()])).await.unwrap();
        alone.push(r.into_inner().results[0].scores.clone());
    }
    let together = c
        .classify(classify(texts.iter().map(|t| t.to_string()).collect()))
        .await
        .unwrap()
        .into_inner()
        .results;
    // Streams: ours interleaved with others' texts, 8 streams at once.
    let mut streams = Vec::new();
    for s in 0..8usize {
        let mut c = client(&addr).await;
        let items: Vec<StreamClassifyRequest> = (0..60)
            .map(|i| {
                let (id, text) = if i % 3 == 0 && i / 3 < texts.len() {
                    (format!("ours-{}", i / 3), texts[i / 3].to_string())
                } else {
                    (
                        format!("other-{s}-{i}"),
                        pool[(s * 37 + i * 11) % pool.len()].clone(),
                    )
                };
                StreamClassifyRequest {
                    id,
                    text,
                    options: all_scores(),
                }
            })
            .collect();
        streams.push(tokio::spawn(async move {
            let mut out = c
                .classify_stream(tokio_stream::iter(items))
                .await
                .unwrap()
                .into_inner();
            let mut got = HashMap::new();
            while let Some(r) = out.message().await.unwrap() {
                if let Some(Outcome::Result(res)) = r.outcome {
                    got.insert(r.id, res.scores);
                }
            }
            got
        }));
    }
    let mut streamed = Vec::new();
    for s in streams {
        streamed.push(s.await.unwrap());
    }
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(&alone[i], want, "text {i} alone vs in-process");
        assert_eq!(&together[i].scores, want, "text {i} in a mixed request");
        for (s, got) in streamed.iter().enumerate() {
            if let Some(scores) = got.get(&format!("ours-{i}")) {
                assert_eq!(scores, want, "text {i} on stream {s}");
            }
        }
    }
}

/// Python grpcio writing stream items as fast as it can — one small message per HTTP/2 DATA
/// frame — into streams the server holds back: one stream of 20,000 short texts, then 40
/// streams at 100 texts/s each on one channel. Every text is answered once and every call ends
/// OK (h2 once closed the whole connection with ENHANCE_YOUR_CALM after ~2,000 unread frames).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_streams_written_as_fast_as_possible_are_all_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (_proc, addr, _, _) = serve_shared(dir.path(), &[]).await;
    let (python, gen) = python_stubs(dir.path());
    let hostport = addr.trim_start_matches("http://");
    for args in [
        vec!["--texts", "20000"],
        vec!["--streams", "40", "--texts", "300", "--rate", "100"],
    ] {
        let run = std::process::Command::new(&python)
            .arg(workspace_root().join("examples/python/stream_flood.py"))
            .arg(hostport)
            .args(&args)
            .env("PYTHONPATH", &gen)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "{args:?}: {report}\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let report: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
        assert_eq!(report["answered"], report["sent"], "{report}");
        assert_eq!(report["codes"], serde_json::json!(["OK"]), "{report}");
    }
}

/// The README's two clients that no one here wrote: Python grpcio with stubs generated from
/// proto/ (examples/python/classify.py) and `buf curl` with the .proto files, against a real
/// predictor; both give the scores of the in-process model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_and_buf_curl_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (_proc, addr, _, version) = serve_shared(dir.path(), &[]).await;
    let texts = [TEXTS[0], TEXTS[1]];
    let expected = in_process_scores(
        &dir.path()
            .join(format!("models/goemotions/versions/{version}")),
        &texts,
    )
    .await;
    let root = workspace_root();
    let hostport = addr.trim_start_matches("http://");

    let (python, gen) = python_stubs(dir.path());
    let run = std::process::Command::new(&python)
        .arg(root.join("examples/python/classify.py"))
        .arg(hostport)
        .args(texts)
        .env("PYTHONPATH", &gen)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), texts.len());
    let labels = common::labels::LabelSet::read_names(&data_dir().join("emotions.txt"))
        .unwrap()
        .names;
    for (line, want) in lines.iter().zip(&expected) {
        assert_eq!(line["model_version"], version.as_str());
        let got: Vec<f32> = labels
            .iter()
            .map(|name| line["scores"][name.as_str()].as_f64().unwrap() as f32)
            .collect();
        assert_close(&got, want, "python grpcio");
    }

    let buf = std::env::var("BUF_BIN")
        .unwrap_or_else(|_| root.join(".cache/tools/buf/bin/buf").display().to_string());
    let body =
        serde_json::json!({"texts": texts, "options": {"returnAllScores": true}}).to_string();
    let curl = std::process::Command::new(&buf)
        .args([
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "--schema",
        ])
        .arg(root.join("proto"))
        .args(["-d", &body])
        .arg(format!("{addr}/goemotions.v1.Predictor/Classify"))
        .output()
        .expect("run buf curl (scripts/setup.sh --with-clients)");
    assert!(
        curl.status.success(),
        "{}",
        String::from_utf8_lossy(&curl.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&curl.stdout).unwrap();
    assert_eq!(reply["modelVersion"], version.as_str());
    for (result, want) in reply["results"].as_array().unwrap().iter().zip(&expected) {
        let got: Vec<f32> = result["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_f64().unwrap() as f32)
            .collect();
        assert_close(&got, want, "buf curl");
    }
}

/// A mean-pooled checkpoint loads in the real `transformers` with its shipped modeling code
/// (`trust_remote_code=True`), and both the model and `pipeline()` give the Rust model's scores
/// on 200 test texts; loading it without the remote code is refused instead of silently using
/// BERT's [CLS] pooler (scripts/hf_load_checkpoint.py makes each check). Python `torch` cannot be
/// imported from the slim libtorch install the build uses, and the full one is 5 GB, so this runs
/// where `scripts/setup-ref-venv.sh` has made `.venv-ref`:
/// `cargo test -p goemotions-tests --test predictor -- --ignored transformers_scores`.
#[test]
#[ignore = "needs .venv-ref (scripts/setup-ref-venv.sh: full torch + transformers, 5 GB)"]
fn transformers_scores_mean_pooled_checkpoints_like_the_predictor() {
    let dir = tempfile::tempdir().unwrap();
    let version = shared_registry(dir.path());
    let version_dir = dir
        .path()
        .join(format!("models/goemotions/versions/{version}"));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(version_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["classifier_pooling"], "mean");
    assert_eq!(config["model_type"], "goemotions_bert");
    let trainer = bin("trainer");
    let texts = data_dir().join("test.tsv");
    let out = run_reference_script(
        "hf_load_checkpoint.py",
        &[
            version_dir.as_os_str(),
            "--trainer".as_ref(),
            trainer.as_os_str(),
            "--texts".as_ref(),
            texts.as_os_str(),
            "--limit".as_ref(),
            "200".as_ref(),
        ],
    );
    for check in [
        "ok   AutoModelForSequenceClassification",
        "ok   pipeline",
        "ok   plain load refused",
    ] {
        assert!(out.contains(check), "missing `{check}`:\n{out}");
    }
}

/// Runs `scripts/SCRIPT ARGS` with `.venv-ref`'s Python, offline; asserts it succeeded and
/// returns (and prints) what it wrote.
fn run_reference_script(script: &str, args: &[&std::ffi::OsStr]) -> String {
    let root = workspace_root();
    let run = std::process::Command::new(root.join(".venv-ref/bin/python"))
        .arg(root.join("scripts").join(script))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap_or_else(|e| {
            panic!("run scripts/{script} with .venv-ref (scripts/setup-ref-venv.sh): {e}")
        });
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    println!("{out}");
    assert!(run.status.success(), "{out}");
    out
}

/// Runs examples/python/oip_triton.py (NVIDIA's Triton client, gRPC or `--http`) and checks what
/// it saw: health, metadata, readiness per model name, scores equal to the in-process model's.
fn check_triton_client(mode: &[&str], url: &str, version: &str, expected: &[Vec<f32>]) {
    let root = workspace_root();
    let python = std::env::var("GRPC_PYTHON").unwrap_or_else(|_| {
        root.join(".cache/tools/grpc/bin/python")
            .display()
            .to_string()
    });
    let run = std::process::Command::new(&python)
        .arg(root.join("examples/python/oip_triton.py"))
        .args(mode)
        .arg(url)
        .arg("goemotions")
        .args([TEXTS[0], TEXTS[3], ""])
        .output()
        .expect("run the Triton client (scripts/setup.sh --with-clients)");
    assert!(
        run.status.success(),
        "{mode:?}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let out: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(out["live"], true, "{out}");
    assert_eq!(out["ready"], true, "{out}");
    assert_eq!(out["model_ready"], true, "{out}");
    assert_eq!(out["other_model_ready"], false, "{out}");
    assert_eq!(out["model"]["name"], "goemotions", "{out}");
    assert_eq!(out["model"]["versions"][0], version, "{out}");
    assert_eq!(out["model"]["inputs"][0]["datatype"], "BYTES", "{out}");
    let width = &out["model"]["outputs"][0]["shape"][1];
    assert_eq!(width.to_string().trim_matches('"'), "28", "{out}");
    assert_eq!(out["version"], version);
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for (r, want) in results.iter().zip(expected) {
        let got: Vec<f32> = r["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_f64().unwrap() as f32)
            .collect();
        assert_close(&got, want, "triton client");
        assert_eq!(r["labels"]["top_k"].as_array().unwrap().len(), 2, "{r}");
    }
    // An empty text: no labels, zero scores (the tensor keeps its shape).
    assert_eq!(results[2]["labels"]["labels"], serde_json::json!([]));
}

/// The KServe Python SDK (examples/python/oip_kserve.py) with its defaults: binary tensor data.
fn check_kserve_client(base_url: &str, expected: &[Vec<f32>]) {
    let root = workspace_root();
    let python = std::env::var("KSERVE_PYTHON").unwrap_or_else(|_| {
        root.join(".cache/tools/kserve/bin/python")
            .display()
            .to_string()
    });
    let run = std::process::Command::new(&python)
        .arg(root.join("examples/python/oip_kserve.py"))
        .arg(base_url)
        .arg("goemotions")
        .args([TEXTS[0], TEXTS[3], ""])
        .output()
        .expect("run the KServe SDK (scripts/setup.sh --with-clients)");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let out: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(out["ready"], true, "{out}");
    assert_eq!(out["model_ready"], true, "{out}");
    assert_eq!(out["model_name"], "goemotions", "{out}");
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for (r, want) in results.iter().zip(expected) {
        let got: Vec<f32> = r["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_f64().unwrap() as f32)
            .collect();
        assert_close(&got, want, "KServe SDK");
        assert_eq!(r["labels"]["top_k"].as_array().unwrap().len(), 2, "{r}");
    }
    assert_eq!(results[2]["labels"]["labels"], serde_json::json!([]));
}

/// Runs curl with `args` and `stdin` as its input; returns the body and the HTTP status code.
fn curl_stdin(args: &[&str], stdin: &[u8]) -> (String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (body.to_string(), code.to_string())
}

/// Runs curl with `args`; returns the body and the HTTP status code.
fn curl(args: &[&str]) -> (String, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (body.to_string(), code.to_string())
}

/// The Open Inference Protocol (KServe v2) beside goemotions.v1 on the same port and over
/// HTTP/JSON on --http-listen, driven by NVIDIA's Triton client (gRPC and HTTP) and by curl as
/// the README shows; bad tensors and unknown models get INVALID_ARGUMENT / 400 and NOT_FOUND /
/// 404 naming the problem; REST calls count in the same request metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_inference_protocol_with_the_triton_client() {
    use proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
    use proto::inference::model_infer_request::InferInputTensor;
    use proto::inference::{InferTensorContents, ModelInferRequest};

    let dir = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let (_proc, addr, metrics, version) = serve_shared(dir.path(), &["--http-listen", &http]).await;
    let expected = in_process_scores(
        &dir.path()
            .join(format!("models/goemotions/versions/{version}")),
        &[TEXTS[0], TEXTS[3]],
    )
    .await;
    check_triton_client(&[], addr.trim_start_matches("http://"), &version, &expected);
    // The HTTP client's defaults (binary tensor data both ways), then JSON tensors.
    check_triton_client(&["--http"], &http, &version, &expected);
    check_triton_client(&["--http", "--json"], &http, &version, &expected);
    check_kserve_client(&format!("http://{http}"), &expected);
    let (body, code) = curl(&[&format!("http://{http}/v2/")]);
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("binary_tensor_data"), "{body}");

    // Every error is the documented JSON body.
    let error_of = |body: &str| -> String {
        serde_json::from_str::<serde_json::Value>(body).unwrap_or_default()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    for (args, want_code, want) in [
        (vec![format!("http://{http}/v3/nothing")], "404", "no route"),
        (
            vec![
                "-X".into(),
                "DELETE".into(),
                format!("http://{http}/v2/models/goemotions/infer"),
            ],
            "405",
            "use POST",
        ),
        (
            vec!["-X".into(), "TRACE".into(), format!("http://{http}/v2")],
            "405",
            "use GET",
        ),
        (
            vec![
                "--data-binary".into(),
                "@-".into(),
                format!("http://{http}/v2/models/goemotions/infer"),
            ],
            "400",
            "not valid JSON",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (body, code) = if args.contains(&"@-") {
            curl_stdin(&args, b"{\"inputs\": [\"\xff\xfe\"]}")
        } else {
            curl(&args)
        };
        assert_eq!(code, want_code, "{args:?}: {body}");
        assert!(error_of(&body).contains(want), "{args:?}: {body}");
    }

    let (body, code) = curl(&[&format!("http://{http}/v2/health/ready")]);
    assert_eq!((body.as_str(), code.as_str()), (r#"{"ready":true}"#, "200"));
    let infer_url = format!("http://{http}/v2/models/goemotions/infer");
    let request = r#"{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["I am so happy!"]}]}"#;
    let json = "content-type: application/json";
    let (body, code) = curl(&["-H", json, "-d", request, &infer_url]);
    assert_eq!(code, "200", "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["model_version"], version.as_str());
    assert_eq!(reply["outputs"][0]["shape"], serde_json::json!([1, 28]));
    let unknown = format!("http://{http}/v2/models/bert/infer");
    let (body, code) = curl(&["-H", json, "-d", request, &unknown]);
    assert_eq!(code, "404", "{body}");
    assert!(body.contains("goemotions"), "{body}");
    let fp32 = r#"{"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1]}]}"#;
    let (body, code) = curl(&["-H", json, "-d", fp32, &infer_url]);
    assert_eq!(code, "400", "{body}");
    assert!(body.contains("BYTES"), "{body}");
    let page = metrics_text(metrics).await;
    assert!(page.contains(r#"method="RestModelInfer""#), "{page}");

    let mut oip = GrpcInferenceServiceClient::connect(addr.clone())
        .await
        .unwrap();
    let request = |model: &str, datatype: &str| ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: "text".into(),
            datatype: datatype.into(),
            shape: vec![1],
            parameters: Default::default(),
            contents: Some(InferTensorContents {
                bytes_contents: vec![b"hello".to_vec()],
                ..Default::default()
            }),
        }],
        ..Default::default()
    };
    let status = oip
        .model_infer(request("goemotions", "FP32"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("BYTES"), "{status:?}");
    let mut both = request("goemotions", "BYTES");
    both.raw_input_contents = vec![vec![5, 0, 0, 0, b'h', b'e', b'l', b'l', b'o']];
    let status = oip.model_infer(both).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("both"), "{status:?}");
    let status = oip.model_infer(request("bert", "BYTES")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("goemotions"), "{status:?}");
    let ok = oip
        .model_infer(request("goemotions", "BYTES"))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().outputs.len(), 2);
}

/// The HTTP API keeps the gRPC rules: the token on everything but health, the message size
/// limit (413), and a start refused beyond loopback without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_api_keeps_the_token_and_the_message_limit() {
    let dir = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let flags = [
        "--http-listen",
        &http,
        "--auth-token",
        "s3cret",
        "--max-message-bytes",
        "2048",
    ];
    let (_proc, addr, _, _) = serve_shared(dir.path(), &flags).await;
    let alias = dir.path().join("models/goemotions/aliases/latest");
    // The Open Inference Protocol over gRPC: liveness and readiness open, like grpc.health and
    // the REST health routes; inference needs the token.
    {
        use proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
        use proto::inference::{ModelInferRequest, ServerLiveRequest, ServerReadyRequest};
        let mut oip = GrpcInferenceServiceClient::connect(addr.clone())
            .await
            .unwrap();
        assert!(
            oip.server_live(ServerLiveRequest {})
                .await
                .unwrap()
                .into_inner()
                .live
        );
        assert!(
            oip.server_ready(ServerReadyRequest {})
                .await
                .unwrap()
                .into_inner()
                .ready
        );
        let status = oip
            .model_infer(ModelInferRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    let infer_url = format!("http://{http}/v2/models/goemotions/infer");
    let request =
        r#"{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"]}]}"#;
    let (_, code) = curl(&[&format!("http://{http}/v2/health/live")]);
    assert_eq!(code, "200", "health stays open");
    let (body, code) = curl(&["-d", request, &infer_url]);
    assert_eq!(code, "401", "{body}");
    let (body, code) = curl(&[
        "-H",
        "authorization: bearer s3cret",
        "-d",
        request,
        &infer_url,
    ]);
    assert_eq!(code, "200", "{body}");
    let big = format!(
        r#"{{"inputs": [{{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["{}"]}}]}}"#,
        "x".repeat(3000)
    );
    let (body, code) = curl(&["-H", "authorization: Bearer s3cret", "-d", &big, &infer_url]);
    assert_eq!(code, "413", "{body}");
    assert!(
        body.contains(r#""error":"#),
        "413 is the documented JSON body: {body}"
    );

    let exposed = std::process::Command::new(bin("predictor"))
        .args(["serve", "--device", "cpu", "--model"])
        .arg(&alias)
        .args(["--http-listen", &format!("0.0.0.0:{}", free_port())])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(!exposed.status.success());
    assert!(
        String::from_utf8_lossy(&exposed.stderr).contains("refusing to listen on 0.0.0.0"),
        "{}",
        String::from_utf8_lossy(&exposed.stderr)
    );
}

/// The HTTP port bounds what a client can hold open — half-sent headers are cut at the header
/// timeout, a half-sent body gets 408, connections beyond the limit get 503 — and while the
/// server drains it keeps answering (503, readiness false, liveness true) instead of refusing
/// connections; every error is the documented JSON body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_port_bounds_slow_clients_and_answers_while_draining() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let flags = [
        "--http-listen",
        &http,
        "--http-header-timeout-secs",
        "1",
        "--http-body-timeout-secs",
        "1",
        "--http-max-connections",
        "3",
        "--drain-timeout-secs",
        "8",
    ];
    let (proc, _, _, _) = serve_shared(dir.path(), &flags).await;
    let connect = || tokio::net::TcpStream::connect(http.clone());
    // Reads what the server sends until it closes (or 5 s pass).
    async fn read_all(s: &mut tokio::net::TcpStream) -> (String, std::time::Duration) {
        let started = std::time::Instant::now();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        (String::from_utf8_lossy(&out).to_string(), started.elapsed())
    }

    // Half-sent headers: closed after the header timeout, not held.
    let mut slow = connect().await.unwrap();
    slow.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (_, waited) = read_all(&mut slow).await;
    assert!(
        waited < Duration::from_secs(4),
        "half-sent headers held for {waited:?}"
    );

    // Half-sent body: 408 with the JSON body.
    let mut slow = connect().await.unwrap();
    slow.write_all(
        b"POST /v2/models/goemotions/infer HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"inputs\"",
    )
    .await
    .unwrap();
    let (reply, _) = read_all(&mut slow).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains(r#""error":"#), "{reply}");

    // Three connections held open: a fourth gets 503 (JSON) and is closed.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = connect().await.unwrap();
        c.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        held.push(c);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = connect().await.unwrap();
    let (reply, _) = read_all(&mut extra).await;
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(reply.contains("too many connections"), "{reply}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Draining: a request whose body is still arriving keeps the drain going; meanwhile the port
    // answers 503 with the JSON body, readiness false, liveness true.
    let mut pending = connect().await.unwrap();
    pending
        .write_all(
            b"POST /v2/models/goemotions/infer HTTP/1.1\r\nHost: x\r\ncontent-length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    proc.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (body, code) = curl(&[&format!("http://{http}/v2/models/goemotions")]);
    assert_eq!(code, "503", "{body}");
    assert!(body.contains("shutting down"), "{body}");
    let (body, code) = curl(&[&format!("http://{http}/v2/health/ready")]);
    assert_eq!(
        (body.as_str(), code.as_str()),
        (r#"{"ready":false}"#, "400")
    );
    let (_, code) = curl(&[&format!("http://{http}/v2/health/live")]);
    assert_eq!(code, "200");
    let (reply, _) = read_all(&mut pending).await;
    assert!(
        reply.starts_with("HTTP/1.1 408"),
        "the pending request is answered: {reply}"
    );
}

/// Ekman and sentiment groups served from one model: each group scores as its best member
/// label, is predicted exactly when it reaches the threshold stored in the manifest (tuned on
/// dev), and comes back in the order asked for; an unknown grouping is INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(deprecated)] // the enum field stays answered as before
async fn coarse_groups_follow_the_label_scores_and_stored_thresholds() {
    use proto::v1::Grouping;
    let dir = tempfile::tempdir().unwrap();
    let (_proc, addr, _, version) = serve_shared(dir.path(), &[]).await;
    let version_dir = dir
        .path()
        .join(format!("models/goemotions/versions/{version}"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(version_dir.join("manifest.json")).unwrap()).unwrap();
    let groupings = manifest["groupings"].as_array().unwrap();
    let names: Vec<&str> = groupings
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["ekman", "sentiment"]);
    let mut c = client(&addr).await;
    let options = |groupings: Vec<i32>| {
        Some(ClassifyOptions {
            groupings,
            top_k: 3,
            return_all_scores: true,
            threshold: None,
            ..Default::default()
        })
    };
    let response = c
        .classify(ClassifyRequest {
            texts: TEXTS.iter().map(|t| t.to_string()).collect(),
            options: options(vec![Grouping::Sentiment as i32, Grouping::Ekman as i32]),
        })
        .await
        .unwrap()
        .into_inner();
    let mut predicted_any = 0;
    for r in &response.results {
        assert_eq!(r.groups.len(), 2);
        assert_eq!(
            r.groups[0].grouping,
            Grouping::Sentiment as i32,
            "order asked for"
        );
        for g in &r.groups {
            let stored = if g.grouping == Grouping::Ekman as i32 {
                &groupings[0]
            } else {
                &groupings[1]
            };
            let stored_groups = stored["groups"].as_array().unwrap();
            assert_eq!(g.scores.len(), stored_groups.len());
            for (s, sg) in g.scores.iter().zip(stored_groups) {
                let best = sg["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| r.scores[m.as_u64().unwrap() as usize])
                    .fold(0.0f32, f32::max);
                assert_eq!(s.score, best, "{}", s.name);
                assert_eq!(s.name, sg["name"].as_str().unwrap());
                let passes = s.score >= sg["threshold"].as_f64().unwrap() as f32;
                assert_eq!(
                    g.labels.iter().any(|l| l.name == s.name),
                    passes,
                    "{}",
                    s.name
                );
                predicted_any += usize::from(passes);
            }
        }
    }
    assert!(predicted_any > 0, "some group is predicted for some text");
    let status = c
        .classify(ClassifyRequest {
            texts: vec!["hi".into()],
            options: options(vec![7]),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("grouping"), "{status:?}");

    // By name (the field that replaces the enum): the same answer, with the name.
    let by_name = c
        .classify(ClassifyRequest {
            texts: TEXTS.iter().map(|t| t.to_string()).collect(),
            options: Some(ClassifyOptions {
                grouping_names: vec!["sentiment".into(), "ekman".into()],
                top_k: 3,
                return_all_scores: true,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        by_name.results,
        response
            .results
            .iter()
            .cloned()
            .map(|mut r| {
                for g in &mut r.groups {
                    assert_eq!(
                        g.name,
                        if g.grouping == Grouping::Ekman as i32 {
                            "ekman"
                        } else {
                            "sentiment"
                        }
                    );
                }
                r
            })
            .collect::<Vec<_>>()
    );
    let info = c
        .get_model_info(proto::v1::GetModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let served: Vec<&str> = info.groupings.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(served, ["ekman", "sentiment"]);
    assert_eq!(info.problem_type, "multi_label_classification");
    let status = c
        .classify(ClassifyRequest {
            texts: vec!["hi".into()],
            options: Some(ClassifyOptions {
                grouping_names: vec!["topics".into()],
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("\"topics\"") && status.message().contains("\"ekman\""),
        "{status:?}"
    );
}

/// Explain over gRPC, as a user calls it: words with offsets in characters into the text (word
/// pieces merged, non-ASCII counted as Python counts it), attributions that add up to the
/// label's logit change within 1 % at 50 steps, scores equal to Classify's, the predicted labels
/// when none are named; "thank" is what drives gratitude; the command line's table; every bad
/// field refused before any work with INVALID_ARGUMENT naming it; and the same over HTTP with
/// curl (`POST /v2/models/{name}[/versions/{v}]/explain`): the gRPC answer, bad fields a 400
/// naming them, another model or version a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_attributes_labels_to_words_that_add_up() {
    use proto::v1::ExplainRequest;
    let dir = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let (_proc, addr, _, version) = serve_shared(
        dir.path(),
        &[
            "--http-listen",
            &http,
            "--max-explain-steps",
            "64",
            "--max-explain-labels",
            "3",
            "--max-text-bytes",
            "300",
        ],
    )
    .await;
    let mut c = client(&addr).await;
    let ask = |text: &str, labels: &[&str], steps: u32| ExplainRequest {
        text: text.into(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        steps,
        threshold: None,
    };
    let text = "Thankfully — you’re great, thank you!!";
    let classified = c
        .classify(ClassifyRequest {
            texts: vec![text.into()],
            options: all_scores(),
        })
        .await
        .unwrap()
        .into_inner();
    let scores = &classified.results[0].scores;
    let r = c
        .explain(ask(text, &["gratitude", "admiration"], 50))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.model_version, version);
    assert_eq!(r.steps, 50);
    assert_eq!(r.method, "integrated_gradients/gauss_legendre");
    assert_eq!(r.precision, "fp32");
    let chars: Vec<char> = text.chars().collect();
    for w in &r.words {
        let span: String = chars[w.start as usize..w.end as usize].iter().collect();
        assert_eq!(w.text, span, "{w:?}");
    }
    let words: Vec<&str> = r.words.iter().map(|w| w.text.as_str()).collect();
    assert_eq!(words[0], "Thankfully", "{words:?}");
    let dash = &r.words[1];
    assert_eq!((dash.text.as_str(), dash.start, dash.end), ("—", 11, 12));
    assert!(
        words.contains(&"thank") && words.contains(&"great"),
        "{words:?}"
    );
    let names: Vec<&str> = r.labels.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["gratitude", "admiration"]);
    for l in &r.labels {
        assert_eq!(l.attributions.len(), r.words.len());
        assert!(
            (l.score - scores[l.id as usize]).abs() < 1e-4,
            "{l:?} vs {scores:?}"
        );
        let sigmoid = 1.0 / (1.0 + (-l.logit).exp());
        assert!((sigmoid - l.score).abs() < 1e-4);
        let gap = l.logit - l.baseline_logit;
        let total: f32 = l.attributions.iter().sum();
        assert!(
            (total - gap).abs() <= 0.01 * gap.abs() + 1e-4,
            "{} attributions add up to {total}, the logit moved {gap}",
            l.name
        );
        assert!((total - gap - l.convergence_delta).abs() < 1e-3);
    }
    // The obvious word wins.
    let r = c
        .explain(ask("thank you so much for the help", &["gratitude"], 32))
        .await
        .unwrap()
        .into_inner();
    let g = &r.labels[0];
    let top = (0..g.attributions.len())
        .max_by(|&a, &b| g.attributions[a].total_cmp(&g.attributions[b]))
        .unwrap();
    assert_eq!(
        r.words[top].text,
        "thank",
        "{:?}",
        r.words.iter().zip(&g.attributions).collect::<Vec<_>>()
    );

    // No labels named: the predicted ones (at most the limit), or the best one.
    let r = c.explain(ask(text, &[], 8)).await.unwrap().into_inner();
    let predicted: Vec<u32> = classified.results[0]
        .labels
        .iter()
        .map(|l| l.id)
        .take(3)
        .collect();
    let explained: Vec<u32> = r.labels.iter().map(|l| l.id).collect();
    if predicted.is_empty() {
        assert_eq!(explained, vec![classified.results[0].top_k[0].id]);
    } else {
        assert_eq!(explained, predicted);
        assert!(r.labels.iter().all(|l| l.predicted));
    }

    let out = std::process::Command::new(bin("predictor"))
        .args([
            "explain",
            "--addr",
            &addr,
            "--label",
            "gratitude",
            "--steps",
            "16",
        ])
        .arg("thank you so much for the help")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("gratitude") && stdout.contains("thank"),
        "{stdout}"
    );

    for (request, field) in [
        (ask(text, &["gratitude"], 65), "steps"),
        (ask(text, &["joy", "nope"], 8), "labels[1]"),
        (
            ask(text, &["joy", "love", "fear", "anger"], 8),
            "--max-explain-labels",
        ),
        (ask(text, &["joy", "joy"], 8), "labels[1]"),
        (ask("   ", &[], 8), "text"),
        (ask(&"a".repeat(301), &[], 8), "text"),
        (
            ExplainRequest {
                threshold: Some(1.5),
                ..ask(text, &[], 8)
            },
            "threshold",
        ),
    ] {
        let status = c.explain(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{field}: {status:?}");
    }

    // The same over HTTP with curl: equal to the gRPC answer, bad fields named with a 400.
    let grpc = c
        .explain(ask("thank you so much for the help", &["gratitude"], 32))
        .await
        .unwrap()
        .into_inner();
    let url = format!("http://{http}/v2/models/goemotions/explain");
    let post = |body: &str, url: &str| curl(&["-X", "POST", "-d", body, url]);
    let (body, code) = post(
        r#"{"text": "thank you so much for the help", "labels": ["gratitude"], "steps": 32}"#,
        &url,
    );
    assert_eq!(code, "200", "{body}");
    let rest: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rest["model_version"], version.as_str());
    assert_eq!(rest["steps"], 32);
    let words: Vec<&str> = rest["words"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["text"].as_str().unwrap())
        .collect();
    let grpc_words: Vec<&str> = grpc.words.iter().map(|w| w.text.as_str()).collect();
    assert_eq!(words, grpc_words);
    let label = &rest["labels"][0];
    assert_eq!(label["name"], "gratitude");
    let attributions: Vec<f32> = label["attributions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_f64().unwrap() as f32)
        .collect();
    assert_close(&attributions, &grpc.labels[0].attributions, "REST vs gRPC");
    for (body, field, status) in [
        (r#"{"text": "hi", "steps": "many"}"#, "steps", "400"),
        (r#"{"text": "hi", "label": ["joy"]}"#, "\"label\"", "400"),
        (
            r#"{"text": "hi", "labels": ["joy", 3]}"#,
            "labels[1]",
            "400",
        ),
        (r#"{"text": "hi", "labels": ["nope"]}"#, "labels[0]", "400"),
        (r#"{"labels": ["joy"]}"#, "text", "400"),
        (r#"["hi"]"#, "JSON object", "400"),
    ] {
        let (reply, code) = post(body, &url);
        assert_eq!(code, status, "{body}: {reply}");
        let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
        let message = reply["error"].as_str().unwrap();
        assert!(message.contains(field), "{body}: {message}");
    }
    let (reply, code) = post(
        r#"{"text": "hi"}"#,
        &format!("http://{http}/v2/models/other/explain"),
    );
    assert_eq!(code, "404", "{reply}");
    let (_, code) = curl(&[&url]);
    assert_eq!(code, "405");
    // The versioned routes answer for the served version only.
    let versioned = format!("http://{http}/v2/models/goemotions/versions/{version}");
    let (reply, code) = post(r#"{"text": "hi"}"#, &format!("{versioned}/explain"));
    assert_eq!(code, "200", "{reply}");
    let (reply, code) = curl(&[&format!("{versioned}/ready")]);
    assert_eq!(
        (code.as_str(), reply.as_str()),
        ("200", r#"{"ready":true}"#)
    );
    let (reply, code) = curl(&[&versioned]);
    assert_eq!(code, "200", "{reply}");
    let other = format!("http://{http}/v2/models/goemotions/versions/v0");
    let (reply, code) = post(r#"{"text": "hi"}"#, &format!("{other}/explain"));
    assert_eq!(code, "404", "{reply}");
    let (_, code) = curl(&[&format!("{other}/ready")]);
    assert_eq!(code, "400");
}

/// The predictor's attributions equal Captum's `IntegratedGradients` on the same checkpoint
/// loaded in `transformers` with its own remote code (same baseline, steps and quadrature):
/// within 1e-3 of the norm, and adding up to the logit's change within 1 % at 50 steps
/// (scripts/captum_check.py makes the checks). Runs where `scripts/setup-ref-venv.sh` has made
/// `.venv-ref`: `cargo test -p goemotions-tests --test predictor -- --ignored captum`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs .venv-ref (scripts/setup-ref-venv.sh: full torch + transformers + captum, 5 GB)"]
async fn explanations_equal_captums_integrated_gradients() {
    let dir = tempfile::tempdir().unwrap();
    let (_proc, addr, _, version) = serve_shared(dir.path(), &[]).await;
    let version_dir = dir
        .path()
        .join(format!("models/goemotions/versions/{version}"));
    let predictor = bin("predictor");
    let texts = data_dir().join("test.tsv");
    let out = run_reference_script(
        "captum_check.py",
        &[
            version_dir.as_os_str(),
            "--addr".as_ref(),
            addr.as_ref(),
            "--predictor".as_ref(),
            predictor.as_os_str(),
            "--texts".as_ref(),
            texts.as_os_str(),
            "--limit".as_ref(),
            "12".as_ref(),
            "--steps".as_ref(),
            "50".as_ref(),
        ],
    );
    assert!(out.contains("explanations checked against Captum"), "{out}");
}
