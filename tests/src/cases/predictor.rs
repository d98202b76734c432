//! Adversarial cases against the predictor process (real checkpoint, real gRPC on 127.0.0.1).
use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::registry::Registry;
use proto::v1::predictor_client::PredictorClient;
use proto::v1::{
    stream_classify_response::Outcome as Item, ClassifyRequest, GetModelInfoRequest,
    StreamClassifyRequest,
};
use tonic::Code;

use super::Outcome;
use crate::*;

/// Trains (once per process) and serves the shared registry's `latest` from `dir`.
pub async fn serve_latest(dir: &Path, extra: &[&str]) -> (Proc, String, u16) {
    shared_registry(dir);
    let alias = dir.join("models/goemotions/aliases/latest");
    let (mut proc, addr, metrics) = spawn_predictor(
        alias.to_str().expect("utf-8 path"),
        extra,
        &[],
        dir.join("p.log"),
    );
    wait_serving(&mut proc, &addr, Duration::from_secs(60)).await;
    (proc, addr, metrics)
}

fn item(id: &str, text: String) -> StreamClassifyRequest {
    StreamClassifyRequest {
        id: id.into(),
        text,
        options: None,
    }
}

const LONG: &str =
    "I can't believe how amazing this turned out, thank you all so much for everything ";

/// An item over the 4 MiB message limit: what was read is answered, the stream ends
/// RESOURCE_EXHAUSTED (not OK), saying what to resend; a unary call over the limit too.
pub async fn oversized_items(dir: &Path) -> Outcome {
    let out = Outcome::new(
        "stream item over 4 MiB",
        "earlier item answered; stream ends RESOURCE_EXHAUSTED naming what to resend; unary too",
    );
    let (_proc, addr, _) = serve_latest(dir, &[]).await;
    let mut c = client(&addr).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut stream = match c
        .classify_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    {
        Ok(s) => s.into_inner(),
        Err(s) => return out.saw(format!("stream refused: {s:?}"), false),
    };
    let _ = tx.send(item("small-1", "what a day".into())).await;
    // Let the first item be read before the oversized one arrives.
    let first = stream.message().await;
    let _ = tx.send(item("huge", "x".repeat(5 << 20))).await;
    let _ = tx.send(item("small-2", "fine".into())).await;
    let mut answered = Vec::new();
    if let Ok(Some(m)) = &first {
        answered.push(m.id.clone());
    }
    let end = loop {
        match stream.message().await {
            Ok(Some(m)) => answered.push(m.id),
            Ok(None) => break Code::Ok,
            Err(s) => {
                break if s.message().contains("resend") {
                    s.code()
                } else {
                    Code::Unknown
                }
            }
        }
    };
    let unary = c
        .classify(ClassifyRequest {
            texts: vec!["y".repeat(5 << 20)],
            options: None,
        })
        .await
        .err()
        .map(|s| s.code());
    out.saw(
        format!("answered {answered:?}, stream ended {end:?}, unary {unary:?}"),
        answered == ["small-1"]
            && end == Code::ResourceExhausted
            && unary == Some(Code::ResourceExhausted),
    )
}

/// SIGTERM while a stream has items in flight: every item read is answered once, the stream
/// ends UNAVAILABLE (resend elsewhere), never OK with items missing; the process exits 0.
pub async fn sigterm_mid_stream(dir: &Path) -> Outcome {
    let out = Outcome::new(
        "SIGTERM with a stream in flight",
        "read items answered once; stream ends UNAVAILABLE saying to resend; exit 0",
    );
    let (mut proc, addr, _) = serve_latest(dir, &[]).await;
    let mut c = client(&addr).await;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut stream = match c
        .classify_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    {
        Ok(s) => s.into_inner(),
        Err(s) => return out.saw(format!("stream refused: {s:?}"), false),
    };
    for i in 0..40 {
        let _ = tx.send(item(&i.to_string(), LONG.repeat(3))).await;
    }
    let mut ids = HashSet::new();
    if let Ok(Some(m)) = stream.message().await {
        ids.insert(m.id);
    }
    proc.signal(libc::SIGTERM);
    let mut duplicates = 0;
    let end = loop {
        match stream.message().await {
            Ok(Some(m)) => {
                if !matches!(m.outcome, Some(Item::Result(_))) || !ids.insert(m.id) {
                    duplicates += 1;
                }
            }
            Ok(None) => break (Code::Ok, String::new()),
            Err(s) => break (s.code(), s.message().to_string()),
        }
    };
    drop(tx);
    let status = proc.wait_timeout(Duration::from_secs(30));
    out.saw(
        format!(
            "{} answered, {duplicates} duplicates/errors, stream ended {:?}, exit {status:?}",
            ids.len(),
            end.0
        ),
        end.0 == Code::Unavailable
            && end.1.contains("resend")
            && duplicates == 0
            && !ids.is_empty()
            && status.is_some_and(|s| s.success()),
    )
}

