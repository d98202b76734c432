//! `predictor`: serve a GoEmotions checkpoint over gRPC, or call a running predictor.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use common::registry::ModelRef;
use predictor::batcher::{Batcher, BatcherConfig};
use predictor::reload::{set_health, ModelSlot, Reloader};
use predictor::service::PredictorService;
use predictor::telemetry::{self, Metrics};
use predictor::Limits;
use proto::v1::predictor_client::PredictorClient;
use proto::v1::predictor_server::PredictorServer;
use proto::v1::{
    stream_classify_response, ClassifyOptions, ClassifyRequest, StreamClassifyRequest, TextResult,
};
use tokio::io::AsyncBufReadExt;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, Server, ServerTlsConfig};
use tonic::{Request, Status};
use tonic_health::ServingStatus;

#[derive(Parser)]
#[command(
    name = "predictor",
    version,
    about = "Multi-label emotion classification over gRPC (goemotions.v1.Predictor)"
)]
struct Cli {
    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true)]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a checkpoint (a fixed version, or an alias that is followed with hot reload).
    Serve(Box<ServeArgs>),
    /// Classify texts given as arguments (unary Classify), or lines from stdin (ClassifyStream).
    Classify(ClassifyArgs),
    /// Print the served model's version, labels, thresholds and limits.
    Info(ClientArgs),
    /// Drive a running predictor with concurrent streams and print throughput and latency.
    Bench(BenchArgs),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Predictor address (loopback).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// GoEmotions TSV (or plain text, one per line) whose texts are sent.
    #[arg(long, default_value = ".cache/data/goemotions/test.tsv")]
    texts: std::path::PathBuf,
    /// Concurrent ClassifyStream calls.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Outstanding texts per stream.
    #[arg(long, default_value_t = 32)]
    in_flight: usize,
    /// Stop sending after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    max_seconds: f64,
    /// Sequential single-text unary calls for idle latency.
    #[arg(long, default_value_t = 300)]
    idle_requests: usize,
    /// Predictor process id, to report its peak RSS (VmHWM).
    #[arg(long)]
    pid: Option<u32>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Checkpoint URI: …/models/NAME/versions/V (fixed) or …/models/NAME/aliases/A (followed);
    /// file:///path, a path, or s3://bucket/prefix (AWS_* environment for credentials and endpoint).
    #[arg(long, env = "PREDICTOR_MODEL")]
    model: String,
    /// gRPC listen address.
    #[arg(long, env = "PREDICTOR_LISTEN", default_value = "0.0.0.0:50051")]
    listen: SocketAddr,
    /// Prometheus /metrics listen address (plain HTTP).
    #[arg(long, env = "PREDICTOR_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    metrics_listen: SocketAddr,
    /// How often to check the alias for a new version (seconds).
    #[arg(long, env = "PREDICTOR_POLL_INTERVAL_SECS", default_value_t = 10.0)]
    poll_interval_secs: f64,
    /// Texts per forward pass at most.
    #[arg(long, env = "PREDICTOR_MAX_BATCH_SIZE", default_value_t = 32)]
    max_batch_size: usize,
    /// Padded tokens per forward pass at most (batch size × longest text).
    #[arg(long, env = "PREDICTOR_MAX_BATCH_TOKENS", default_value_t = 8192)]
    max_batch_tokens: usize,
    /// Longest time (ms) the first text of a batch waits for more texts.
    #[arg(long, env = "PREDICTOR_MAX_WAIT_MS", default_value_t = 1.0)]
    max_wait_ms: f64,
    /// Texts waiting for inference at most; beyond, requests get RESOURCE_EXHAUSTED.
    #[arg(long, env = "PREDICTOR_QUEUE_CAPACITY", default_value_t = 1024)]
    queue_capacity: usize,
    /// Texts in one Classify request at most (more: INVALID_ARGUMENT).
    #[arg(long, env = "PREDICTOR_MAX_TEXTS_PER_REQUEST", default_value_t = Limits::default().max_texts_per_request)]
    max_texts_per_request: usize,
    /// Bytes per text at most (more: INVALID_ARGUMENT). Texts over the model's max length in tokens are truncated.
    #[arg(long, env = "PREDICTOR_MAX_TEXT_BYTES", default_value_t = Limits::default().max_text_bytes)]
    max_text_bytes: usize,
    /// Texts of one ClassifyStream in flight at most; the server reads no further until results go out.
    #[arg(long, env = "PREDICTOR_MAX_IN_FLIGHT_PER_STREAM", default_value_t = Limits::default().max_in_flight_per_stream)]
    max_in_flight_per_stream: usize,
    /// auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, env = "PREDICTOR_DEVICE", default_value = "auto")]
    device: String,
    /// Async runtime threads for gRPC I/O and tokenization (inference has its own thread).
    #[arg(long, env = "PREDICTOR_RUNTIME_THREADS", default_value_t = 1)]
    runtime_threads: usize,
    /// CPU threads for inference (default: all cores).
    #[arg(long, env = "PREDICTOR_THREADS")]
    threads: Option<i32>,
    /// PEM certificate chain: serve TLS (with --tls-key).
    #[arg(long, env = "PREDICTOR_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "PREDICTOR_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Require `authorization: Bearer <token>` on Predictor calls (health and reflection stay open).
    #[arg(long, env = "PREDICTOR_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
    /// After SIGTERM, longest time (s) to drain in-flight requests before exiting anyway.
    #[arg(long, env = "PREDICTOR_DRAIN_TIMEOUT_SECS", default_value_t = 20.0)]
    drain_timeout_secs: f64,
}

