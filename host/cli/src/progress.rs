//! Progress on long steps (building, uploading, installing): a spinner with
//! the step's name and elapsed time on stderr (indicatif), shown only on
//! a terminal.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A sequence of named steps shown as one progress line.
pub struct Steps {
    bar: ProgressBar,
}

impl Steps {
    /// `total` steps; hidden when stderr is not a terminal.
    pub fn new(total: u64) -> Self {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{pos}/{len}] {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Steps { bar }
    }

    /// Starts the next step.
    pub fn step(&self, message: &str) {
        self.bar.inc(1);
        self.bar.set_message(message.to_string());
    }

    /// Adds `more` steps to the total (chunks discovered on the way).
    pub fn add(&self, more: u64) {
        self.bar.inc_length(more);
    }

    /// Clears the line.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Steps {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.abandon();
        }
    }
}
