//! The trainer: fine-tuning loop, TF-IDF baseline, evaluation report, publishing, and the gRPC
//! job service.
pub mod baseline;
pub mod batches;
pub mod cli;
pub mod job;
pub mod optim;
pub mod report;
pub mod service;
pub mod train;