#[derive(clap::Args, Clone)]
struct ClientArgs {
    /// Predictor address (http://… or https://…).
    #[arg(long, env = "PREDICTOR_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Bearer token, if the predictor requires one.
    #[arg(long, env = "PREDICTOR_AUTH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA certificate to verify an https predictor.
    #[arg(long, env = "PREDICTOR_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
struct ClassifyArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// One threshold for all labels instead of the model's per-label thresholds.
    #[arg(long)]
    threshold: Option<f32>,
    /// How many top labels to show besides those that pass.
    #[arg(long, default_value_t = 3)]
    top_k: u32,
    /// Print all 28 scores.
    #[arg(long)]
    all_scores: bool,
    /// Texts to classify; none: read one text per line from stdin and stream them.
    texts: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    common::logging::init(&cli.log_format);
    // The inference thread does the heavy work; on small pods more runtime threads only compete
    // with it for cores.
    let runtime_threads = match &cli.command {
        Command::Serve(args) => args.runtime_threads.max(1),
        _ => 2,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(runtime_threads)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Classify(args) => classify(args).await,
            Command::Info(args) => info(args).await,
            Command::Bench(args) => bench(args).await,
        }
    })
}

/// Compares in constant time so the token cannot be guessed byte by byte from timings.
fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    let device = common::device::select(&args.device).map_err(anyhow::Error::msg)?;
    let reference =
        ModelRef::parse(&args.model).with_context(|| format!("--model {}", args.model))?;
    tracing::info!(device = common::device::describe(device), model = %args.model, "starting predictor");

    let metrics = Metrics::new();
    let batcher = Batcher::start(
        BatcherConfig {
            max_batch_size: args.max_batch_size.max(1),
            max_batch_tokens: args.max_batch_tokens.max(1),
            max_wait: Duration::from_secs_f64(args.max_wait_ms.max(0.0) / 1000.0),
            queue_capacity: args.queue_capacity.max(1),
        },
        metrics.clone(),
    );
    let slot = Arc::new(ModelSlot::default());
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);

    let reloader = Reloader {
        reference,
        device,
        slot: slot.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        poll_interval: Duration::from_secs_f64(args.poll_interval_secs.max(0.05)),
    };
    tokio::spawn(reloader.run(drain_rx.clone()));

    let service = PredictorService {
        slot,
        batcher,
        limits: Limits {
            max_texts_per_request: args.max_texts_per_request,
            max_text_bytes: args.max_text_bytes,
            max_in_flight_per_stream: args.max_in_flight_per_stream.max(1),
        },
        metrics: metrics.clone(),
        draining: drain_rx.clone(),
    };
    let token = args
        .auth_token
        .clone()
        .map(|t| format!("Bearer {t}").into_bytes());
    let predictor =
        PredictorServer::with_interceptor(service, move |req: Request<()>| match &token {
            None => Ok(req),
            Some(expected) => match req.metadata().get("authorization") {
                Some(v) if token_matches(v.as_bytes(), expected) => Ok(req),
                Some(_) => Err(Status::unauthenticated("invalid bearer token")),
                None => Err(Status::unauthenticated(
                    "missing `authorization: Bearer <token>` metadata",
                )),
            },
        });
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let mut metrics_drain = drain_rx.clone();
    let metrics_addr = args.metrics_listen;
    tokio::spawn(async move {
        let stop = async move {
            let _ = metrics_drain.changed().await;
        };
        if let Err(e) = telemetry::serve_metrics(metrics_addr, metrics, stop).await {
            tracing::error!(error = %e, "metrics endpoint failed");
        }
    });

    let drain_timeout = Duration::from_secs_f64(args.drain_timeout_secs.max(0.0));
    let shutdown = async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: NOT_SERVING, draining in-flight requests");
        set_health(&health, ServingStatus::NotServing).await;
        let _ = drain_tx.send(true);
        tokio::spawn(async move {
            tokio::time::sleep(drain_timeout).await;
            tracing::warn!("drain timeout reached; exiting with requests still open");
            std::process::exit(0);
        });
    };

    let mut builder = Server::builder();
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let cert = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
        let key = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
        builder =
            builder.tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))?;
    }
    tracing::info!(addr = %args.listen, tls = args.tls_cert.is_some(), auth = args.auth_token.is_some(), "gRPC listening");
    builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(predictor)
        .serve_with_shutdown(args.listen, shutdown)
        .await?;
    tracing::info!("drained; bye");
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

