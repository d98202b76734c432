//! The `predictor` command line: every flag (with its environment variable) and how the serve
//! flags become `ServeOptions`. `main.rs` only parses and dispatches.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use common::grpc::{Access, AccessArgs, AccessError};
use common::model::PrecisionChoice;

use crate::batcher::BatcherConfig;
use crate::reload::StoreTimeouts;
use crate::server::{Http2Limits, ServeOptions};
use crate::HttpLimits;
use crate::Limits;

#[derive(Parser)]
#[command(
    name = "predictor",
    version,
    about = "Multi-label emotion classification over gRPC (goemotions.v1.Predictor)"
)]
pub struct Cli {
    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve a checkpoint (a fixed version, or an alias that is followed with hot reload).
    Serve(Box<ServeArgs>),
    /// Classify texts given as arguments (unary Classify), or lines from stdin (ClassifyStream).
    Classify(ClassifyArgs),
    /// Which words of a text drove its labels: integrated gradients from a running predictor
    /// (the Explain RPC), a table per label, or JSON.
    Explain(ExplainArgs),
    /// Print the served model's version, labels, thresholds and limits.
    Info(ClientArgs),
    /// Drive a running predictor with concurrent streams and print throughput and latency.
    Bench(BenchArgs),
    /// Score a corpus offline (JSONL, CSV or Parquet from a path or an object-storage prefix)
    /// into output parts plus a manifest; resumable, and sharded by JOB_COMPLETION_INDEX /
    /// BATCH_SHARD_COUNT as a Kubernetes Indexed Job.
    Batch(Box<BatchArgs>),
    /// Check a running predictor's gRPC health: exit 0 when SERVING, 1 otherwise (for
    /// container health checks; --addr defaults to 127.0.0.1:50051).
    Health(common::grpc::HealthArgs),
}

