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

/// What a user asks for: a precision, or `auto`, the measured choice for the work and device.
/// Training: bf16 on Intel CPUs with AMX (bf16 tiles) and AMD CPUs with AVX512-BF16, where the
/// trainer ran 1.35× and 1.48× faster than in fp32 and the full recipe's test macro-F1 stayed
/// within 0.005 of fp32's over two seeds each (README "Precision"; see
/// [`crate::device::cpu_trains_faster_in_bf16`]); fp32 elsewhere — on an Intel CPU with
/// AVX512-BF16 but no AMX bf16 training measured 0.75× of fp32, on CUDA MiniLM-sized encoders
/// are host-bound and bf16's casts cost more launches than its matmuls save (3522 vs 2020
/// samples/s on an H100; docs/gpu/). Serving:
/// fp32 everywhere — only fp32 gives a text the same scores whatever it is batched with (bf16
/// moved scores by up to 6.8e-3 with batch-mates and changed about 1 text's labels in 1,000), so
/// bf16 serving is an explicit choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionChoice {
    /// The measured choice for the work and device (see the type's docs).
    #[default]
    Auto,
    /// fp32 everywhere.
    Fp32,
    /// bf16 compute with fp32 master weights (CPUs with AVX512-BF16/AMX, or CUDA 8.0+).
    Bf16,
}

impl PrecisionChoice {
    /// The precision to serve or score in on `device`: `auto` is fp32.
    pub fn resolve(self, device: Device) -> Result<Precision, PrecisionError> {
        self.resolve_with(device, Precision::Fp32)
    }

    /// The precision to train in on `device`: `auto` is bf16 on a CPU where bf16 trains
    /// faster (AMX, or AMD with AVX512-BF16), fp32 elsewhere.
    pub fn resolve_for_training(self, device: Device) -> Result<Precision, PrecisionError> {
        let auto = if device == Device::Cpu && crate::device::cpu_trains_faster_in_bf16() {
            Precision::Bf16
        } else {
            Precision::Fp32
        };
        self.resolve_with(device, auto)
    }

    /// An explicit bf16 on a CUDA device without bf16 is an error.
    fn resolve_with(self, device: Device, auto: Precision) -> Result<Precision, PrecisionError> {
        match (self, device) {
            (PrecisionChoice::Auto, _) => Ok(auto),
            (PrecisionChoice::Fp32, _) => Ok(Precision::Fp32),
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
    fn auto_serves_in_fp32_and_explicit_choices_hold() {
        assert_eq!(
            PrecisionChoice::Auto.resolve(Device::Cpu),
            Ok(Precision::Fp32)
        );
        assert_eq!(
            PrecisionChoice::Bf16.resolve(Device::Cpu),
            Ok(Precision::Bf16)
        );
        assert_eq!(
            PrecisionChoice::Fp32.resolve_for_training(Device::Cpu),
            Ok(Precision::Fp32)
        );
        assert_eq!("bf16".parse::<PrecisionChoice>(), Ok(PrecisionChoice::Bf16));
        assert!("fp16".parse::<PrecisionChoice>().is_err());
    }

    #[test]
    fn auto_trains_in_bf16_exactly_where_the_cpu_trains_faster_in_it() {
        let expected = if crate::device::cpu_trains_faster_in_bf16() {
            Precision::Bf16
        } else {
            Precision::Fp32
        };
        assert_eq!(
            PrecisionChoice::Auto.resolve_for_training(Device::Cpu),
            Ok(expected)
        );
    }
}