type AuthInterceptor = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send>;
type AuthClient =
    PredictorClient<tonic::service::interceptor::InterceptedService<Channel, AuthInterceptor>>;

async fn connect(args: &ClientArgs) -> anyhow::Result<AuthClient> {
    let mut endpoint = Channel::from_shared(args.addr.clone())?;
    if args.addr.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_enabled_roots();
        if let Some(ca) = &args.ca_cert {
            tls = tls.ca_certificate(Certificate::from_pem(std::fs::read(ca)?));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.addr))?;
    let header: Option<MetadataValue<_>> = match &args.token {
        Some(t) => Some(format!("Bearer {t}").parse()?),
        None => None,
    };
    let interceptor: AuthInterceptor = Box::new(move |mut req: Request<()>| {
        if let Some(h) = &header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    });
    Ok(PredictorClient::with_interceptor(channel, interceptor))
}

fn describe(result: &TextResult) -> String {
    let fmt = |v: &[proto::v1::LabelScore]| {
        v.iter()
            .map(|l| format!("{} {:.3}", l.name, l.score))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = if result.labels.is_empty() {
        "labels: (none)".to_string()
    } else {
        format!("labels: {}", fmt(&result.labels))
    };
    s.push_str(&format!(" | top: {}", fmt(&result.top_k)));
    if result.truncated {
        s.push_str(" | truncated");
    }
    if !result.scores.is_empty() {
        let all: Vec<String> = result.scores.iter().map(|v| format!("{v:.3}")).collect();
        s.push_str(&format!(" | scores: [{}]", all.join(", ")));
    }
    s
}

async fn classify(args: ClassifyArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.client).await?;
    let options = ClassifyOptions {
        top_k: args.top_k,
        return_all_scores: args.all_scores,
        threshold: args.threshold,
    };
    if !args.texts.is_empty() {
        let started = Instant::now();
        let response = client
            .classify(ClassifyRequest {
                texts: args.texts.clone(),
                options: Some(options),
            })
            .await
            .map_err(|s| anyhow::anyhow!("Classify failed: {}: {}", s.code(), s.message()))?
            .into_inner();
        for (text, result) in args.texts.iter().zip(&response.results) {
            println!("{text}\n  {}", describe(result));
        }
        eprintln!(
            "model {} — {} texts in {:.1} ms",
            response.model_version,
            args.texts.len(),
            started.elapsed().as_secs_f64() * 1000.0
        );
        return Ok(());
    }
    // Stream stdin lines; results print as they arrive, tagged with their line number.
    let (tx, rx) = tokio::sync::mpsc::channel::<StreamClassifyRequest>(256);
    let texts = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let reader_texts = texts.clone();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut n = 0u64;
        while let Ok(Some(line)) = lines.next_line().await {
            n += 1;
            reader_texts
                .lock()
                .map(|mut m| m.insert(n.to_string(), line.clone()))
                .ok();
            let item = StreamClassifyRequest {
                id: n.to_string(),
                text: line,
                options: Some(options),
            };
            if tx.send(item).await.is_err() {
                break;
            }
        }
    });
    let mut responses = client
        .classify_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow::anyhow!("ClassifyStream failed: {}: {}", s.code(), s.message()))?
        .into_inner();
    while let Some(r) = responses.message().await? {
        let text = texts
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&r.id))
            .unwrap_or_default();
        match r.outcome {
            Some(stream_classify_response::Outcome::Result(result)) => {
                println!("[{}] {text}\n  {}", r.id, describe(&result))
            }
            Some(stream_classify_response::Outcome::Error(e)) => {
                println!(
                    "[{}] {text}\n  error {}: {}",
                    r.id,
                    tonic::Code::from(e.code),
                    e.message
                )
            }
            None => {}
        }
    }
    Ok(())
}

