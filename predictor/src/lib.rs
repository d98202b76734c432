//! The predictor: a stateless gRPC service that serves a checkpoint from object storage.
//! Layers, following text-embeddings-inference's router / core / backends split:
//! - `engine`: the loaded model and turning scores into labelled results;
//! - `classify`: the one protocol-neutral classify path (limits, queue room, batcher, labels);
//! - `explain`: the same for explanations (integrated gradients on the inference workers);
//! - `batcher`: queue room, dynamic batching on dedicated inference threads (backend);
//! - `reload`: loading checkpoints and following an alias with atomic swaps;
//! - front ends, siblings on `classify`: `service` (goemotions.v1 gRPC, every proto message),
//!   `oip` (the Open Inference Protocol, KServe v2, over gRPC, with the tensor mapping that
//!   `rest` shares for the same protocol over HTTP/JSON);
//! - `server`: assembly (auth, TLS, health, reflection, drain), `telemetry`: Prometheus metrics;
//! - `batch`: offline scoring of a corpus into output parts (resumable, sharded);
//! - `cli`, `client`, `bench`: the command line and the client-side tools.
pub mod batch;
pub mod batcher;
pub mod bench;
pub(crate) mod classify;
pub mod cli;
pub mod client;
pub(crate) mod engine;
pub(crate) mod explain;
pub mod idle;
pub(crate) mod oip;
pub(crate) mod reload;
pub(crate) mod rest;
pub mod server;
pub(crate) mod service;
pub(crate) mod telemetry;

pub use reload::StoreTimeouts;
pub use rest::HttpLimits;

use std::time::Duration;

/// Serving limits; every one is a flag of `predictor serve` (see `--help`) and is reported by
/// GetModelInfo.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Texts accepted in one `Classify` request.
    pub max_texts_per_request: usize,
    /// Bytes (UTF-8) accepted per text.
    pub max_text_bytes: usize,
    /// Texts of one `ClassifyStream` being processed at once; the server stops reading the
    /// stream (HTTP/2 back-pressure) until results go out.
    pub max_in_flight_per_stream: usize,
    /// Largest request message (bytes); larger ones get RESOURCE_EXHAUSTED.
    pub max_message_bytes: usize,
    /// How long a `Classify` call waits for room in a full queue before RESOURCE_EXHAUSTED.
    pub queue_wait: Duration,
    /// Labels one `Explain` request may ask for (each costs a backward pass).
    pub max_explain_labels: usize,
    /// Integration steps one `Explain` request may ask for (each costs about one text).
    pub max_explain_steps: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_texts_per_request: 64,
            max_text_bytes: 4096,
            max_in_flight_per_stream: 128,
            max_message_bytes: 4 * 1024 * 1024,
            queue_wait: classify::DEFAULT_QUEUE_WAIT,
            max_explain_labels: 8,
            max_explain_steps: 256,
        }
    }
}
