//! What a running job tells the outside and asks of it: progress, finished epochs, phases,
//! cancellation, interruption (SIGTERM) and resumable state. The training loop, the job runner,
//! the CLI's progress display and the gRPC service meet here without importing one another.
use serde::{Deserialize, Serialize};

use crate::history::EpochRecord;
use crate::resume::{ResumeState, StateError};

/// A progress report, sent every few steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub epoch: u32,
    pub epochs: u32,
    pub step: u64,
    pub total_steps: u64,
    pub loss: f64,
    pub learning_rate: f64,
    pub samples_per_second: f64,
    pub eta_seconds: f64,
}

/// Stages of a job after the training loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Test scoring, the baseline and the report.
    Evaluating,
    /// Writing the checkpoint's files, its manifest and moving the alias.
    Publishing,
}

/// Hooks into a running job. Every method has a do-nothing default.
pub trait Observer {
    fn progress(&mut self, _progress: &Progress) {}
    fn epoch_end(&mut self, _record: &EpochRecord) {}
    /// Checked before every step and at every phase boundary; `true` ends the job as cancelled.
    fn cancelled(&self) -> bool {
        false
    }
    /// Checked before every step; `true` saves the state and stops (the process is shutting
    /// down; the job resumes from that state later).
    fn interrupted(&self) -> bool {
        false
    }
    /// Whether `save_state` does anything (skips building states nobody keeps).
    fn wants_state(&self) -> bool {
        false
    }
    fn save_state(&mut self, _state: &ResumeState) -> Result<(), StateError> {
        Ok(())
    }
    /// The job moved on to `phase`.
    fn phase(&mut self, _phase: Phase) {}
    /// Called right before the step that makes a version visible for good (the alias move, or
    /// the manifest when no alias is moved). Returns `false` to cancel instead; once it returned
    /// `true`, a cancel request must be refused.
    fn commit(&mut self) -> bool {
        !self.cancelled()
    }
}

/// An observer that does nothing.
pub struct Quiet;
impl Observer for Quiet {}

/// Rate-limits progress log lines: one every `interval`, plus the last step.
pub struct ProgressLog {
    interval: std::time::Duration,
    last: Option<std::time::Instant>,
}

impl ProgressLog {
    pub fn new(interval: std::time::Duration) -> Self {
        Self {
            interval,
            last: None,
        }
    }

    /// Logs `p` when the interval has passed since the previous line (or at the final step).
    pub fn maybe_log(&mut self, p: &Progress) {
        let due = self.last.is_none_or(|t| t.elapsed() >= self.interval);
        if due || p.step == p.total_steps {
            self.last = Some(std::time::Instant::now());
            tracing::info!(
                epoch = format!("{}/{}", p.epoch, p.epochs),
                step = format!("{}/{}", p.step, p.total_steps),
                loss = format!("{:.4}", p.loss),
                lr = format!("{:.2e}", p.learning_rate),
                samples_per_second = format!("{:.1}", p.samples_per_second),
                eta = format_duration(p.eta_seconds),
                "training"
            );
        }
    }
}

/// `1h02m03s`-style durations for logs.
pub fn format_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec:02}s"),
        (h, m, sec) => format!("{h}h{m:02}m{sec:02}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(format_duration(7.4), "7s");
        assert_eq!(format_duration(125.0), "2m05s");
        assert_eq!(format_duration(3723.0), "1h02m03s");
        assert_eq!(format_duration(-3.0), "0s");
    }
}
