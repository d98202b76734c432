//! `predictor serve`: the gRPC server around `PredictorService` — health, reflection (v1 and
//! v1alpha), bearer-token auth and TLS, HTTP/2 keepalive and an idle-connection timeout, the
//! Prometheus endpoint, hot reload, a watchdog on the inference threads, and the SIGTERM drain.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::grpc::{self, Access};
use common::registry::ModelRef;
use proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use proto::v1::predictor_server::PredictorServer;
use tch::Device;
use tokio_stream::StreamExt;

use crate::batcher::{Batcher, BatcherConfig};
use crate::classify::Classifier;
use crate::idle::IdleTimeout;
use crate::oip::InferenceService;
use crate::reload::{Health, ModelSlot, Reloader, StoreTimeouts, SERVICE_NAME};
use crate::rest;
use crate::service::PredictorService;
use crate::telemetry::{self, Metrics};
use crate::Limits;

/// The Open Inference Protocol's gRPC service, served beside goemotions.v1.
const OIP_SERVICE_NAME: &str = "inference.GRPCInferenceService";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Precision(#[from] common::model::PrecisionError),
    #[error("an inference thread stopped; exiting so the orchestrator restarts the predictor")]
    InferenceStopped,
}

/// Everything `serve` needs besides the model reference.
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// The Open Inference Protocol's HTTP/JSON API, when set.
    pub http_listen: Option<SocketAddr>,
    pub metrics_listen: SocketAddr,
    pub device: Device,
    pub precision: common::model::PrecisionChoice,
    pub poll_interval: Duration,
    pub store_timeouts: StoreTimeouts,
    pub batcher: BatcherConfig,
    pub limits: Limits,
    pub access: Access,
    /// HTTP/2 PING interval (`None`: no keepalive pings).
    pub keepalive: Option<Duration>,
    pub keepalive_timeout: Duration,
    /// Connections without any traffic for this long are closed (`None`: never).
    pub idle_timeout: Option<Duration>,
    pub drain_timeout: Duration,
    /// Connections get a GOAWAY after this age, and are closed after the grace that follows.
    pub max_connection_age: Option<(Duration, Duration)>,
    pub http2: Http2Limits,
    /// Limits of the HTTP/JSON port (--http-listen).
    pub http: rest::HttpLimits,
}

/// HTTP/2 receive limits of the gRPC port.
///
/// The back-pressure of a stream is to stop reading it: its texts then wait in HTTP/2's receive
/// buffer, up to the stream's flow-control window. h2 also charges every received DATA frame
/// under 256 bytes (256 − its size) against a per-connection budget, half the connection window,
/// refunded only when the frame is read, and closes the connection (GOAWAY ENHANCE_YOUR_CALM,
/// every call on it lost) when the budget runs out. A client writing one small message per
/// frame — Python grpcio does — fills a stalled stream's 1 MiB default window with thousands of
/// such frames. So the stream window and the number of streams bound what can wait unread, and
/// the connection window is sized so that the budget covers all of it even in 5-byte frames
/// (the smallest gRPC message). Frames of 1–4 bytes, which no gRPC client writes, can still
/// exhaust it: that flood is what the budget exists to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Limits {
    /// Concurrent streams (calls) per connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// Bytes a client may send on one stream before the server reads them.
    pub stream_window: u32,
}

/// The smallest DATA frame the connection window is sized for: a gRPC message's 5-byte prefix.
const SMALLEST_FRAME: u64 = 5;
/// h2's charge threshold for a small DATA frame.
const H2_SMALL_FRAME: u64 = 256;
/// The largest window HTTP/2 allows.
const MAX_WINDOW: u64 = (1 << 31) - 1;

impl Default for Http2Limits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 100,
            stream_window: 64 * 1024,
        }
    }
}

impl Http2Limits {
    /// The connection window whose small-frame budget (half of it) covers every stream's full
    /// window in 5-byte frames; at most HTTP/2's maximum.
    pub fn connection_window(&self) -> u32 {
        let unread = u64::from(self.max_concurrent_streams) * u64::from(self.stream_window);
        let frames = unread.div_ceil(SMALLEST_FRAME);
        let budget = frames * (H2_SMALL_FRAME - SMALLEST_FRAME);
        u32::try_from((2 * budget).clamp(u64::from(self.stream_window), MAX_WINDOW))
            .unwrap_or(u32::MAX >> 1)
    }