#[derive(Args)]
pub struct ServeArgs {
    /// Checkpoint URI: …/models/NAME/versions/V (fixed) or …/models/NAME/aliases/A (followed);
    /// file:///path, a path, or s3://bucket/prefix (AWS_* environment for credentials and endpoint).
    #[arg(long, env = "PREDICTOR_MODEL")]
    pub model: String,
    /// gRPC listen address. Beyond loopback a token is required (see --auth-token-file) unless
    /// --allow-unauthenticated.
    #[arg(long, env = "PREDICTOR_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Open Inference Protocol (KServe v2) HTTP/JSON API listen address (`/v2/...`), off when
    /// unset. Same token rule as --listen; plain HTTP (terminate TLS in front).
    #[arg(long, env = "PREDICTOR_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Prometheus /metrics listen address (plain HTTP).
    #[arg(
        long,
        env = "PREDICTOR_METRICS_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    pub metrics_listen: SocketAddr,
    /// How often to check the alias for a new version (seconds).
    #[arg(long, env = "PREDICTOR_POLL_INTERVAL_SECS", default_value_t = 10.0)]
    pub poll_interval_secs: f64,
    /// Longest time (s) a poll may take to read the alias and the manifest; beyond it the poll
    /// is abandoned and logged, and the current model keeps serving.
    #[arg(long, env = "PREDICTOR_STORE_TIMEOUT_SECS", default_value_t = 30.0)]
    pub store_timeout_secs: f64,
    /// Longest time (s) loading a checkpoint may take (download, verification, build).
    #[arg(long, env = "PREDICTOR_LOAD_TIMEOUT_SECS", default_value_t = 300.0)]
    pub load_timeout_secs: f64,
    /// Texts per forward pass at most.
    #[arg(long, env = "PREDICTOR_MAX_BATCH_SIZE", default_value_t = 32)]
    pub max_batch_size: usize,
    /// Padded tokens per forward pass at most (batch size × longest text).
    #[arg(long, env = "PREDICTOR_MAX_BATCH_TOKENS", default_value_t = 8192)]
    pub max_batch_tokens: usize,
    /// Longest time (ms) the first text of a batch waits for more texts.
    #[arg(long, env = "PREDICTOR_MAX_WAIT_MS", default_value_t = 1.0)]
    pub max_wait_ms: f64,
    /// Texts queued or being scored at most, across all callers. Streams wait for room
    /// (back-pressure); Classify calls wait up to --queue-wait-ms, then RESOURCE_EXHAUSTED.
    #[arg(long, env = "PREDICTOR_QUEUE_CAPACITY", default_value_t = 1024)]
    pub queue_capacity: usize,
    /// How long (ms) a Classify call waits for room in a full queue.
    #[arg(long, env = "PREDICTOR_QUEUE_WAIT_MS", default_value_t = 200.0)]
    pub queue_wait_ms: f64,
    /// Texts in one Classify request at most (more: INVALID_ARGUMENT).
    #[arg(long, env = "PREDICTOR_MAX_TEXTS_PER_REQUEST", default_value_t = Limits::default().max_texts_per_request)]
    pub max_texts_per_request: usize,
    /// Bytes per text at most (more: INVALID_ARGUMENT). Texts over the model's max length in tokens are truncated.
    #[arg(long, env = "PREDICTOR_MAX_TEXT_BYTES", default_value_t = Limits::default().max_text_bytes)]
    pub max_text_bytes: usize,
    /// Texts of one ClassifyStream in flight at most; the server reads no further until results go out.
    #[arg(long, env = "PREDICTOR_MAX_IN_FLIGHT_PER_STREAM", default_value_t = Limits::default().max_in_flight_per_stream)]
    pub max_in_flight_per_stream: usize,
    /// Largest request message in bytes (a Classify request, or one stream item); larger:
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "PREDICTOR_MAX_MESSAGE_BYTES", default_value_t = Limits::default().max_message_bytes)]
    pub max_message_bytes: usize,
    /// Labels one Explain request may ask for (each costs a backward pass; more: INVALID_ARGUMENT).
    #[arg(long, env = "PREDICTOR_MAX_EXPLAIN_LABELS", default_value_t = Limits::default().max_explain_labels as u32,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_explain_labels: u32,
    /// Integration steps one Explain request may ask for (each costs about one text of
    /// inference; more: INVALID_ARGUMENT).
    #[arg(long, env = "PREDICTOR_MAX_EXPLAIN_STEPS", default_value_t = Limits::default().max_explain_steps as u32,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_explain_steps: u32,
    /// auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, env = "PREDICTOR_DEVICE", default_value = "auto")]
    pub device: String,
    /// Inference precision: auto (fp32 on every device), fp32, or bf16. Only fp32 gives a text the
    /// same scores whatever else is in flight; bf16 is faster on CPUs with AVX512-BF16 or AMX but
    /// moves scores by up to ~7e-3 with batch-mates (README "Precision").
    #[arg(long, env = "PREDICTOR_PRECISION", value_enum, default_value_t = PrecisionChoice::Auto)]
    pub precision: PrecisionChoice,
    /// Async runtime threads for gRPC I/O and tokenization (inference has its own threads).
    #[arg(long, env = "PREDICTOR_RUNTIME_THREADS", default_value_t = 1)]
    pub runtime_threads: usize,
    /// CPU threads for inference (default: the CPUs the process may use, from its cgroup quota
    /// and affinity; logged at start).
    #[arg(long, env = "PREDICTOR_THREADS")]
    pub threads: Option<i32>,
    /// Batches scored side by side, each by its own worker with --threads / workers libtorch
    /// threads (0: auto — on the CPU one single-threaded worker per inference thread, up to 2;
    /// on CUDA one).
    #[arg(long, env = "PREDICTOR_INFERENCE_WORKERS", default_value_t = 0)]
    pub inference_workers: usize,
    #[command(flatten)]
    pub access: AccessArgs,
    /// Seconds between HTTP/2 keepalive pings (0: none); a connection whose ping goes unanswered
    /// for --keepalive-timeout-secs is closed. Pings are not calls: they do not keep an idle
    /// connection open past --idle-timeout-secs.
    #[arg(long, env = "PREDICTOR_KEEPALIVE_SECS", default_value_t = 0.0)]
    pub keepalive_secs: f64,
    /// Seconds to wait for a keepalive ping's acknowledgement before closing the connection.
    #[arg(long, env = "PREDICTOR_KEEPALIVE_TIMEOUT_SECS", default_value_t = 20.0)]
    pub keepalive_timeout_secs: f64,
    /// Close gRPC connections on which no call has been open for this many seconds (0: never);
    /// HTTP/2 pings do not count as calls.
    #[arg(long, env = "PREDICTOR_IDLE_TIMEOUT_SECS", default_value_t = 300.0)]
    pub idle_timeout_secs: f64,
    /// After SIGTERM, longest time (s) to drain in-flight requests before exiting anyway.
    #[arg(long, env = "PREDICTOR_DRAIN_TIMEOUT_SECS", default_value_t = 20.0)]
    pub drain_timeout_secs: f64,
    /// Concurrent calls per HTTP/2 connection on the gRPC port; more wait in the client.
    #[arg(long, env = "PREDICTOR_HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = Http2Limits::default().max_concurrent_streams)]
    pub http2_max_concurrent_streams: u32,
    /// Bytes a client may send on one call before the server reads them (its HTTP/2 flow-control
    /// window): what waits while a stream is held back. The connection window is derived so that
    /// held-back streams of small messages never get the connection closed (logged at start).
    #[arg(long, env = "PREDICTOR_HTTP2_STREAM_WINDOW_BYTES", default_value_t = Http2Limits::default().stream_window,
          value_parser = clap::value_parser!(u32).range(65_535..=(1 << 31) - 1))]
    pub http2_stream_window_bytes: u32,
    /// Seconds after which a gRPC connection is asked to go away (HTTP/2 GOAWAY; calls in flight
    /// finish), so long-lived clients reconnect and spread over replicas again — what a client
    /// pinned to one replica by an L4 balancer needs (0: never).
    #[arg(long, env = "PREDICTOR_MAX_CONNECTION_AGE_SECS", default_value_t = 0.0)]
    pub max_connection_age_secs: f64,
    /// After the connection age, seconds calls still in flight get before the connection is
    /// closed (they end UNAVAILABLE: resend them).
    #[arg(
        long,
        env = "PREDICTOR_MAX_CONNECTION_AGE_GRACE_SECS",
        default_value_t = 60.0
    )]
    pub max_connection_age_grace_secs: f64,
    /// HTTP port: seconds for a request's headers to arrive, also the longest a kept-alive
    /// connection may sit idle between requests.
    #[arg(long, env = "PREDICTOR_HTTP_HEADER_TIMEOUT_SECS", default_value_t = HttpLimits::default().header_timeout.as_secs_f64())]
    pub http_header_timeout_secs: f64,
    /// HTTP port: seconds for a request body to arrive once its headers have (408 beyond).
    #[arg(long, env = "PREDICTOR_HTTP_BODY_TIMEOUT_SECS", default_value_t = HttpLimits::default().body_timeout.as_secs_f64())]
    pub http_body_timeout_secs: f64,
    /// HTTP port: connections open at once; more get a 503 and are closed.
    #[arg(long, env = "PREDICTOR_HTTP_MAX_CONNECTIONS", default_value_t = HttpLimits::default().max_connections)]
    pub http_max_connections: usize,
}

