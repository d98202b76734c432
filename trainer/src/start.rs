//! The weights a job starts from when it names published checkpoints (`init_from`) instead of
//! the base model alone: one checkpoint's (a warm start), or the mean of several (a "model
//! soup": one model of the same size, not an ensemble). Each head is first taken back through
//! its calibration, so that every member's logits are averaged on their trained scale.
use std::collections::HashMap;

use common::checkpoint::{self, TOKENIZER};
use common::model::{BertClassifier, ModelError, Precision};
use common::registry::{ModelRef, RegistryError};
use tch::{Device, Kind, Tensor};
use tokio::runtime::Handle;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("hyperparameters.init_from[{index}]: {uri}: {message}")]
    Invalid {
        index: usize,
        uri: String,
        message: String,
    },
    #[error("hyperparameters.init_from[{index}]: {source}")]
    Registry { index: usize, source: RegistryError },
    #[error("hyperparameters.init_from[{index}]: {source}")]
    Checkpoint {
        index: usize,
        source: checkpoint::CheckpointError,
    },
    #[error("hyperparameters.init_from: {0}")]
    Model(#[from] ModelError),
}

/// Replaces every parameter of `model` (built from the base model with the job's labels) by the
/// mean of the checkpoints' at `uris`, read one at a time in fp32 on the CPU. Each checkpoint
/// must hold exactly the model's tensors with the same shapes, finite values, and the base
/// model's tokenizer (`base_tokenizer`). Returns the checkpoints' versions.
pub(crate) fn load_mean(
    model: &BertClassifier,
    uris: &[String],
    base_tokenizer: &[u8],
    handle: &Handle,
) -> Result<Vec<String>, StartError> {
    let expected: HashMap<String, Vec<i64>> = model
        .named_parameters()
        .into_iter()
        .map(|(name, t)| (name, t.size()))
        .collect();
    let mut sums: HashMap<String, Tensor> = HashMap::new();
    let mut versions = Vec::with_capacity(uris.len());
    for (index, uri) in uris.iter().enumerate() {
        let invalid = |message: String| StartError::Invalid {
            index,
            uri: uri.clone(),
            message,
        };
        let registry = |source| StartError::Registry { index, source };
        let (store, _) = handle
            .block_on(ModelRef::parse(uri).map_err(registry)?.resolve())
            .map_err(registry)?;
        let ck = handle
            .block_on(checkpoint::read(&store))
            .map_err(|source| StartError::Checkpoint { index, source })?;
        if ck.files[TOKENIZER].as_ref() != base_tokenizer {
            return Err(invalid(
                "its tokenizer.json is not the base model's: start from checkpoints trained from \
                 the job's base model"
                    .into(),
            ));
        }
        let loaded = ck
            .load_model(Device::Cpu, Precision::Fp32)
            .map_err(|source| StartError::Checkpoint { index, source })?;
        if let Some(name) = loaded.model.first_non_finite_parameter() {
            return Err(invalid(format!("tensor {name} holds a NaN or an infinity")));
        }
        if let Some(c) = loaded.manifest.calibration.as_ref().filter(|c| c.applied) {
            loaded
                .model
                .calibrate_logits(&c.scaling().inverse())
                .map_err(|e| invalid(format!("its calibration cannot be undone: {e}")))?;
        }
        let params = loaded.model.named_parameters();
        if let Some(name) = expected
            .keys()
            .find(|name| !params.iter().any(|(n, _)| n == *name))
        {
            return Err(invalid(format!(
                "has no tensor {name}, which the base model has"
            )));
        }
        tch::no_grad(|| {
            for (name, t) in params {
                let Some(shape) = expected.get(&name) else {
                    return Err(invalid(format!(
                        "has a tensor {name} that the base model lacks"
                    )));
                };
                if &t.size() != shape {
                    return Err(invalid(format!(
                        "tensor {name} has shape {:?}, the job's model {shape:?}",
                        t.size()
                    )));
                }
                let t = t.to_kind(Kind::Float);
                match sums.get_mut(&name) {
                    Some(sum) => {
                        let _ = sum.g_add_(&t);
                    }
                    None => {
                        sums.insert(name, t.copy());
                    }
                }
            }
            Ok(())
        })?;
        versions.push(loaded.manifest.version.clone());
    }
    let count = uris.len() as f64;
    let vars = model.var_store().variables();
    tch::no_grad(|| {
        for (name, sum) in &sums {
            if let Some(var) = vars.get(name) {
                var.shallow_clone()
                    .f_copy_(&(sum / count))
                    .map_err(ModelError::from)?;
            }
        }
        Ok::<_, StartError>(())
    })?;
    Ok(versions)
}
