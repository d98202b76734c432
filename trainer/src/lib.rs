//! The trainer: the fine-tuning loop, the TF-IDF baseline, evaluation and the report, publishing
//! to the registry, and the gRPC job service.
//!
//! A job's path: `config` (defaults and overrides) → `validate` (every field, before work) →
//! `job::run`: `start` (published weights, or their mean, when asked) → `teachers` (soft
//! targets, when distilling) → `fine_tune` (prepare / run an epoch / finish, with `resume` state and `observe`
//! hooks) → `evaluate` (test, baseline, `report`) → publish (files, manifest, alias).
pub mod baseline;
pub(crate) mod batches;
pub mod bench;
pub mod cli;
pub mod config;
pub(crate) mod ema;
pub mod evaluate;
pub mod fine_tune;
pub mod history;
pub mod job;
pub(crate) mod loss;
pub mod malloc;
pub mod observe;
pub(crate) mod optim;
pub mod progress;
pub mod report;
pub mod resume;
pub mod server;
pub mod service;
pub(crate) mod start;
pub mod teachers;
pub mod validate;
