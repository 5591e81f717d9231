//! Progress bars and log lines for running steps (the scheduler owns one; steps draw on it).

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress bars and log lines that don't tear each other.
pub struct Progress {
    multi: MultiProgress,
    visible: bool,
}

impl Progress {
    pub fn new(visible: bool) -> Progress {
        let multi = MultiProgress::new();
        if !visible {
            multi.set_draw_target(ProgressDrawTarget::hidden());
        }
        Progress { multi, visible }
    }
    pub fn println(&self, msg: &str) {
        if self.visible {
            let _ = self.multi.println(msg);
        } else {
            eprintln!("{msg}");
        }
    }
    pub fn bar(&self, step: &str, len: u64, msg: &str) -> ProgressBar {
        let pb = self.multi.add(ProgressBar::new(len));
        pb.set_style(
            ProgressStyle::with_template(
                "  [{prefix}] {msg} {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb.set_prefix(step.to_string());
        pb.set_message(msg.to_string());
        pb
    }
}