fn seconds(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 1e9))
}

fn optional_seconds(s: f64) -> Option<Duration> {
    (s > 0.0).then(|| seconds(s))
}

/// Workers and libtorch threads per worker: `requested` workers (0: auto) sharing `threads`.
/// On CUDA the device does the work, so one worker and the process setting.
fn inference_workers(
    requested: usize,
    threads: usize,
    device: tch::Device,
) -> (usize, Option<i32>) {
    if device.is_cuda() {
        return (requested.max(1), None);
    }
    let workers = match requested {
        0 => threads.clamp(1, AUTO_CPU_WORKERS),
        n => n.min(threads.max(1)),
    };
    let per_worker = (threads / workers).max(1);
    (workers, Some(i32::try_from(per_worker).unwrap_or(1)))
}

/// Most CPU workers `--inference-workers 0` starts: more split small batches further and slow
/// single texts (each worker scores on fewer threads).
const AUTO_CPU_WORKERS: usize = 2;

impl ServeArgs {
    /// The server's options; `threads` is the libtorch thread count `init_threads` settled on.
    pub fn options(&self, device: tch::Device, threads: i32) -> Result<ServeOptions, AccessError> {
        let threads = usize::try_from(threads.max(1)).unwrap_or(1);
        let (workers, threads_per_worker) =
            inference_workers(self.inference_workers, threads, device);
        Ok(ServeOptions {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            device,
            precision: self.precision,
            poll_interval: seconds(self.poll_interval_secs.max(0.05)),
            store_timeouts: StoreTimeouts {
                read: seconds(self.store_timeout_secs.max(0.1)),
                load: seconds(self.load_timeout_secs.max(1.0)),
            },
            batcher: BatcherConfig {
                max_batch_size: self.max_batch_size.max(1),
                max_batch_tokens: self.max_batch_tokens.max(1),
                max_wait: seconds(self.max_wait_ms / 1000.0),
                queue_capacity: self.queue_capacity.max(1),
                workers,
                threads_per_worker,
            },
            limits: Limits {
                max_texts_per_request: self.max_texts_per_request,
                max_text_bytes: self.max_text_bytes,
                max_in_flight_per_stream: self.max_in_flight_per_stream.max(1),
                max_message_bytes: self.max_message_bytes.max(1024),
                queue_wait: seconds(self.queue_wait_ms / 1000.0),
                max_explain_labels: self.max_explain_labels as usize,
                max_explain_steps: self.max_explain_steps as usize,
            },
            access: Access::from_args(&self.access, self.listen)?,
            http_listen: match self.http_listen {
                Some(addr) => {
                    // The same exposure rule for the HTTP address (refused beyond loopback
                    // without a token), and no plain HTTP beside TLS.
                    let http = Access::from_args(&self.access, addr)?;
                    if http.tls().is_some() {
                        return Err(AccessError::PlainHttpWithTls);
                    }
                    Some(addr)
                }
                None => None,
            },
            keepalive: optional_seconds(self.keepalive_secs),
            keepalive_timeout: seconds(self.keepalive_timeout_secs),
            idle_timeout: optional_seconds(self.idle_timeout_secs),
            drain_timeout: seconds(self.drain_timeout_secs),
            max_connection_age: optional_seconds(self.max_connection_age_secs)
                .map(|age| (age, seconds(self.max_connection_age_grace_secs))),
            http: HttpLimits {
                max_body_bytes: self.max_message_bytes.max(1024),
                header_timeout: seconds(self.http_header_timeout_secs.max(0.1)),
                body_timeout: seconds(self.http_body_timeout_secs.max(0.1)),
                max_connections: self.http_max_connections.max(1),
            },
            http2: Http2Limits {
                max_concurrent_streams: self.http2_max_concurrent_streams.max(1),
                stream_window: self.http2_stream_window_bytes,
            },
        })
    }
}

