//! BERT for multi-label sequence classification on tch, with Hugging Face tensor names.
mod bert;
mod config;
mod dropout;
mod precision;

pub use bert::{Attention, BertClassifier, LoadReport, ModelError, ModelOutput, Pooling};
pub use config::ConfigError;
pub use config::{BertConfig, ProblemType};
pub use precision::{Precision, PrecisionChoice, PrecisionError};
