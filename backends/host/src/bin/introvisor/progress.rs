//! A progress line on stderr for work that takes more than a couple of seconds.
//!
//! It appears only when enabled (stderr is a terminal, or `--progress` forces it), and
//! then only after [`Progress::DELAY`] unless forced (forced progress shows from the start,
//! so that a script or a test sees it). It redraws at most ten times a second, in place
//! (`\r`), and ends with a newline.

use core::time::Duration;
use std::io::Write;
use std::time::Instant;

/// A progress line.
pub(crate) struct Progress {
    label: &'static str,
    unit: &'static str,
    total: Option<u64>,
    done: u64,
    enabled: bool,
    delay: Duration,
    start: Instant,
    last_draw: Option<Instant>,
    ticks: u32,
}

impl Progress {
    /// How long work runs before an unforced progress line appears.
    pub(crate) const DELAY: Duration = Duration::from_secs(2);
    const INTERVAL: Duration = Duration::from_millis(100);

    /// A progress line for `total` units (`None`: unknown), shown if `enabled`, at once if
    /// `forced`.
    pub(crate) fn new(
        label: &'static str,
        unit: &'static str,
        total: Option<u64>,
        enabled: bool,
        forced: bool,
    ) -> Self {
        Self {
            label,
            unit,
            total,
            done: 0,
            enabled: enabled || forced,
            delay: if forced { Duration::ZERO } else { Self::DELAY },
            start: Instant::now(),
            last_draw: None,
            ticks: 0,
        }
    }

    /// Records `n` more units done; redraws if it is time.
    pub(crate) fn add(&mut self, n: u64, err: &mut dyn Write) {
        self.done = self.done.saturating_add(n);
        if !self.enabled {
            return;
        }
        // Look at the clock only every 64 calls: translate calls this once per address.
        self.ticks = self.ticks.wrapping_add(1);
        if self.ticks % 64 != 1 && self.last_draw.is_some() {
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.start) < self.delay {
            return;
        }
        if self
            .last_draw
            .is_some_and(|t| now.duration_since(t) < Self::INTERVAL)
        {
            return;
        }
        self.last_draw = Some(now);
        self.draw(now, err);
    }

    fn draw(&self, now: Instant, err: &mut dyn Write) {
        let secs = now.duration_since(self.start).as_secs_f64().max(1e-3);
        let rate = self.done as f64 / secs;
        let line = match self.total {
            Some(total) if total > 0 => {
                let frac = (self.done as f64 / total as f64).clamp(0.0, 1.0);
                const WIDTH: usize = 30;
                let filled = (frac * WIDTH as f64) as usize;
                format!(
                    "\r{} [{}{}] {:3.0}% {}/{} {} ({:.0}/s) ",
                    self.label,
                    "#".repeat(filled),
                    "-".repeat(WIDTH - filled),
                    frac * 100.0,
                    self.done,
                    total,
                    self.unit,
                    rate
                )
            }
            _ => format!(
                "\r{}: {} {} ({:.0}/s) ",
                self.label, self.done, self.unit, rate
            ),
        };
        // Progress is best effort: a failed write to stderr is not an error of the command.
        let _ = err.write_all(line.as_bytes());
        let _ = err.flush();
    }

    /// Draws the final state and ends the line, if anything was drawn or forced.
    pub(crate) fn finish(&mut self, err: &mut dyn Write) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if self.last_draw.is_none() && now.duration_since(self.start) < self.delay {
            return;
        }
        self.draw(now, err);
        let _ = err.write_all(b"\n");
        let _ = err.flush();
        self.enabled = false;
    }
}
