//! Progress of a batch shard: a bar on a terminal, else a log line every interval with rows
//! done, rows/s and the time left.
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub(crate) struct Progress {
    total: u64,
    done: AtomicU64,
    bar: Option<ProgressBar>,
    interval: Duration,
    started: Instant,
    last_log: Mutex<Instant>,
}

impl Progress {
    pub(crate) fn new(total: u64, interval: Duration) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} [{bar:30}] {human_pos}/{human_len} rows {per_sec} ETA {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Self {
            total,
            done: AtomicU64::new(0),
            bar,
            interval,
            started: Instant::now(),
            last_log: Mutex::new(Instant::now()),
        }
    }

    /// `n` more rows scored.
    pub(crate) fn add(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        let Ok(mut last) = self.last_log.try_lock() else {
            return;
        };
        if last.elapsed() < self.interval {
            return;
        }
        *last = Instant::now();
        let seconds = self.started.elapsed().as_secs_f64();
        let rate = done as f64 / seconds.max(1e-9);
        let eta = (self.total.saturating_sub(done)) as f64 / rate.max(1e-9);
        tracing::info!(
            rows = done,
            of = self.total,
            rows_per_second = format!("{rate:.0}"),
            eta_seconds = format!("{eta:.0}"),
            "batch progress"
        );
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
