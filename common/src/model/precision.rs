//! Numeric precision of the forward pass. `Bf16` runs matrix products, attention and activations
//! in bfloat16 while master weights, LayerNorm, the residual stream, pooling and the loss stay in
//! fp32 (what CUDA autocast does with bf16). fp16 is not offered: without a gradient scaler its
//! small gradients underflow to zero and training silently degrades.
use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

use crate::ParseEnumError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bf16 requested but CUDA device {device} has no bf16 support (compute capability < 8.0); use fp32")]
pub struct PrecisionError {
    pub device: usize,
}

/// The precision a model runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// fp32 everywhere (TF32 tensor-core matmuls allowed on CUDA).
    #[default]
    Fp32,
    /// bfloat16 compute with fp32 master weights, normalisation and loss.
    Bf16,
}

impl Precision {
    /// The dtype matrix products run in.
    pub fn compute_kind(self) -> Kind {
        match self {
            Precision::Fp32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a user asks for: a precision, or `auto`, which is fp32 on every device, for training and
/// for serving. Training: MiniLM-sized encoders are host-bound on an H100 and bf16's casts cost
/// more launches than its matmuls save (training 3522 vs 2020 samples/s, fp32 vs bf16, same
/// batches; docs/gpu/). Serving: only fp32 gives a text the same scores whatever it is batched
/// with (bf16 moved scores by up to 6.8e-3 with batch-mates and changed about 1 text's labels in
/// 1,000), so bf16 — faster on CPUs with AVX512-BF16 — is an explicit choice. `auto` stays so
/// that a measured rule can change it without breaking callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionChoice {
    /// The measured fastest for the device: fp32 everywhere today (see the type's docs).
    #[default]
    Auto,
    /// fp32 everywhere.
    Fp32,
    /// bf16 compute with fp32 master weights (CPUs with AVX512-BF16/AMX, or CUDA 8.0+).
    Bf16,
}

impl PrecisionChoice {
    /// The precision to use on `device`; an explicit bf16 on a CUDA device without bf16 is an error.
    pub fn resolve(self, device: Device) -> Result<Precision, PrecisionError> {
        match (self, device) {
            (PrecisionChoice::Fp32 | PrecisionChoice::Auto, _) => Ok(Precision::Fp32),
            (PrecisionChoice::Bf16, Device::Cuda(i)) if !crate::device::cuda_bf16_supported(i) => {
                Err(PrecisionError { device: i })
            }
            (PrecisionChoice::Bf16, _) => Ok(Precision::Bf16),
        }
    }
}

impl std::str::FromStr for PrecisionChoice {
    type Err = ParseEnumError;
    fn from_str(s: &str) -> Result<Self, ParseEnumError> {
        match s {
            "auto" => Ok(Self::Auto),
            "fp32" => Ok(Self::Fp32),
            "bf16" => Ok(Self::Bf16),
            other => Err(ParseEnumError {
                what: "precision",
                value: other.into(),
                expected: "auto, fp32 or bf16",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_fp32_and_explicit_choices_hold() {
        assert_eq!(
            PrecisionChoice::Auto.resolve(Device::Cpu),
            Ok(Precision::Fp32)
        );
        assert_eq!(
            PrecisionChoice::Bf16.resolve(Device::Cpu),
            Ok(Precision::Bf16)
        );
        assert_eq!("bf16".parse::<PrecisionChoice>(), Ok(PrecisionChoice::Bf16));
        assert!("fp16".parse::<PrecisionChoice>().is_err());
    }
}