#[derive(Args, Clone)]
pub struct BatchArgs {
    /// Checkpoint URI, as for `serve`: an alias (…/models/NAME/aliases/A) is resolved once, when
    /// the job is planned, and every shard and rerun scores with that version.
    #[arg(long, env = "BATCH_MODEL")]
    pub model: String,
    /// Input: a file or a folder/prefix of files (local path, file://, or s3://bucket/prefix).
    /// Files of a prefix are read in name order; names starting with `_` or `.` are skipped.
    #[arg(long, env = "BATCH_INPUT")]
    pub input: String,
    /// Input format: auto (from the file extension: .jsonl/.ndjson/.json, .csv, .parquet),
    /// jsonl, csv or parquet.
    #[arg(long, env = "BATCH_INPUT_FORMAT", value_enum, default_value_t = crate::batch::InputFormatChoice::Auto)]
    pub input_format: crate::batch::InputFormatChoice,
    /// The column (CSV header, JSON field, Parquet column) holding the text.
    #[arg(long, env = "BATCH_TEXT_COLUMN", default_value = "text")]
    pub text_column: String,
    /// The column holding each row's id, copied to the output (strings or integers); without
    /// it a row's id is its number in the input (0-based, across files in name order).
    #[arg(long, env = "BATCH_ID_COLUMN")]
    pub id_column: Option<String>,
    /// Output folder/prefix (local path, file://, or s3://bucket/prefix): part-NNNNNN files,
    /// errors/ for bad rows, _job.json (the plan) and, once every part exists, _manifest.json.
    #[arg(long, env = "BATCH_OUTPUT")]
    pub output: String,
    /// Output format: jsonl or parquet.
    #[arg(long, env = "BATCH_OUTPUT_FORMAT", value_enum, default_value_t = crate::batch::OutputFormat::Jsonl)]
    pub output_format: crate::batch::OutputFormat,
    /// Input rows per output part: the unit that is written whole or not at all, skipped on a
    /// rerun, and handed to shards; also the window sorted by length before batching.
    #[arg(long, env = "BATCH_ROWS_PER_PART", default_value_t = 20_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub rows_per_part: u64,
    /// This process's shard, 0-based (Kubernetes sets JOB_COMPLETION_INDEX in Indexed Jobs).
    #[arg(long, env = "JOB_COMPLETION_INDEX", default_value_t = 0)]
    pub shard_index: u64,
    /// Shards in all (the Job's `completions`): part p is scored by shard p mod count.
    #[arg(long, env = "BATCH_SHARD_COUNT", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub shard_count: u64,
    /// Top labels written per row.
    #[arg(long, env = "BATCH_TOP_K", default_value_t = 3)]
    pub top_k: u32,
    /// One threshold for all labels instead of the model's per-label thresholds.
    #[arg(long, env = "BATCH_THRESHOLD")]
    pub threshold: Option<f32>,
    /// Groupings to write beside the labels, by name, comma-separated (GoEmotions: ekman,
    /// sentiment).
    #[arg(long, env = "BATCH_GROUPINGS", value_delimiter = ',')]
    pub groupings: Vec<String>,
    /// Bytes per text at most; longer texts are bad rows (texts over the model's max length in
    /// tokens are truncated, as when serving).
    #[arg(long, env = "BATCH_MAX_TEXT_BYTES", default_value_t = Limits::default().max_text_bytes)]
    pub max_text_bytes: usize,
    /// Largest share of bad rows (invalid UTF-8, missing or empty text, over the byte limit,
    /// unparsable line) the job accepts; above it the job is refused before any scoring.
    #[arg(long, env = "BATCH_MAX_BAD_SHARE", default_value_t = 0.01)]
    pub max_bad_share: f64,
    /// Texts per forward pass at most.
    #[arg(long, env = "BATCH_BATCH_SIZE", default_value_t = 64)]
    pub batch_size: usize,
    /// Padded tokens per forward pass at most (batch size × longest text).
    #[arg(long, env = "BATCH_MAX_BATCH_TOKENS", default_value_t = 8192)]
    pub max_batch_tokens: usize,
    /// auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, env = "BATCH_DEVICE", default_value = "auto")]
    pub device: String,
    /// Inference precision: auto (fp32), fp32 or bf16 (see `serve --help`).
    #[arg(long, env = "BATCH_PRECISION", value_enum, default_value_t = PrecisionChoice::Auto)]
    pub precision: PrecisionChoice,
    /// CPU threads for inference (default: the CPUs the process may use).
    #[arg(long, env = "BATCH_THREADS")]
    pub threads: Option<i32>,
    /// Batches scored side by side (0: auto, as for `serve`).
    #[arg(long, env = "BATCH_INFERENCE_WORKERS", default_value_t = 0)]
    pub inference_workers: usize,
    /// Where inputs from object storage are downloaded to before reading (default: the
    /// system's temporary folder); removed at the end.
    #[arg(long, env = "BATCH_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Seconds between progress log lines when stderr is not a terminal.
    #[arg(long, env = "BATCH_LOG_INTERVAL_SECS", default_value_t = 10.0)]
    pub log_interval_secs: f64,
}