/// A version made invalid on purpose: (name, log text expected on refusal, config edit,
/// manifest edit).
type BrokenVersion = (
    &'static str,
    &'static str,
    fn(&mut serde_json::Value),
    fn(&mut serde_json::Value),
);

/// Checkpoints whose config, manifest and weights disagree are refused at load with a message
/// naming the field; the predictor keeps serving the good version, and a failed version is not
/// downloaded again on every poll (exponential backoff).
pub async fn invalid_checkpoints_refused(dir: &Path) -> Outcome {
    let out = Outcome::new(
        "alias moved to invalid checkpoints (bad config or manifest fields; weights holding a NaN)",
        "each refused naming the field or tensor, good version keeps serving, failed loads back off",
    );
    let v1 = shared_registry(dir);
    let name = "goemotions";
    let variants: [BrokenVersion; 5] = [
        (
            "bad-max-length",
            "max_length must be in",
            |_| {},
            |m| m["max_length"] = 100_000.into(),
        ),
        (
            "bad-layers",
            "num_hidden_layers 3, but model.safetensors holds 6 layers",
            |c| c["num_hidden_layers"] = 3.into(),
            |_| {},
        ),
        (
            "bad-heads",
            "num_attention_heads must be positive",
            |c| c["num_attention_heads"] = 0.into(),
            |_| {},
        ),
        (
            "bad-labels",
            "manifest.json lists 27 labels",
            |_| {},
            |m| {
                for key in ["labels", "thresholds"] {
                    if let Some(a) = m[key].as_array_mut() {
                        a.pop();
                    }
                }
            },
        ),
        (
            "bad-grouping",
            "names label id 99, but there are 28 labels",
            |_| {},
            |m| m["groupings"][0]["groups"][0]["members"] = serde_json::json!([0, 99]),
        ),
    ];
    for (version, _, edit_config, edit_manifest) in &variants {
        copy_version(dir, name, &v1, version);
        rewrite_version(dir, name, version, edit_config, edit_manifest);
    }
    // Weights that verify against the manifest but hold a NaN.
    copy_version(dir, name, &v1, "nan-weights");
    poison_weights(dir, name, "nan-weights", "classifier.weight");
    let variants: Vec<(&str, &str)> = variants
        .iter()
        .map(|(v, needle, _, _)| (*v, *needle))
        .chain([(
            "nan-weights",
            "tensor classifier.weight holds NaN or infinite values",
        )])
        .collect();
    let alias = dir.join("models/goemotions/aliases/latest");
    let (mut proc, addr, metrics_port) = spawn_predictor(
        alias.to_str().expect("utf-8 path"),
        &["--poll-interval-secs", "0.1"],
        &[],
        dir.join("p.log"),
    );
    wait_serving(&mut proc, &addr, Duration::from_secs(60)).await;
    let registry = Registry::open(dir.to_str().expect("utf-8 path")).expect("registry");
    let mut c = client(&addr).await;
    let mut problems = Vec::new();
    let mut failed_loads = 0.0;
    for (i, (version, needle)) in variants.iter().enumerate() {
        let _ = registry.set_alias(name, "latest", version, None).await;
        let before = metric_value(
            &metrics_text(metrics_port).await,
            "predictor_reloads_total{result=\"failed\"}",
        );
        // The first variant is watched for 3 s (30 polls) to measure the backoff.
        let watch = if i == 0 { 3000 } else { 800 };
        let long = c.clone();
        let co_batched = tokio::spawn(async move {
            let mut c = long;
            let mut ok = 0;
            for _ in 0..5 {
                ok += c
                    .classify(ClassifyRequest {
                        texts: vec![LONG.repeat(20), "ok".into()],
                        options: None,
                    })
                    .await
                    .is_ok() as usize;
            }
            ok
        });
        tokio::time::sleep(Duration::from_millis(watch)).await;
        if i == 0 {
            failed_loads = metric_value(
                &metrics_text(metrics_port).await,
                "predictor_reloads_total{result=\"failed\"}",
            ) - before;
        }
        // A slow (loaded) machine may need longer for the first attempt: wait for the refusal.
        let started = Instant::now();
        while !proc.log_text().contains(needle) && started.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let served = c
            .get_model_info(GetModelInfoRequest {})
            .await
            .map(|r| r.into_inner().version)
            .unwrap_or_default();
        if served != v1 {
            problems.push(format!("{version}: served {served}"));
        }
        if !proc.log_text().contains(needle) {
            problems.push(format!("{version}: log lacks {needle:?}"));
        }
        if co_batched.await.unwrap_or(0) != 5 {
            problems.push(format!("{version}: requests failed meanwhile"));
        }
    }
    let _ = registry.set_alias(name, "latest", &v1, None).await;
    out.saw(
        format!(
            "{} problems {problems:?}; {failed_loads} failed loads of one version over 30 polls",
            problems.len()
        ),
        problems.is_empty() && (1.0..=6.0).contains(&failed_loads),
    )
}

