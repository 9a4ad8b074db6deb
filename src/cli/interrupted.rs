//! How a command reports that Ctrl-C stopped it.

/// The error of a command stopped by Ctrl-C after saving its work: exit
/// code 130, as a shell reports SIGINT.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}