async fn info(args: ClientArgs) -> anyhow::Result<()> {
    let mut client = connect(&args).await?;
    let info = client
        .get_model_info(proto::v1::GetModelInfoRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("GetModelInfo failed: {}: {}", s.code(), s.message()))?
        .into_inner();
    println!(
        "model {} version {} (base {}, pooling {}, max length {})",
        info.model_name, info.version, info.base_model, info.pooling, info.max_length
    );
    println!("source {}", info.source_uri);
    for (i, (label, t)) in info.labels.iter().zip(&info.thresholds).enumerate() {
        println!("  {i:2} {label:<15} threshold {t:.2}");
    }
    let mut metrics: Vec<_> = info.metrics.iter().collect();
    metrics.sort_by(|a, b| a.0.cmp(b.0));
    for (k, v) in metrics {
        println!("  {k} = {v:.4}");
    }
    Ok(())
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let raw = std::fs::read_to_string(&args.texts)
        .with_context(|| format!("reading {}", args.texts.display()))?;
    let texts: Vec<String> = raw
        .lines()
        .map(|l| l.split('\t').next().unwrap_or("").to_string())
        .collect();
    let channel = Channel::from_shared(args.addr.clone())?.connect().await?;
    let r = predictor::bench::run(
        channel,
        &texts,
        args.streams.max(1),
        args.in_flight.max(1),
        args.idle_requests,
        Duration::from_secs_f64(args.max_seconds),
    )
    .await?;
    println!(
        "predictor: {} texts in {:.1}s over {} streams = {:.1} texts/s; stream latency p50 {:.1} ms p99 {:.1} ms; idle single-text p50 {:.2} ms p99 {:.2} ms",
        r.texts, r.seconds, args.streams, r.throughput, r.stream_p50_ms, r.stream_p99_ms, r.idle_p50_ms, r.idle_p99_ms
    );
    if let Some(pid) = args.pid {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM")) {
            println!(
                "predictor peak RSS: {}",
                line.trim_start_matches("VmHWM:").trim()
            );
        }
    }
    Ok(())
}
