//! One run at a time per run directory: a run holds an exclusive `flock` on
//! `OUT/.lock` (which holds its process id) for as long as it trains. The
//! kernel drops the lock when the process ends, however it ends, so a
//! killed run never leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Held while a run trains; dropping it releases the directory.
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Lock `out` (created if needed), or fail at once naming the holder.
    pub fn acquire(out: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let path = out.join(".lock");
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if !try_lock(&f) {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            let who = match holder.trim() {
                "" => "another process".to_string(),
                pid => format!("process {pid}"),
            };
            bail!(
                "{} is in use by another run ({who} holds {}); wait for it to end, or train into another `out`",
                out.display(),
                path.display()
            );
        }
        f.set_len(0)
            .and_then(|_| f.rewind())
            .and_then(|_| writeln!(f, "{}", std::process::id()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(RunLock { _file: f })
    }
}

#[cfg(unix)]
fn try_lock(f: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open file descriptor
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

#[cfg(not(unix))]
fn try_lock(_: &File) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_run_on_a_directory_fails_at_once_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path()).unwrap();
        let e = format!("{:#}", RunLock::acquire(dir.path()).err().unwrap());
        assert!(e.contains("in use by another run") && e.contains(&format!("process {}", std::process::id())), "{e}");
        drop(first);
        RunLock::acquire(dir.path()).unwrap();
    }
}
