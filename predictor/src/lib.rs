//! The predictor: a stateless gRPC service that serves a GoEmotions checkpoint from object
//! storage. Layers, following text-embeddings-inference's router / core / backends split:
//! - `engine`: the loaded model and turning scores into labelled results (core);
//! - `batcher`: dynamic batching on a dedicated inference thread (backend);
//! - `reload`: loading checkpoints and following an alias with atomic swaps;
//! - `service`: the thin gRPC layer (router), `telemetry`: Prometheus metrics.
pub mod batcher;
pub mod bench;
pub mod engine;
pub mod reload;
pub mod service;
pub mod telemetry;

/// Serving limits; every one is a flag of `predictor serve` (see `--help`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Texts accepted in one `Classify` request.
    pub max_texts_per_request: usize,
    /// Bytes (UTF-8) accepted per text.
    pub max_text_bytes: usize,
    /// Texts of one `ClassifyStream` being processed at once; the server stops reading the
    /// stream (HTTP/2 back-pressure) until results go out.
    pub max_in_flight_per_stream: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_texts_per_request: 64,
            max_text_bytes: 4096,
            max_in_flight_per_stream: 128,
        }
    }
}
