//! Progress bars on stderr (bytes, rate, ETA), off with `--no-progress` or
//! when stderr is not a terminal.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use dfcache_client::Progress;

pub struct Bar(ProgressBar);

impl Bar {
    pub fn new(enabled: bool, verb: &str) -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if !enabled || !std::io::stderr().is_terminal() {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        let template = format!(
            "{verb} [{{elapsed_precise}}] [{{wide_bar}}] {{bytes}}/{{total_bytes}} ({{bytes_per_sec}}, ETA {{eta}})"
        );
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style.progress_chars("#>-"));
        }
        Self(bar)
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }

    /// Adds `bytes` to the total (a task whose size is learnt on the way).
    pub fn grow_total(&self, bytes: u64) {
        self.0.inc_length(bytes);
    }
}

impl Progress for Bar {
    fn set_total(&self, total: u64) {
        self.0.set_length(total);
    }

    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}
