//! File helpers: atomic writes (temp file + rename) so a crash never leaves
//! a half-written checkpoint or output behind, and no temp file outlives
//! its writer: a failed write removes its own, and the next write into a
//! directory removes those that dead processes left (a temp file is named
//! `.NAME.tmpPID.RANDOM` for that).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Write `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create directory {}", dir.display()))?;
    let name = path.file_name().context("output path has no file name")?.to_string_lossy();
    remove_stale_temps(dir, Some(&name));
    let prefix = format!(".{name}.tmp{}.", std::process::id());
    // (a NamedTempFile removes itself when dropped, so a failed write leaves
    // nothing behind: a full disk must not stay full of our half-written file)
    let written = (|| -> Result<()> {
        let mut f =
            tempfile::Builder::new().prefix(&prefix).tempfile_in(dir).with_context(|| format!("cannot write in {}", dir.display()))?;
        f.write_all(bytes).and_then(|_| f.as_file().sync_all()).with_context(|| format!("cannot write {}", f.path().display()))?;
        f.persist(path).map_err(|e| anyhow::anyhow!("cannot move {} to {}: {}", e.file.path().display(), path.display(), e.error))?;
        Ok(())
    })();
    written.with_context(|| format!("writing {}", path.display()))
}

/// Remove the temp files of writes into `dir` (of `name` only, if given)
/// whose process is gone. Returns how many were removed.
pub fn remove_stale_temps(dir: &Path, name: Option<&str>) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(file) = file.to_str() else { continue };
        let Some((target, rest)) = file.strip_prefix('.').and_then(|f| f.rsplit_once(".tmp")) else { continue };
        let Some(Ok(pid)) = rest.split('.').next().map(str::parse::<u32>) else { continue };
        if name.is_some_and(|n| n != target) || process_alive(pid) {
            continue;
        }
        if std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Whether a process with this id runs (ours counts as running).
pub fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
        // SAFETY: signal 0 only checks that the process exists
        if unsafe { libc::kill(pid, 0) } == 0 {
            return true;
        }
        // (EPERM: it exists, under another user)
        std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_and_dead_writers_leave_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("w.bin");
        // a dead writer's temp (no process has pid 4194304 + 1, above Linux's limit),
        // a live one's (ours) and another file's
        let dead = dir.path().join(".w.bin.tmp4194305.a1B2c3");
        let live = dir.path().join(format!(".w.bin.tmp{}.d4E5f6", std::process::id()));
        let other = dir.path().join(".x.bin.tmp4194305.a1B2c3");
        for p in [&dead, &live, &other] {
            std::fs::write(p, b"partial").unwrap();
        }
        std::fs::remove_file(&live).unwrap();
        write_atomic(&out, b"data").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"data");
        assert!(!dead.exists(), "a dead writer's temp file survived");
        assert!(other.exists(), "only temps of the file written are cleared then");
        assert_eq!(remove_stale_temps(dir.path(), None), 1);
        // a write that fails (the target is a directory) removes its temp
        let blocked = dir.path().join("sub");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("f"), b"x").unwrap();
        let e = format!("{:#}", write_atomic(&blocked, b"data").unwrap_err());
        assert!(e.contains("sub"), "{e}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }
}
