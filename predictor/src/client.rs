//! Client-side commands of the `predictor` binary: classify texts (unary, or stdin lines over a
//! stream), explain a text's labels, print model info, and run the load benchmark against a
//! running predictor.
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::v1::predictor_client::PredictorClient;
use proto::v1::{
    stream_classify_response, ClassifyOptions, ClassifyRequest, StreamClassifyRequest, TextResult,
};
use tokio::io::AsyncBufReadExt;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::cli::{BenchArgs, ClassifyArgs, ClientArgs, ExplainArgs};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid address {addr}: {message}")]
    Address { addr: String, message: String },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("the token is not a valid header value")]
    Token,
    #[error("{method} failed: {code:?}: {message}")]
    Rpc {
        method: &'static str,
        code: tonic::Code,
        message: String,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("load generator task failed: {0}")]
    Task(String),
}

fn rpc(method: &'static str) -> impl Fn(Status) -> ClientError {
    move |s| ClientError::Rpc {
        method,
        code: s.code(),
        message: s.message().to_string(),
    }
}

type AuthInterceptor = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send>;
type AuthClient =
    PredictorClient<tonic::service::interceptor::InterceptedService<Channel, AuthInterceptor>>;

async fn connect(args: &ClientArgs) -> Result<AuthClient, ClientError> {
    let endpoint = common::grpc::client_endpoint(&args.addr, args.ca_cert.as_deref()).map_err(
        |e| match e {
            common::grpc::EndpointError::Address { addr, message } => {
                ClientError::Address { addr, message }
            }
            common::grpc::EndpointError::Read { path, source } => {
                ClientError::Read { path, source }
            }
        },
    )?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            addr: args.addr.clone(),
            source,
        })?;
    let header: Option<MetadataValue<_>> = match &args.token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .map_err(|_| ClientError::Token)?,
        ),
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

/// One line per result: passing labels, top-k, flags and (when asked) all scores.
pub fn describe(result: &TextResult) -> String {
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
    for g in &result.groups {
        s.push_str(&format!(" | {}: {}", g.name, fmt(&g.labels)));
    }
    s
}

/// `predictor classify`: texts as arguments over Classify, or stdin lines over ClassifyStream.
pub async fn classify(args: ClassifyArgs) -> Result<(), ClientError> {
    let mut client = connect(&args.client).await?;
    let options = ClassifyOptions {
        top_k: args.top_k,
        return_all_scores: args.all_scores,
        threshold: args.threshold,
        grouping_names: args.groups.clone(),
        ..Default::default()
    };
    if !args.texts.is_empty() {
        let started = Instant::now();
        let response = client
            .classify(ClassifyRequest {
                texts: args.texts.clone(),
                options: Some(options),
            })
            .await
            .map_err(rpc("Classify"))?
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
                options: Some(options.clone()),
            };
            if tx.send(item).await.is_err() {
                break;
            }
        }
    });
    let mut responses = client
        .classify_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(rpc("ClassifyStream"))?
        .into_inner();
    while let Some(r) = responses.message().await.map_err(rpc("ClassifyStream"))? {
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

/// `predictor info`: the served model's version, labels, thresholds, metrics and limits.
pub async fn info(args: ClientArgs) -> Result<(), ClientError> {
    let mut client = connect(&args).await?;
    let info = client
        .get_model_info(proto::v1::GetModelInfoRequest {})
        .await
        .map_err(rpc("GetModelInfo"))?
        .into_inner();
    println!(
        "model {} version {} (base {}, pooling {}, max length {})",
        info.model_name, info.version, info.base_model, info.pooling, info.max_length
    );
    println!("source {}", info.source_uri);
    println!(
        "precision {}; limits: {} texts/request, {} bytes/text, {} bytes/message, {} in flight/stream, queue {}; explain: {} labels, {} steps",
        info.precision,
        info.max_texts_per_request,
        info.max_text_bytes,
        info.max_message_bytes,
        info.max_in_flight_per_stream,
        info.queue_capacity,
        info.max_explain_labels,
        info.max_explain_steps
    );
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

/// `predictor bench`: concurrent streams over a text file, then idle single-text latency.
pub async fn bench(args: BenchArgs) -> Result<(), ClientError> {
    let raw = std::fs::read_to_string(&args.texts).map_err(|source| ClientError::Read {
        path: args.texts.display().to_string(),
        source,
    })?;
    let texts: Vec<String> = raw
        .lines()
        .map(|l| l.split('\t').next().unwrap_or("").to_string())
        .collect();
    let channel = Channel::from_shared(args.addr.clone())
        .map_err(|e| ClientError::Address {
            addr: args.addr.clone(),
            message: e.to_string(),
        })?
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            addr: args.addr.clone(),
            source,
        })?;
    let r = crate::bench::run(
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
        let path = format!("/proc/{pid}/status");
        let status =
            std::fs::read_to_string(&path).map_err(|source| ClientError::Read { path, source })?;
        if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM")) {
            println!(
                "predictor peak RSS: {}",
                line.trim_start_matches("VmHWM:").trim()
            );
        }
    }
    Ok(())
}

