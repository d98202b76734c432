//! Reads and writes the safetensors format from and to memory, so checkpoints travel through
//! object storage without temporary files.
use std::collections::BTreeMap;

use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use tch::{Kind, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("invalid safetensors data: {0}")]
    Format(String),
    #[error("tensor {name}: unsupported dtype {dtype}")]
    Dtype { name: String, dtype: String },
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn dtype_name(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Float => "F32",
        Kind::Half => "F16",
        Kind::BFloat16 => "BF16",
        Kind::Double => "F64",
        Kind::Int64 => "I64",
        Kind::Int => "I32",
        Kind::Int16 => "I16",
        Kind::Int8 => "I8",
        Kind::Uint8 => "U8",
        Kind::Bool => "BOOL",
        _ => return None,
    })
}

/// Decodes every tensor of a safetensors buffer onto the CPU.
pub fn decode(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, SafetensorsError> {
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| SafetensorsError::Format(format!("{e:?}")))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let kind = kind_of(view.dtype()).ok_or_else(|| SafetensorsError::Dtype {
            name: name.clone(),
            dtype: format!("{:?}", view.dtype()),
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        out.push((name, Tensor::from_data_size(view.data(), &shape, kind)));
    }
    Ok(out)
}

/// Encodes named tensors (any device; made contiguous on the CPU) as a safetensors buffer, names sorted.
pub fn encode(tensors: &[(String, Tensor)]) -> Result<Vec<u8>, SafetensorsError> {
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = BTreeMap::new();
    let mut data: Vec<u8> = Vec::new();
    for (name, tensor) in sorted {
        let t = tensor.to_device(tch::Device::Cpu).contiguous();
        let dtype = dtype_name(t.kind()).ok_or_else(|| SafetensorsError::Dtype {
            name: name.clone(),
            dtype: format!("{:?}", t.kind()),
        })?;
        let numel = t.numel();
        let start = data.len();
        data.resize(start + numel * t.kind().elt_size_in_bytes(), 0);
        t.f_copy_data_u8(&mut data[start..], numel)
            .map_err(|e| SafetensorsError::Format(e.to_string()))?;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": t.size(), "data_offsets": [start, data.len()]}),
        );
    }
    let mut header =
        serde_json::to_value(header).map_err(|e| SafetensorsError::Format(e.to_string()))?;
    header["__metadata__"] = serde_json::json!({"format": "pt"});
    let mut header =
        serde_json::to_vec(&header).map_err(|e| SafetensorsError::Format(e.to_string()))?;
    // The data section starts 8-byte aligned.
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + data.len());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&data);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_tensors_exactly() {
        let a = Tensor::randn([3, 4], (Kind::Float, tch::Device::Cpu));
        let b = Tensor::from_slice(&[1i64, 2, 3]);
        let bytes = encode(&[
            ("w".into(), a.shallow_clone()),
            ("b.ids".into(), b.shallow_clone()),
        ])
        .unwrap();
        let back = decode(&bytes).unwrap();
        let get = |n: &str| back.iter().find(|(k, _)| k == n).unwrap().1.shallow_clone();
        assert!(get("w").equal(&a));
        assert!(get("b.ids").equal(&b));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode(b"not a safetensors file").is_err());
    }
}
