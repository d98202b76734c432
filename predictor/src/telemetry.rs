//! Prometheus metrics and the HTTP endpoint that exposes them (`GET /metrics`).
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Finished RPCs by method and gRPC status code name ("OK", "INVALID_ARGUMENT", ...).
    pub requests: IntCounterVec,
    pub texts: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub queue_depth: IntGauge,
    pub batch_size: Histogram,
    pub batch_tokens: Histogram,
    pub inference_seconds: Histogram,
    /// Time an inference worker spent on one explanation (all its points and labels).
    pub explain_seconds: Histogram,
    /// 1 for the version being served.
    pub model_version: IntGaugeVec,
    pub reloads: IntCounterVec,
    pub open_streams: IntGauge,
    /// Texts dropped before inference because their caller had gone.
    pub abandoned_texts: IntCounter,
    /// Texts whose inference failed (after their batch was retried text by text).
    pub inference_failures: IntCounter,
    /// gRPC connections closed because no call was open on them for the idle timeout.
    pub idle_closed: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "predictor_requests_total",
                "Finished RPCs by method and status code",
            ),
            &["method", "code"],
        )
        .expect("metric");
        let texts = IntCounterVec::new(
            Opts::new("predictor_texts_total", "Texts classified by method"),
            &["method"],
        )
        .expect("metric");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "predictor_request_duration_seconds",
                "RPC latency (unary) or per-item latency (stream)",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["method"],
        )
        .expect("metric");
        let queue_depth =
            IntGauge::new("predictor_queue_depth", "Texts waiting for inference").expect("metric");
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("predictor_batch_size", "Texts per forward pass")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )
        .expect("metric");
        let batch_tokens = Histogram::with_opts(
            HistogramOpts::new("predictor_batch_tokens", "Padded tokens per forward pass")
                .buckets(prometheus::exponential_buckets(16.0, 2.0, 12).expect("buckets")),
        )
        .expect("metric");
        let inference_seconds = Histogram::with_opts(
            HistogramOpts::new("predictor_inference_duration_seconds", "Forward pass time")
                .buckets(prometheus::exponential_buckets(0.0005, 2.0, 14).expect("buckets")),
        )
        .expect("metric");
        let explain_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "predictor_explain_duration_seconds",
                "Time an inference worker spent on one explanation",
            )
            .buckets(prometheus::exponential_buckets(0.005, 2.0, 12).expect("buckets")),
        )
        .expect("metric");
        let model_version = IntGaugeVec::new(
            Opts::new("predictor_model_version", "1 for the served model version"),
            &["version"],
        )
        .expect("metric");
        let reloads = IntCounterVec::new(
            Opts::new("predictor_reloads_total", "Model loads by result"),
            &["result"],
        )
        .expect("metric");
        let open_streams =
            IntGauge::new("predictor_open_streams", "Open ClassifyStream calls").expect("metric");
        let abandoned_texts = IntCounter::new(
            "predictor_abandoned_texts_total",
            "Texts dropped before inference because their caller had gone",
        )
        .expect("metric");
        let inference_failures = IntCounter::new(
            "predictor_inference_failures_total",
            "Texts whose inference failed",
        )
        .expect("metric");
        let idle_closed = IntCounter::new(
            "predictor_idle_connections_closed_total",
            "gRPC connections closed after --idle-timeout-secs without a call",
        )
        .expect("metric");
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(idle_closed.clone()),
            Box::new(texts.clone()),
            Box::new(request_seconds.clone()),
            Box::new(queue_depth.clone()),
            Box::new(batch_size.clone()),
            Box::new(batch_tokens.clone()),
            Box::new(inference_seconds.clone()),
            Box::new(explain_seconds.clone()),
            Box::new(model_version.clone()),
            Box::new(reloads.clone()),
            Box::new(open_streams.clone()),
            Box::new(abandoned_texts.clone()),
            Box::new(inference_failures.clone()),
        ] {
            registry.register(m).expect("register metric");
        }
        Self {
            registry,
            requests,
            texts,
            request_seconds,
            queue_depth,
            batch_size,
            batch_tokens,
            inference_seconds,
            explain_seconds,
            model_version,
            reloads,
            open_streams,
            abandoned_texts,
            inference_failures,
            idle_closed,
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encode metrics");
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
            async move { m.render() }
        }),
    );
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics endpoint listening");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