/// An alias pointing at a folder whose manifest names another version loads once, not on
/// every poll (identity = location + manifest sha256, not the version string).
pub async fn version_name_mismatch_loads_once(dir: &Path) -> Outcome {
    let out = Outcome::new(
        "manifest version differs from its folder name",
        "loaded once, then no reloads",
    );
    let v1 = shared_registry(dir);
    copy_version(dir, "goemotions", &v1, "folder-name");
    rewrite_version(
        dir,
        "goemotions",
        "folder-name",
        |_| {},
        |m| m["version"] = "manifest-name".into(),
    );
    let alias = dir.join("models/goemotions/aliases/latest");
    let (mut proc, addr, metrics_port) = spawn_predictor(
        alias.to_str().expect("utf-8 path"),
        &["--poll-interval-secs", "0.1"],
        &[],
        dir.join("p.log"),
    );
    wait_serving(&mut proc, &addr, Duration::from_secs(60)).await;
    let registry = Registry::open(dir.to_str().expect("utf-8 path")).expect("registry");
    let _ = registry
        .set_alias("goemotions", "latest", "folder-name", None)
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let loads = metric_value(
        &metrics_text(metrics_port).await,
        "predictor_reloads_total{result=\"ok\"}",
    );
    let served = client(&addr)
        .await
        .get_model_info(GetModelInfoRequest {})
        .await
        .map(|r| r.into_inner().version)
        .unwrap_or_default();
    out.saw(
        format!("{loads} successful loads in 25 polls, serving {served}"),
        loads == 2.0 && served == "manifest-name",
    )
}

