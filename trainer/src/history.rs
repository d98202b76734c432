//! What a finished epoch leaves behind: the record shared by the loop, its resume state, the
//! job service and the report (none of which need to import the others for it).
use serde::{Deserialize, Serialize};

/// One finished epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    pub epoch: u32,
    pub train_loss: f64,
    /// Dev macro-F1 at per-label thresholds tuned on dev (the selection criterion).
    pub dev_macro_f1: f64,
    /// Dev micro-F1 at the tuned global threshold.
    pub dev_micro_f1: f64,
    pub seconds: f64,
}
