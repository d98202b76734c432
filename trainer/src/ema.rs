//! Exponential moving average of the weights (`--ema-decay`): a shadow copy that follows the
//! trained weights step by step and is what gets evaluated on dev and published. Early updates
//! use a smaller decay, (1 + t) / (10 + t) at update t, so the average is not dominated by the
//! starting weights (the randomly initialised head among them).
use common::model::BertClassifier;
use tch::Tensor;

use crate::resume::StateError;

pub(crate) struct WeightAverage {
    decay: f64,
    /// The trainable parameters' averages, on the model's device, in the model's name order.
    shadow: Vec<(String, Tensor)>,
}

impl WeightAverage {
    /// Starts at the model's current trainable weights.
    pub(crate) fn new(model: &BertClassifier, decay: f64) -> Self {
        let shadow = model
            .trainable_parameters()
            .into_iter()
            .map(|(name, t)| (name, t.detach().copy()))
            .collect();
        Self { decay, shadow }
    }

    /// Continues from a saved average, which must hold every trainable parameter and nothing else.
    pub(crate) fn resume(
        model: &BertClassifier,
        decay: f64,
        saved: Vec<(String, Tensor)>,
    ) -> Result<Self, StateError> {
        let mut saved: std::collections::HashMap<String, Tensor> = saved.into_iter().collect();
        let mut shadow = Vec::new();
        for (name, param) in model.trainable_parameters() {
            let t = saved
                .remove(&name)
                .ok_or_else(|| StateError::MissingAverage(name.clone()))?;
            if t.size() != param.size() {
                return Err(StateError::AverageMismatch(format!(
                    "{name} has shape {:?}, its parameter {:?}",
                    t.size(),
                    param.size()
                )));
            }
            shadow.push((name, t.to_device(param.device()).to_kind(param.kind())));
        }
        if let Some(extra) = saved.into_keys().next() {
            return Err(StateError::AverageMismatch(format!(
                "{extra} is not a trainable parameter"
            )));
        }
        Ok(Self { decay, shadow })
    }

    /// The decay of update `t` (0-based).
    pub(crate) fn decay_at(&self, t: u64) -> f64 {
        self.decay.min((1.0 + t as f64) / (10.0 + t as f64))
    }

    /// Moves the average towards the model's weights after optimizer step `t` (0-based).
    pub(crate) fn update(&mut self, model: &BertClassifier, t: u64) {
        let weight = 1.0 - self.decay_at(t);
        let params = model.trainable_parameters();
        tch::no_grad(|| {
            for ((name, avg), (param_name, param)) in self.shadow.iter_mut().zip(&params) {
                debug_assert_eq!(name, param_name);
                let _ = avg.lerp_(param, weight);
            }
        });
    }

    /// The averaged weights, by parameter name.
    pub(crate) fn weights(&self) -> &[(String, Tensor)] {
        &self.shadow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_updates_use_a_smaller_decay() {
        let avg = WeightAverage {
            decay: 0.999,
            shadow: Vec::new(),
        };
        assert!((avg.decay_at(0) - 0.1).abs() < 1e-12);
        assert!((avg.decay_at(90) - 91.0 / 100.0).abs() < 1e-12);
        assert_eq!(avg.decay_at(100_000), 0.999);
    }
}