impl BatchArgs {
    /// Inference workers and libtorch threads per worker for `threads` threads on `device`.
    pub fn workers(&self, threads: i32, device: tch::Device) -> (usize, Option<i32>) {
        let threads = usize::try_from(threads.max(1)).unwrap_or(1);
        inference_workers(self.inference_workers, threads, device)
    }

    pub fn log_interval(&self) -> Duration {
        seconds(self.log_interval_secs.max(0.1))
    }
}

#[derive(Args, Clone)]
pub struct ClientArgs {
    /// Predictor address (http://… or https://…).
    #[arg(long, env = "PREDICTOR_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Bearer token, if the predictor requires one (prefer the environment variable).
    #[arg(long, env = "PREDICTOR_AUTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificate to verify an https predictor.
    #[arg(long, env = "PREDICTOR_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// One threshold for all labels instead of the model's per-label thresholds.
    #[arg(long)]
    pub threshold: Option<f32>,
    /// How many top labels to show besides those that pass.
    #[arg(long, default_value_t = 3)]
    pub top_k: u32,
    /// Print every label's score.
    #[arg(long)]
    pub all_scores: bool,
    /// Groupings of the labels to show beside them, by name, comma-separated (GoEmotions:
    /// ekman, sentiment; GetModelInfo lists a model's).
    #[arg(long, value_delimiter = ',')]
    pub groups: Vec<String>,
    /// Texts to classify; none: read one text per line from stdin and stream them.
    pub texts: Vec<String>,
}

