//! A progress bar on a terminal (stderr), silent otherwise.

use std::io::Write;
use std::time::{Duration, Instant};

/// Draws `[=====>    ]  45%  123.4 MiB/s  ETA 0:12` on stderr, at most five
/// times a second, only when stderr is a terminal.
pub struct Progress {
    total: u64,
    start: Instant,
    last: Option<Instant>,
    enabled: bool,
    label: String,
    /// Characters of the longest line drawn (what `finish` clears).
    drawn: usize,
}

impl Progress {
    /// A bar for `total` bytes.
    pub fn new(label: &str, total: u64) -> Progress {
        // SAFETY: isatty only inspects the descriptor number.
        let enabled = unsafe { libc::isatty(2) } == 1;
        Progress { total, start: Instant::now(), last: None, enabled, label: label.to_string(), drawn: 0 }
    }

    /// Whether the bar is drawn (stderr is a terminal).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Reports `done` bytes so far; the rate is the average since the bar
    /// was made.
    pub fn update(&mut self, done: u64) {
        let secs = self.start.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        self.draw(done, rate, false);
    }

    /// Reports `done` bytes of `total` (which may change: a new run) at
    /// `rate` bytes/s measured by someone else (e.g. md's `sync_speed`),
    /// under `label`.
    pub fn update_at(&mut self, label: &str, done: u64, total: u64, rate: f64) {
        let changed = label != self.label || total != self.total;
        if changed {
            self.label = label.to_string();
            self.total = total;
        }
        self.draw(done, rate, changed);
    }

    fn draw(&mut self, done: u64, rate: f64, force: bool) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if !force && self.last.is_some_and(|l| now - l < Duration::from_millis(200)) && done < self.total {
            return;
        }
        self.last = Some(now);
        let frac = if self.total == 0 { 1.0 } else { (done as f64 / self.total as f64).min(1.0) };
        let width = 30usize;
        let filled = ((frac * width as f64) as usize).min(width);
        let mut bar = "=".repeat(filled);
        if filled < width {
            bar.push('>');
            bar.push_str(&" ".repeat(width - filled - 1));
        }
        let eta = if rate > 0.0 { ((self.total - done.min(self.total)) as f64 / rate) as u64 } else { 0 };
        let line = format!(
            "{} [{bar}] {:3.0}%  {:7.1} MiB/s  ETA {}:{:02}  ",
            self.label,
            frac * 100.0,
            rate / (1 << 20) as f64,
            eta / 60,
            eta % 60
        );
        self.drawn = self.drawn.max(line.chars().count());
        eprint!("\r{line}");
        let _ = std::io::stderr().flush();
    }

    /// Clears the bar line.
    pub fn finish(&mut self) {
        if self.enabled {
            eprint!("\r{}\r", " ".repeat(self.drawn.max(90)));
            let _ = std::io::stderr().flush();
        }
    }
}
