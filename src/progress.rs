//! Progress of long work: a bar (bytes, rate, ETA) on a terminal, a structured
//! log line every few seconds otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar if stderr is a terminal, log lines otherwise.
    Auto,
    /// Log lines only.
    Log,
    /// Nothing.
    Quiet,
}

pub struct Progress {
    what: &'static str,
    done: AtomicU64,
    total: Option<u64>,
    bar: Option<ProgressBar>,
    started: Instant,
    last_log: Mutex<Instant>,
    log: bool,
}

const LOG_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    pub fn new(what: &'static str, total: Option<u64>, mode: ProgressMode) -> Self {
        let tty = mode == ProgressMode::Auto && std::io::stderr().is_terminal();
        let bar = tty.then(|| {
            let bar = match total {
                Some(t) => ProgressBar::new(t),
                None => ProgressBar::no_length(),
            };
            bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
            let template = if total.is_some() {
                "{msg:>9} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"
            } else {
                "{msg:>9} {spinner} {bytes} {bytes_per_sec} {elapsed}"
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .expect("template is valid")
                    .progress_chars("=> "),
            );
            bar.set_message(what);
            bar
        });
        let now = Instant::now();
        Progress {
            what,
            done: AtomicU64::new(0),
            total,
            bar,
            started: now,
            last_log: Mutex::new(now),
            log: !tty && mode != ProgressMode::Quiet,
        }
    }

    pub fn inc(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        if !self.log {
            return;
        }
        let mut last = self.last_log.lock().expect("progress lock");
        if last.elapsed() < LOG_EVERY {
            return;
        }
        *last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate_mb_s = done as f64 / secs / 1e6;
        match self.total {
            Some(total) => tracing::info!(
                task = self.what,
                bytes = done,
                total_bytes = total,
                rate_mb_s = format!("{rate_mb_s:.1}"),
                "progress"
            ),
            None => tracing::info!(
                task = self.what,
                bytes = done,
                rate_mb_s = format!("{rate_mb_s:.1}"),
                "progress"
            ),
        }
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
