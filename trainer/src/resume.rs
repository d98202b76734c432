//! Resumable training state: weights, optimizer moments, the best epoch's weights and the loop's
//! counters, and where a job keeps it. A save writes the tensors under a new name first and then
//! one small pointer (`state.json`, with the tensors' sha256) that commits it: a crash at any
//! moment leaves either the previous state or the new one, never a mix.
use bytes::Bytes;
use common::safetensors_io;
use common::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::history::EpochRecord;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("resume state tensors: {0}")]
    Tensors(#[from] safetensors_io::SafetensorsError),
    #[error("resume state {uri}: {message}")]
    Invalid { uri: String, message: String },
    #[error("resume state: unknown tensor {0}")]
    UnknownTensor(String),
    #[error("resume state: weight average lacks {0}")]
    MissingAverage(String),
    #[error("resume state: the weight average does not fit the parameters: {0}")]
    AverageMismatch(String),
    #[error("resume state: optimizer state lacks {0}")]
    MissingMoment(String),
    #[error("resume state: optimizer moments do not fit the parameters: {0}")]
    MomentMismatch(String),
}

/// Everything needed to continue a run exactly where it stopped.
pub struct ResumeState {
    pub meta: ResumeMeta,
    pub weights: Vec<(String, Tensor)>,
    pub optimizer: Vec<(String, Tensor)>,
    pub best_weights: Option<Vec<(String, Tensor)>>,
    /// The exponential moving average of the weights (`ema_decay` above 0).
    pub average: Option<Vec<(String, Tensor)>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResumeMeta {
    /// Epoch in progress (0-based) and the number of its batches already done.
    pub epoch: u32,
    pub batches_done: usize,
    pub global_step: u64,
    pub optimizer_step: i64,
    pub loss_sum: f64,
    pub loss_count: u64,
    pub history: Vec<EpochRecord>,
    pub best_epoch: Option<u32>,
    pub best_macro_f1: f64,
    pub epochs_without_improvement: u32,
    pub samples_seen: u64,
}

impl ResumeMeta {
    /// The counters of a run that has not taken a step yet.
    pub fn start() -> Self {
        Self {
            epoch: 0,
            batches_done: 0,
            global_step: 0,
            optimizer_step: 0,
            loss_sum: 0.0,
            loss_count: 0,
            history: Vec::new(),
            best_epoch: None,
            best_macro_f1: f64::MIN,
            epochs_without_improvement: 0,
            samples_seen: 0,
        }
    }
}

fn shallow(tensors: &[(String, Tensor)], prefix: &str) -> Vec<(String, Tensor)> {
    tensors
        .iter()
        .map(|(n, t)| (format!("{prefix}{n}"), t.shallow_clone()))
        .collect()
}

impl ResumeState {
    /// The tensors as one safetensors buffer (`model.*`, `optim.*`, `best.*`, `ema.*`).
    pub fn encode_tensors(&self) -> Result<Vec<u8>, StateError> {
        let mut tensors = shallow(&self.weights, "model.");
        tensors.extend(shallow(&self.optimizer, "optim."));
        if let Some(best) = &self.best_weights {
            tensors.extend(shallow(best, "best."));
        }
        if let Some(average) = &self.average {
            tensors.extend(shallow(average, "ema."));
        }
        Ok(safetensors_io::encode(&tensors)?)
    }

    pub fn decode(tensors: &[u8], meta: ResumeMeta) -> Result<Self, StateError> {
        let mut weights = Vec::new();
        let mut optimizer = Vec::new();
        let mut best = Vec::new();
        let mut average = Vec::new();
        for (name, t) in safetensors_io::decode(tensors)? {
            if let Some(n) = name.strip_prefix("model.") {
                weights.push((n.to_string(), t));
            } else if let Some(n) = name.strip_prefix("optim.") {
                optimizer.push((n.to_string(), t));
            } else if let Some(n) = name.strip_prefix("best.") {
                best.push((n.to_string(), t));
            } else if let Some(n) = name.strip_prefix("ema.") {
                average.push((n.to_string(), t));
            } else {
                return Err(StateError::UnknownTensor(name));
            }
        }
        Ok(Self {
            meta,
            weights,
            optimizer,
            best_weights: (!best.is_empty()).then_some(best),
            average: (!average.is_empty()).then_some(average),
        })
    }
}

/// The commit record of a saved state.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StatePointer {
    meta: ResumeMeta,
    /// Name of the tensors object next to the pointer.
    tensors: String,
    sha256: String,
    size: u64,
}

/// Where a job keeps its resumable state (a folder or prefix of its own).
pub struct StateSink {
    pub store: Store,
}