    /// The smallest frame size for which the budget covers every unread frame (5 with the
    /// defaults; larger when the limits ask for more than HTTP/2's largest window allows).
    pub fn smallest_covered_frame(&self) -> u64 {
        let unread = u64::from(self.max_concurrent_streams) * u64::from(self.stream_window);
        let budget = u64::from(self.connection_window()) / 2;
        (1..H2_SMALL_FRAME)
            .find(|&size| unread.div_ceil(size) * (H2_SMALL_FRAME - size) <= budget)
            .unwrap_or(H2_SMALL_FRAME)
    }
}

/// Serves `model` until SIGTERM/Ctrl-C, then drains: health turns NOT_SERVING, streams stop
/// reading, in-flight texts are answered, and the process exits within `drain_timeout`.
/// Returns an error (the binary exits non-zero) if the inference thread ever stops.
pub async fn serve(model: ModelRef, opts: ServeOptions) -> Result<(), ServerError> {
    let precision = opts.precision.resolve(opts.device)?;
    if precision == common::model::Precision::Bf16 {
        if opts.device == Device::Cpu && !common::device::cpu_bf16_supported() {
            tracing::warn!("bf16 on a CPU without AVX512-BF16 is emulated and slower than fp32");
        }
        tracing::warn!("bf16: a text's scores depend on what it is batched with (up to ~7e-3); serve fp32 for answers independent of other callers");
    }
    // Bind first: a port in use fails here, before anything says it is listening.
    let listener = grpc::bind(opts.listen).await?;
    let metrics_listener = grpc::bind(opts.metrics_listen).await?;
    let http_listener = match opts.http_listen {
        Some(addr) => Some(grpc::bind(addr).await?),
        None => None,
    };
    let metrics = Metrics::new();
    let batcher = Batcher::start(opts.batcher.clone(), metrics.clone());
    let slot = Arc::new(ModelSlot::default());
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health::new(reporter).await;
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);

    let reloader = Reloader::new(
        model,
        opts.device,
        precision,
        slot.clone(),
        metrics.clone(),
        health.clone(),
        opts.poll_interval,
        opts.store_timeouts,
        drain_rx.clone(),
    );
    tokio::spawn(reloader.run());

    let mut metrics_drain = drain_rx.clone();
    let metrics_for_http = metrics.clone();
    tokio::spawn(async move {
        let stop = async move {
            let _ = metrics_drain.wait_for(|d| *d).await;
        };
        if let Err(e) = telemetry::serve_metrics(metrics_listener, metrics_for_http, stop).await {
            tracing::error!(error = %e, "metrics endpoint failed");
        }
    });

    let idle_closed_metric = metrics.idle_closed.clone();
    let core = Classifier {
        slot,
        batcher: batcher.clone(),
        limits: opts.limits.clone(),
        metrics,
        draining: drain_rx.clone(),
    };
    let service = PredictorService { core: core.clone() };
    let oip = InferenceService {
        core,
        token: opts.access.token(),
    };
    let rest_in_flight = rest::InFlight::default();
    if let Some(listener) = http_listener {
        let app = rest::router(
            oip.clone(),
            opts.access.token(),
            opts.http,
            drain_rx.clone(),
            rest_in_flight.clone(),
        );
        let limits = opts.http;
        tokio::spawn(async move {
            if let Err(e) = rest::serve(listener, app, limits).await {
                tracing::error!(error = %e, "HTTP API stopped");
            }
        });
    }
    let inference = GrpcInferenceServiceServer::new(oip)
        .max_decoding_message_size(opts.limits.max_message_bytes);
    let predictor =
        PredictorServer::new(service).max_decoding_message_size(opts.limits.max_message_bytes);
    let (reflection_v1, reflection_v1alpha) = grpc::reflection(
        &[
            proto::v1::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ],
        &[SERVICE_NAME, OIP_SERVICE_NAME, "grpc.health.v1.Health"],
    )?;

    let drain_timeout = opts.drain_timeout;
    let drain_health = health.clone();
    let shutdown = async move {
        grpc::termination_signal().await;
        tracing::info!("shutdown requested: NOT_SERVING, draining in-flight requests");
        drain_health.stop().await;
        let _ = drain_tx.send(true);
        tokio::spawn(async move {
            tokio::time::sleep(drain_timeout).await;
            tracing::warn!("drain timeout reached; exiting with requests still open");
            std::process::exit(0);
        });
    };

    let http2 = opts.http2;
    let connection_window = http2.connection_window();
    let covered = http2.smallest_covered_frame();
    if covered > SMALLEST_FRAME {
        tracing::warn!(
            max_concurrent_streams = http2.max_concurrent_streams,
            stream_window = http2.stream_window,
            smallest_covered_frame = covered,
            "these HTTP/2 limits let clients that write messages in frames under the covered size have their connection closed while streams wait; lower --http2-stream-window-bytes or --http2-max-concurrent-streams"
        );
    }
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(opts.keepalive)
        .http2_keepalive_timeout(Some(opts.keepalive_timeout))
        .max_concurrent_streams(http2.max_concurrent_streams)
        .initial_stream_window_size(http2.stream_window)
        .initial_connection_window_size(connection_window);
    // The GOAWAY at the age comes from tonic; the cut at age + grace from the connection's I/O
    // (tonic given a grace would send no GOAWAY at all).
    if let Some((age, _)) = opts.max_connection_age {
        builder = builder.max_connection_age(age);
    }
    let close_after = opts.max_connection_age.map(|(age, grace)| age + grace);
    if let Some(tls) = opts.access.tls() {
        builder = builder.tls_config(tls)?;
    }
    let idle = opts.idle_timeout;
    let idle_closed = idle_closed_metric;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(move |conn| {
        conn.map(|stream| {
            let _ = stream.set_nodelay(true);
            let closed = idle_closed.clone();
            IdleTimeout::new(stream, idle, move || closed.inc()).close_after(close_after)
        })
    });
    tracing::info!(addr = %opts.listen, tls = opts.access.tls().is_some(), auth = opts.access.authenticated(), precision = %precision,
        max_concurrent_streams = http2.max_concurrent_streams, stream_window = http2.stream_window, connection_window, "gRPC listening");
    let server = builder
        .layer(crate::idle::TrackCalls)
        .layer(tower::util::MapResponseLayer::new(
            resource_exhausted_for_oversized,
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(tonic::service::interceptor::InterceptedService::new(
            predictor,
            opts.access.interceptor(),
        ))
        // Checks the token itself: its server liveness and readiness calls stay open.
        .add_service(inference)
        .serve_with_incoming_shutdown(incoming, shutdown);
    tokio::select! {
        result = server => result?,
        () = batcher.stopped() => {
            health.stop().await;
            tracing::error!("the inference thread stopped; health is NOT_SERVING, exiting");
            return Err(ServerError::InferenceStopped);
        }
    }
    // gRPC calls are answered; HTTP requests still being answered get the rest of the drain time
    // (the port keeps answering 503 meanwhile).
    let _ = tokio::time::timeout(drain_timeout, rest_in_flight.idle()).await;
    tracing::info!("drained; bye");
    Ok(())
}

/// tonic answers a request over the message size limit with OUT_OF_RANGE; gRPC's convention for
/// a size limit is RESOURCE_EXHAUSTED (the answer is trailers-only, so headers carry it).
fn resource_exhausted_for_oversized<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let oversized = headers.get("grpc-status").map(|v| v.as_bytes()) == Some(b"11")
        && headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| m.contains("too large") || m.contains("too%20large"));
    if oversized {
        headers.insert(
            "grpc-status",
            http::HeaderValue::from(tonic::Code::ResourceExhausted as i32),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_window_covers_every_stalled_stream_in_smallest_frames() {
        let limits = Http2Limits::default();
        let window = u64::from(limits.connection_window());
        // 100 streams × 64 KiB unread, in 5-byte frames each charged 251 bytes, within half.
        let unread = 100 * 65_536u64;
        assert!(unread.div_ceil(5) * 251 <= window / 2);
        assert!(window <= MAX_WINDOW);
        assert_eq!(limits.smallest_covered_frame(), 5);
        // Limits beyond what HTTP/2's largest window can cover say so.
        let huge = Http2Limits {
            max_concurrent_streams: 10_000,
            stream_window: 1 << 20,
        };
        assert_eq!(u64::from(huge.connection_window()), MAX_WINDOW);
        assert!(huge.smallest_covered_frame() > 5);
    }
}
