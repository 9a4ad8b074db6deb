//! The progress bar every long command shows on stderr: position, elapsed
//! time, ETA, rate and a message.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub fn bar(total: u64, done: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}, {per_sec}] {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_position(done);
    bar
}
