//! Atomic files: every write goes to a temporary file in the same
//! directory, is fsynced, renamed over the old one, and the directory is
//! fsynced. A crash at any moment leaves the old or the new content, never a
//! torn file; a leftover temporary file is ignored (and removed) on load.

use anyhow::{Context, Result};
use serde::{de::DeserializeOwned, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Seconds since the Unix epoch, as the records on disk keep time.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Locks a mutex; a panic elsewhere while it was held does not poison the
/// panel's state for good.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The temporary name a write uses before its rename.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Writes `data` to `path` atomically with the given mode.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().context("a file path needs a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = temp_path(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(data).and_then(|_| f.sync_all()).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    sync_dir(dir)
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("cannot sync {}", dir.display()))
}

pub fn save_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut data = serde_json::to_vec_pretty(value)?;
    data.push(b'\n');
    write_atomic(path, &data, 0o600)
}

/// Reads a JSON file; `None` when it does not exist.
pub fn load_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let _ = std::fs::remove_file(temp_path(path));
    match std::fs::read(path) {
        Ok(data) => serde_json::from_slice(&data).map(Some).with_context(|| format!("{} is not valid", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Removes a file and makes the removal durable.
pub fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => path.parent().map(sync_dir).unwrap_or(Ok(())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_the_file_whole_and_leftovers_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vm.json");
        save_json(&p, &serde_json::json!({"n": 1})).unwrap();
        save_json(&p, &serde_json::json!({"n": 2})).unwrap();
        // A crash after writing the temporary file but before the rename.
        std::fs::write(temp_path(&p), b"{\"n\": 3, torn").unwrap();
        let v: serde_json::Value = load_json(&p).unwrap().unwrap();
        assert_eq!(v["n"], 2);
        assert!(!temp_path(&p).exists(), "the leftover was removed");
        assert!(load_json::<serde_json::Value>(&dir.path().join("none.json")).unwrap().is_none());
    }

    /// A child process rewrites the file in a loop and is killed with
    /// SIGKILL at an arbitrary moment; the file is always whole.
    #[test]
    fn a_writer_killed_mid_write_leaves_a_readable_state() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        for round in 0..5u64 {
            // SAFETY: the child only runs the write loop and exits; no locks
            // are held across fork in this single-purpose test process.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                let big = "x".repeat(256 * 1024);
                for i in 0u64.. {
                    let _ = save_json(&p, &serde_json::json!({"i": i, "pad": big}));
                }
                unsafe { libc::_exit(0) };
            }
            std::thread::sleep(std::time::Duration::from_millis(30 + round * 17));
            // SAFETY: kills and reaps our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            if p.exists() {
                let v: serde_json::Value = load_json(&p).unwrap().expect("whole");
                assert!(v["i"].is_u64());
            }
        }
        assert!(p.exists(), "some writes completed");
    }
}