impl StateSink {
    /// The commit point: written last, read first.
    pub const POINTER: &'static str = "state.json";
    const TENSORS_PREFIX: &'static str = "state-";

    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Writes the tensors under a fresh name, then the pointer; then removes older tensors.
    pub async fn save(&self, state: &ResumeState) -> Result<(), StateError> {
        let tensors = state.encode_tensors()?;
        let name = format!(
            "{}{:010}-{:08x}.safetensors",
            Self::TENSORS_PREFIX,
            state.meta.global_step,
            rand::random::<u32>()
        );
        let pointer = StatePointer {
            meta: state.meta.clone(),
            tensors: name.clone(),
            sha256: common::sha256_hex(&tensors),
            size: tensors.len() as u64,
        };
        self.store.put(&name, Bytes::from(tensors)).await?;
        let json = serde_json::to_vec_pretty(&pointer).map_err(|e| self.invalid(e))?;
        self.store.put(Self::POINTER, Bytes::from(json)).await?;
        for old in self.store.list_children("").await? {
            if old.starts_with(Self::TENSORS_PREFIX) && old != name {
                if let Err(e) = self.store.delete(&old).await {
                    tracing::warn!(error = %e, "could not remove an old resume state");
                }
            }
        }
        Ok(())
    }

    /// Removes the state: the pointer first (a crash then leaves unreferenced tensors, never a
    /// pointer to missing ones), then every tensors object. Returns the bytes freed.
    pub async fn remove(&self) -> Result<u64, StateError> {
        let mut freed = 0;
        if let Some((pointer, _)) = self.store.get_opt(Self::POINTER).await? {
            freed += pointer.len() as u64;
            self.store.delete(Self::POINTER).await?;
        }
        for name in self.store.list_children("").await? {
            if name.starts_with(Self::TENSORS_PREFIX) {
                freed += self.store.size(&name).await.unwrap_or(0);
                self.store.delete(&name).await?;
            }
        }
        Ok(freed)
    }

    /// The last committed state, verified against its pointer; `None` when there is none.
    pub async fn load(&self) -> Result<Option<ResumeState>, StateError> {
        let Some((json, _)) = self.store.get_opt(Self::POINTER).await? else {
            return Ok(None);
        };
        let pointer: StatePointer = serde_json::from_slice(&json).map_err(|e| self.invalid(e))?;
        let tensors = self.store.get(&pointer.tensors).await?;
        if tensors.len() as u64 != pointer.size || common::sha256_hex(&tensors) != pointer.sha256 {
            return Err(self.invalid(format!(
                "{} does not match its pointer (size or sha256)",
                pointer.tensors
            )));
        }
        Ok(Some(ResumeState::decode(&tensors, pointer.meta)?))
    }

    fn invalid(&self, message: impl ToString) -> StateError {
        StateError::Invalid {
            uri: self.store.uri().to_string(),
            message: message.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: u64, value: f32) -> ResumeState {
        ResumeState {
            meta: ResumeMeta {
                global_step: step,
                ..ResumeMeta::start()
            },
            weights: vec![("w".into(), Tensor::from_slice(&[value; 4]))],
            optimizer: vec![("exp_avg.0".into(), Tensor::from_slice(&[value; 4]))],
            best_weights: None,
            average: None,
        }
    }

    #[tokio::test]
    async fn a_save_is_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let sink = StateSink::new(Store::open(dir.path().to_str().unwrap()).unwrap());
        assert!(sink.load().await.unwrap().is_none());
        sink.save(&state(4, 1.0)).await.unwrap();
        sink.save(&state(8, 2.0)).await.unwrap();
        let loaded = sink.load().await.unwrap().unwrap();
        assert_eq!(loaded.meta.global_step, 8);
        assert_eq!(
            Vec::<f32>::try_from(&loaded.weights[0].1).unwrap(),
            [2.0; 4]
        );
        let files = sink.store.list_children("").await.unwrap();
        assert_eq!(files.len(), 2, "old tensors removed: {files:?}");

        // A crash after the new tensors landed but before the pointer: the old state still loads.
        sink.store
            .put(
                "state-0000000012-deadbeef.safetensors",
                Bytes::from_static(b"partial"),
            )
            .await
            .unwrap();
        assert_eq!(sink.load().await.unwrap().unwrap().meta.global_step, 8);

        // Tensors that do not match the pointer are refused, never mixed with its counters.
        let pointer: StatePointer =
            serde_json::from_slice(&sink.store.get(StateSink::POINTER).await.unwrap()).unwrap();
        sink.store
            .put(
                &pointer.tensors,
                Bytes::from(state(12, 3.0).encode_tensors().unwrap()),
            )
            .await
            .unwrap();
        let err = sink.load().await.err().expect("mismatch refused");
        assert!(err.to_string().contains("does not match"), "{err}");

        // Removing leaves nothing of the state (and no pointer), whatever was there.
        assert!(sink.remove().await.unwrap() > 0);
        assert!(sink.store.list_children("").await.unwrap().is_empty());
        assert!(sink.load().await.unwrap().is_none());
        assert_eq!(
            sink.remove().await.unwrap(),
            0,
            "removing twice is harmless"
        );
    }
}
