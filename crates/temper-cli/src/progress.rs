//! The progress bar of preparing a dataset (on a terminal only).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use temper_data::Progress;

/// Bytes of the dataset read, with rate and ETA, and the examples prepared so far.
#[derive(Debug)]
pub struct ProgressShown {
    bar: Option<ProgressBar>,
}

impl ProgressShown {
    /// Shows nothing until the first [`ProgressShown::show`].
    pub fn new() -> ProgressShown {
        ProgressShown { bar: None }
    }

    pub fn show(&mut self, progress: &Progress) {
        if self.bar.is_none() && std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(progress.total_bytes);
            bar.set_style(
                ProgressStyle::with_template(
                    "preparing {msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} [{elapsed_precise} < {eta_precise}]",
                )
                .expect("a valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(500));
            self.bar = Some(bar);
        }
        if let Some(bar) = &self.bar {
            bar.set_length(progress.total_bytes);
            bar.set_position(progress.bytes);
            bar.set_message(format!(
                "{}: {} examples",
                progress.dataset, progress.examples
            ));
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
