//! Shared library of the GoEmotions services: labels, data, tokenizer, the BERT model on tch,
//! metrics and threshold tuning, and checkpoints in object storage.
pub mod calibration;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod explain;
pub mod grpc;
pub mod inference;
pub mod labels;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod registry;
pub mod safetensors_io;
pub mod simd;
pub mod store;
pub mod tokenizer;

/// A word that is not one of an enum's spellings (e.g. `--pooling max`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?} (expected {expected})")]
pub struct ParseEnumError {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// Hex-encoded sha256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