/// `predictor explain`: one text's labels, each with its words' attributions (a table with
/// bars, or the response as JSON).
pub async fn explain(args: ExplainArgs) -> Result<(), ClientError> {
    let mut client = connect(&args.client).await?;
    let response = client
        .explain(proto::v1::ExplainRequest {
            text: args.text.clone(),
            labels: args.labels.clone(),
            steps: args.steps,
            threshold: args.threshold,
        })
        .await
        .map_err(rpc("Explain"))?
        .into_inner();
    if args.json {
        println!("{}", explanation_json(&response));
    } else {
        print!("{}", describe_explanation(&response));
    }
    Ok(())
}

/// The response as one JSON object (the proto's field names).
pub fn explanation_json(r: &proto::v1::ExplainResponse) -> serde_json::Value {
    serde_json::json!({
        "model_version": r.model_version,
        "method": r.method,
        "baseline": r.baseline,
        "steps": r.steps,
        "precision": r.precision,
        "truncated": r.truncated,
        "num_tokens": r.num_tokens,
        "words": r.words.iter().map(|w| serde_json::json!({
            "text": w.text, "start": w.start, "end": w.end,
        })).collect::<Vec<_>>(),
        "labels": r.labels.iter().map(|l| serde_json::json!({
            "id": l.id,
            "name": l.name,
            "score": l.score,
            "predicted": l.predicted,
            "logit": l.logit,
            "baseline_logit": l.baseline_logit,
            "convergence_delta": l.convergence_delta,
            "attributions": l.attributions,
        })).collect::<Vec<_>>(),
    })
}

/// A table per label: each word with its attribution and a bar (`+` pushed the label up, `-`
/// down), scaled to the label's largest attribution.
pub fn describe_explanation(r: &proto::v1::ExplainResponse) -> String {
    const BAR: f32 = 24.0;
    let mut s = format!(
        "model {} · {} steps of {} · baseline {} · {}{}\n",
        r.model_version,
        r.steps,
        r.method,
        r.baseline,
        r.precision,
        if r.truncated {
            " · text truncated"
        } else {
            ""
        }
    );
    let width = r
        .words
        .iter()
        .map(|w| w.text.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(4, 24);
    for l in &r.labels {
        s.push_str(&format!(
            "\n{} {:.3}{} · logit {:+.3} from {:+.3} at the baseline · attributions add up to {:+.3} (off by {:.1e})\n",
            l.name,
            l.score,
            if l.predicted { " (predicted)" } else { "" },
            l.logit,
            l.baseline_logit,
            l.attributions.iter().sum::<f32>(),
            l.convergence_delta.abs()
        ));
        let largest = l
            .attributions
            .iter()
            .fold(0f32, |m, a| m.max(a.abs()))
            .max(f32::MIN_POSITIVE);
        for (w, a) in r.words.iter().zip(&l.attributions) {
            let n = ((a.abs() / largest) * BAR).round() as usize;
            let bar = if *a >= 0.0 { "+" } else { "-" }.repeat(n);
            let word: String = w.text.chars().take(width).collect();
            s.push_str(&format!("  {word:<width$} {a:+8.3} {bar}\n"));
        }
    }
    s
}