/// Eight streams send 128 long texts each and hang up: their texts are dropped before they
/// reach the model and a fresh request is answered at once.
pub async fn mass_hang_up(dir: &Path) -> Outcome {
    let out = Outcome::new(
        "8 streams × 128 texts, then hang up",
        "at least half of the 1,024 texts dropped before the model; a fresh Classify answered",
    );
    let (_proc, addr, metrics_port) = serve_latest(dir, &[]).await;
    let mut tasks = Vec::new();
    for s in 0..8 {
        let mut c = client(&addr).await;
        tasks.push(tokio::spawn(async move {
            let items: Vec<StreamClassifyRequest> = (0..128)
                .map(|i| item(&format!("{s}-{i}"), LONG.repeat(2)))
                .collect();
            let (tx, rx) = tokio::sync::mpsc::channel(128);
            for it in items {
                let _ = tx.send(it).await;
            }
            let stream = c
                .classify_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
            // Hold the stream open long enough for the server to read everything, then drop it.
            tokio::time::sleep(Duration::from_millis(600)).await;
            drop(stream);
            drop(tx);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let started = Instant::now();
    let answered = client(&addr)
        .await
        .classify(ClassifyRequest {
            texts: vec!["is anyone still there?".into()],
            options: None,
        })
        .await
        .is_ok();
    let latency = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let abandoned = metric_value(
        &metrics_text(metrics_port).await,
        "predictor_abandoned_texts_total",
    );
    out.saw(
        format!(
            "fresh request in {latency:.2?} (ok: {answered}); {abandoned} texts dropped unscored"
        ),
        answered && latency < Duration::from_secs(10) && abandoned >= 512.0,
    )
}

/// Forty streams at once with a small queue: streams are slowed down (flow control), no item is
/// rejected.
pub async fn many_streams_back_pressure(dir: &Path) -> Outcome {
    let out = Outcome::new(
        "40 streams × 16 texts, queue of 64",
        "every item answered with a result, none rejected",
    );
    let (_proc, addr, _) = serve_latest(
        dir,
        &["--queue-capacity", "64", "--max-in-flight-per-stream", "32"],
    )
    .await;
    let mut tasks = Vec::new();
    for s in 0..40 {
        let mut c = client(&addr).await;
        tasks.push(tokio::spawn(async move {
            let items: Vec<StreamClassifyRequest> = (0..16)
                .map(|i| item(&format!("{s}-{i}"), format!("thanks a lot, number {i}!")))
                .collect();
            let mut stream = c
                .classify_stream(tokio_stream::iter(items))
                .await?
                .into_inner();
            let (mut ok, mut rejected) = (0, 0);
            while let Some(m) = stream.message().await? {
                match m.outcome {
                    Some(Item::Result(_)) => ok += 1,
                    _ => rejected += 1,
                }
            }
            Ok::<_, tonic::Status>((ok, rejected))
        }));
    }
    let (mut ok, mut rejected, mut failed) = (0, 0, 0);
    for t in tasks {
        match t.await {
            Ok(Ok((o, r))) => {
                ok += o;
                rejected += r;
            }
            _ => failed += 1,
        }
    }
    out.saw(
        format!("{ok} results, {rejected} item errors, {failed} failed streams"),
        ok == 640 && rejected == 0 && failed == 0,
    )
}

/// Without --threads, inference uses the CPUs the process may use (here one, by affinity).
pub async fn threads_follow_the_cpu_allowance(dir: &Path) -> Outcome {
    let out = Outcome::new(
        "default threads under `taskset -c 0`",
        "logs intra-op threads=1",
    );
    let port = free_port();
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0"])
        .arg(bin("predictor"))
        .args(["serve", "--device", "cpu", "--model"])
        .arg(dir.join("nothing-here"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
        .env("RUST_LOG", "info");
    let proc = Proc::spawn(cmd, dir.join("taskset.log"));
    let started = Instant::now();
    while !proc.log_text().contains("intra-op threads")
        && started.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line = proc
        .log_text()
        .lines()
        .find(|l| l.contains("intra-op threads"))
        .unwrap_or_default()
        .to_string();
    out.saw(
        line.clone(),
        line.contains("threads=1") && line.contains("quota"),
    )
}

/// Reflection answers v1alpha (grpcurl ≤ 1.8.7) and lists exactly what is served.
pub async fn reflection_lists_what_is_served(dir: &Path) -> Outcome {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    let out = Outcome::new(
        "reflection v1alpha ListServices",
        "Predictor and Health, not Trainer",
    );
    let (_proc, addr, _) = serve_latest(dir, &[]).await;
    let Ok(channel) = tonic::transport::Channel::from_shared(addr)
        .expect("addr")
        .connect()
        .await
    else {
        return out.saw("cannot connect", false);
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let names: Vec<String> = match ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
    {
        Ok(r) => match r.into_inner().message().await {
            Ok(Some(m)) => match m.message_response {
                Some(MessageResponse::ListServicesResponse(l)) => {
                    l.service.into_iter().map(|s| s.name).collect()
                }
                other => return out.saw(format!("{other:?}"), false),
            },
            other => return out.saw(format!("{other:?}"), false),
        },
        Err(s) => return out.saw(format!("{s:?}"), false),
    };
    let has = |n: &str| names.iter().any(|x| x == n);
    out.saw(
        format!("{names:?}"),
        has("goemotions.v1.Predictor")
            && has("grpc.health.v1.Health")
            && !has("goemotions.v1.Trainer"),
    )
}

/// Token from a file, bearer scheme in any case; no token beyond loopback is refused at start.
pub async fn auth_token_file_and_exposure(dir: &Path) -> Outcome {
    let out = Outcome::new(
        "--auth-token-file, `bearer` in lower case, 0.0.0.0 without a token",
        "no token: UNAUTHENTICATED; lower-case scheme: OK; exposed without token: refused at start",
    );
    let token = dir.join("token");
    std::fs::write(&token, "s3cret-from-file\n").expect("token file");
    let (_proc, addr, _) = serve_latest(
        dir,
        &["--auth-token-file", token.to_str().expect("utf-8 path")],
    )
    .await;
    let channel = tonic::transport::Channel::from_shared(addr)
        .expect("addr")
        .connect()
        .await
        .expect("connect");
    let call = |auth: Option<&'static str>| {
        let channel = channel.clone();
        async move {
            let mut c = proto::v1::predictor_client::PredictorClient::with_interceptor(
                channel,
                move |mut r: tonic::Request<()>| {
                    if let Some(v) = auth {
                        r.metadata_mut()
                            .insert("authorization", v.parse().expect("header"));
                    }
                    Ok(r)
                },
            );
            c.get_model_info(GetModelInfoRequest {})
                .await
                .err()
                .map(|s| s.code())
                .unwrap_or(Code::Ok)
        }
    };
    let anonymous = call(None).await;
    let lower = call(Some("bearer s3cret-from-file")).await;
    let wrong = call(Some("Bearer s3cret")).await;
    let mut cmd = Command::new(bin("predictor"));
    cmd.args(["serve", "--device", "cpu", "--model"])
        .arg(dir.join("nothing-here"))
        .args(["--listen", &format!("0.0.0.0:{}", free_port())])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())]);
    let exposed = cmd.output().expect("run predictor");
    let refused = !exposed.status.success()
        && String::from_utf8_lossy(&exposed.stderr).contains("refusing to listen");
    out.saw(
        format!("anonymous {anonymous:?}, lower-case {lower:?}, wrong {wrong:?}, exposed refused {refused}"),
        anonymous == Code::Unauthenticated
            && lower == Code::Ok
            && wrong == Code::Unauthenticated
            && refused,
    )
}

/// A port in use fails at start, before anything claims to be listening.
pub async fn failed_bind_says_so(dir: &Path) -> Outcome {
    let out = Outcome::new(
        "listen port already in use",
        "exits non-zero naming the address; never logs `gRPC listening`",
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let mut cmd = Command::new(bin("predictor"));
    cmd.args(["serve", "--device", "cpu", "--model"])
        .arg(dir.join("nothing-here"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
        .env("RUST_LOG", "info");
    let run = cmd.output().expect("run predictor");
    let log = String::from_utf8_lossy(&run.stderr).to_string();
    out.saw(
        format!(
            "exit {:?}, names address: {}, logs listening: {}",
            run.status.code(),
            log.contains(&format!("cannot listen on 127.0.0.1:{port}")),
            log.contains("gRPC listening")
        ),
        !run.status.success()
            && log.contains(&format!("cannot listen on 127.0.0.1:{port}"))
            && !log.contains("gRPC listening"),
    )
}

/// A connection with no call open is closed after the idle timeout: a bare TCP connection that
/// sends nothing, and a gRPC client whose HTTP/2 keepalive pings (every 200 ms) keep the socket
/// busy — pings are not calls. A streaming call open longer than the timeout is not cut.
pub async fn idle_connection_closed(dir: &Path) -> Outcome {
    use tokio::io::AsyncReadExt;
    let out = Outcome::new(
        "idle TCP connection; idle gRPC client pinging every 200 ms; a 3 s stream; --idle-timeout-secs 1",
        "both idle ones closed by the server within 4 s (2 idle closes counted); the stream answered",
    );
    let (_proc, addr, metrics) = serve_latest(dir, &["--idle-timeout-secs", "1"]).await;
    let hostport = addr.trim_start_matches("http://").to_string();
    let Ok(mut conn) = tokio::net::TcpStream::connect(&hostport).await else {
        return out.saw("cannot connect", false);
    };
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(_)) => continue,
            Err(_) => break false,
        }
    };
    let waited = started.elapsed();

    // A client that pings: one call, then only keepalive pings.
    let Ok(channel) = tonic::transport::Channel::from_shared(addr.clone())
        .expect("addr")
        .http2_keep_alive_interval(Duration::from_millis(200))
        .keep_alive_while_idle(true)
        .connect()
        .await
    else {
        return out.saw("cannot connect the pinging client", false);
    };
    let mut pinging = PredictorClient::new(channel);
    let first = pinging.get_model_info(GetModelInfoRequest {}).await.is_ok();
    // A stream kept open for 3 s with texts at intervals on another connection: not idle.
    let mut streaming = client(&addr).await;
    let items = async_stream_items(6, Duration::from_millis(500));
    let stream_answers = match streaming.classify_stream(items).await {
        Ok(r) => {
            let mut inbound = r.into_inner();
            let mut n = 0;
            while let Ok(Some(_)) = inbound.message().await {
                n += 1;
            }
            n
        }
        Err(_) => 0,
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_closes = metric_value(
        &metrics_text(metrics).await,
        "predictor_idle_connections_closed_total",
    );
    out.saw(
        format!("bare connection closed {closed} after {waited:.1?}; pinging client's first call ok {first}; idle closes {idle_closes}; stream answered {stream_answers}/6"),
        closed && waited < Duration::from_secs(4) && first && idle_closes >= 2.0 && stream_answers == 6,
    )
}

/// `n` stream items, one every `every`.
fn async_stream_items(
    n: usize,
    every: Duration,
) -> impl tokio_stream::Stream<Item = StreamClassifyRequest> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(n.max(1));
    tokio::spawn(async move {
        for i in 0..n {
            if tx
                .send(item(&format!("slow-{i}"), "hello there".into()))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Pointing the predictor at a folder that does not exist creates nothing.
pub async fn missing_model_creates_nothing(dir: &Path) -> Outcome {
    let out = Outcome::new(
        "--model /missing/folder",
        "NOT_SERVING, and the folder is not created",
    );
    let missing = dir.join("missing/model");
    let (proc, addr, _) = spawn_predictor(
        missing.to_str().expect("utf-8 path"),
        &["--poll-interval-secs", "0.2"],
        &[],
        dir.join("missing.log"),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = health_status(&addr, "").await;
    drop(proc);
    out.saw(
        format!(
            "health {status:?}, folder exists: {}",
            dir.join("missing").exists()
        ),
        status == Some(2) && !dir.join("missing").exists(),
    )
}

/// Every predictor case, for the chaos report.
pub async fn all(root: &Path) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    macro_rules! run {
        ($case:ident) => {{
            let dir = root.join(stringify!($case));
            std::fs::create_dir_all(&dir).expect("case dir");
            outcomes.push($case(&dir).await);
        }};
    }
    run!(oversized_items);
    run!(sigterm_mid_stream);
    run!(invalid_checkpoints_refused);
    run!(version_name_mismatch_loads_once);
    run!(mass_hang_up);
    run!(many_streams_back_pressure);
    run!(threads_follow_the_cpu_allowance);
    run!(reflection_lists_what_is_served);
    run!(auth_token_file_and_exposure);
    run!(failed_bind_says_so);
    run!(idle_connection_closed);
    run!(missing_model_creates_nothing);
    outcomes
}