#[derive(Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// A label to explain, by name (repeat for more); none: the predicted labels.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Integration steps (0: the server's default, 50); more make the attributions add up more
    /// closely to the logit's change and cost about one text of inference each.
    #[arg(long, default_value_t = 0)]
    pub steps: u32,
    /// One threshold for all labels instead of the model's per-label thresholds (which labels
    /// count as predicted).
    #[arg(long)]
    pub threshold: Option<f32>,
    /// Print the response as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The text to explain.
    pub text: String,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Predictor address (loopback).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// GoEmotions TSV (or plain text, one per line) whose texts are sent.
    #[arg(long, default_value = ".cache/data/goemotions/test.tsv")]
    pub texts: PathBuf,
    /// Concurrent ClassifyStream calls.
    #[arg(long, default_value_t = 8)]
    pub streams: usize,
    /// Outstanding texts per stream.
    #[arg(long, default_value_t = 32)]
    pub in_flight: usize,
    /// Stop sending after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    pub max_seconds: f64,
    /// Sequential single-text unary calls for idle latency.
    #[arg(long, default_value_t = 300)]
    pub idle_requests: usize,
    /// Predictor process id, to report its peak RSS (VmHWM).
    #[arg(long)]
    pub pid: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn inference_workers_split_the_threads() {
        // Auto: one single-threaded worker per thread, at most two; CUDA: one worker.
        assert_eq!(inference_workers(0, 2, Device::Cpu), (2, Some(1)));
        assert_eq!(inference_workers(0, 1, Device::Cpu), (1, Some(1)));
        assert_eq!(inference_workers(0, 16, Device::Cpu), (2, Some(8)));
        assert_eq!(inference_workers(0, 16, Device::Cuda(0)), (1, None));
        // Asked for: never more workers than threads.
        assert_eq!(inference_workers(4, 2, Device::Cpu), (2, Some(1)));
        assert_eq!(inference_workers(1, 2, Device::Cpu), (1, Some(2)));
    }
}
