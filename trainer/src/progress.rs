//! Progress of a CLI run: a bar on a terminal, periodic log lines otherwise (Kubernetes logs,
//! CI, `nohup`), so a 40-minute run is never silent.
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::history::EpochRecord;
use crate::observe::{Observer, Phase, Progress, ProgressLog};

pub enum ConsoleObserver {
    Bar(ProgressBar),
    Log(ProgressLog),
}

impl ConsoleObserver {
    /// A bar when stderr is a terminal, else a log line every `interval`.
    pub fn new(interval: Duration) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self::Log(ProgressLog::new(interval));
        }
        let bar = ProgressBar::new(0);
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} epoch {prefix} [{bar:30}] {pos}/{len} steps {msg} ETA {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Self::Bar(bar)
    }

    pub fn finish(&self) {
        if let Self::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

impl Observer for ConsoleObserver {
    fn progress(&mut self, p: &Progress) {
        match self {
            Self::Bar(bar) => {
                bar.set_length(p.total_steps);
                bar.set_position(p.step);
                bar.set_prefix(format!("{}/{}", p.epoch, p.epochs));
                bar.set_message(format!(
                    "loss {:.4} lr {:.2e} {:.1} samples/s",
                    p.loss, p.learning_rate, p.samples_per_second
                ));
            }
            Self::Log(log) => log.maybe_log(p),
        }
    }

    fn epoch_end(&mut self, r: &EpochRecord) {
        if let Self::Bar(bar) = self {
            bar.println(format!(
                "epoch {}: train loss {:.4}, dev macro-F1 {:.4} (tuned), dev micro-F1 {:.4} ({:.0}s)",
                r.epoch, r.train_loss, r.dev_macro_f1, r.dev_micro_f1, r.seconds
            ));
        }
    }

    fn phase(&mut self, phase: Phase) {
        self.finish();
        tracing::info!(?phase, "training finished; next phase");
    }
}
