//! Load generator for the predictor benchmark: N concurrent ClassifyStream calls over a list of
//! texts (bounded in count and time, loopback only), then idle single-text latency via unary calls.
use std::time::{Duration, Instant};

use proto::v1::predictor_client::PredictorClient;

use crate::client::ClientError;
use proto::v1::{ClassifyRequest, StreamClassifyRequest};
use tonic::transport::Channel;

pub struct BenchReport {
    pub texts: usize,
    pub seconds: f64,
    pub throughput: f64,
    pub stream_p50_ms: f64,
    pub stream_p99_ms: f64,
    pub idle_p50_ms: f64,
    pub idle_p99_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Sends every text once, spread over `streams` streams with at most `in_flight` outstanding each.
pub async fn run(
    channel: Channel,
    texts: &[String],
    streams: usize,
    in_flight: usize,
    idle_requests: usize,
    time_limit: Duration,
) -> Result<BenchReport, ClientError> {
    let started = Instant::now();
    let chunks: Vec<Vec<String>> = (0..streams)
        .map(|s| texts.iter().skip(s).step_by(streams).cloned().collect())
        .collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let mut client = PredictorClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<StreamClassifyRequest>(in_flight);
            let sent_at =
                std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
            let sender_times = sent_at.clone();
            let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(in_flight));
            let sender_sem = sem.clone();
            let producer = tokio::spawn(async move {
                for (i, text) in chunk.into_iter().enumerate() {
                    if started.elapsed() > time_limit {
                        break;
                    }
                    let Ok(permit) = sender_sem.clone().acquire_owned().await else {
                        break;
                    };
                    permit.forget();
                    sender_times
                        .lock()
                        .map(|mut m| m.insert(i.to_string(), Instant::now()))
                        .ok();
                    if tx
                        .send(StreamClassifyRequest {
                            id: i.to_string(),
                            text,
                            options: None,
                        })
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
            let mut latencies = Vec::new();
            let rpc = |s: tonic::Status| ClientError::Rpc {
                method: "ClassifyStream",
                code: s.code(),
                message: s.message().to_string(),
            };
            let mut stream = client
                .classify_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map_err(rpc)?
                .into_inner();
            while let Some(m) = stream.message().await.map_err(rpc)? {
                if let Some(t) = sent_at.lock().ok().and_then(|mut s| s.remove(&m.id)) {
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                sem.add_permits(1);
            }
            producer
                .await
                .map_err(|e| ClientError::Task(e.to_string()))?;
            Ok::<_, ClientError>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.map_err(|e| ClientError::Task(e.to_string()))??);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);

    let mut client = PredictorClient::new(channel);
    let mut idle = Vec::new();
    for text in texts.iter().take(idle_requests) {
        let t = Instant::now();
        client
            .classify(ClassifyRequest {
                texts: vec![text.clone()],
                options: None,
            })
            .await
            .map_err(|s| ClientError::Rpc {
                method: "Classify",
                code: s.code(),
                message: s.message().to_string(),
            })?;
        idle.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    idle.sort_by(f64::total_cmp);
    Ok(BenchReport {
        texts: latencies.len(),
        seconds,
        throughput: latencies.len() as f64 / seconds,
        stream_p50_ms: percentile(&latencies, 50.0),
        stream_p99_ms: percentile(&latencies, 99.0),
        idle_p50_ms: percentile(&idle, 50.0),
        idle_p99_ms: percentile(&idle, 99.0),
    })
}
