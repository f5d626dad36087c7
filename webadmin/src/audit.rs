//! The audit log: who did what, when, from where, and how it ended. One
//! JSON object per line in `panel/audit.log` on the data disk, appended and
//! fsynced before the answer goes out (failed logins are appended without
//! the fsync: they change nothing). At [`MAX_BYTES`] the log moves to
//! `audit.log.1` (the one before that is dropped) and a new one starts.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Unix seconds.
    pub time: u64,
    /// `admin`, `token:NAME`, or `anonymous` for failed logins.
    pub who: String,
    pub from: String,
    /// e.g. `vm.start`.
    pub action: String,
    pub target: String,
    /// `ok`, or the error.
    pub outcome: String,
}

/// The size at which the log is rotated.
pub const MAX_BYTES: u64 = 4 << 20;

pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    lock: Mutex<()>,
}

impl AuditLog {
    pub fn new(data_dir: &Path) -> Self {
        Self::with_limit(data_dir, MAX_BYTES)
    }

    pub fn with_limit(data_dir: &Path, max_bytes: u64) -> Self {
        Self { path: data_dir.join("panel/audit.log"), max_bytes, lock: Mutex::new(()) }
    }

    fn previous(&self) -> PathBuf {
        self.path.with_extension("log.1")
    }

    pub fn record(&self, who: &str, from: &str, action: &str, target: &str, outcome: &str) {
        let entry = AuditEntry {
            time: crate::store::now_unix(),
            who: who.into(),
            from: from.into(),
            action: action.into(),
            target: target.into(),
            outcome: outcome.into(),
        };
        tracing::info!(who, from, action, target, outcome, "audit");
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let result = (|| -> std::io::Result<()> {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            if std::fs::metadata(&self.path).is_ok_and(|m| m.len() >= self.max_bytes) {
                std::fs::rename(&self.path, self.previous())?;
            }
            let mut f = std::fs::OpenOptions::new().create(true).read(true).append(true).open(&self.path)?;
            let mut line = Vec::new();
            // A line torn by a crash is closed first, so this one stays whole.
            let len = f.metadata()?.len();
            if len > 0 {
                use std::os::unix::fs::FileExt;
                let mut last = [0u8; 1];
                f.read_exact_at(&mut last, len - 1)?;
                if last[0] != b'\n' {
                    line.push(b'\n');
                }
            }
            line.extend(serde_json::to_vec(&entry).map_err(std::io::Error::other)?);
            line.push(b'\n');
            f.write_all(&line)?;
            let changes_nothing = outcome != "ok" && matches!(action, "login" | "setup");
            if changes_nothing {
                Ok(())
            } else {
                f.sync_data()
            }
        })();
        if let Err(e) = result {
            tracing::error!("cannot write the audit log {}: {e}", self.path.display());
        }
    }

    /// The newest `limit` entries, newest first. A torn last line (a crash
    /// mid-append) is skipped.
    pub fn recent(&self, limit: usize) -> Vec<AuditEntry> {
        let mut all: Vec<AuditEntry> = Vec::new();
        for path in [self.previous(), self.path.clone()] {
            let Ok(f) = std::fs::File::open(&path) else { continue };
            all.extend(
                std::io::BufReader::new(f)
                    .lines()
                    .map_while(Result::ok)
                    .filter_map(|l| serde_json::from_str::<AuditEntry>(&l).ok()),
            );
        }
        all.reverse();
        all.truncate(limit);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_back_newest_first_and_torn_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path());
        log.record("admin", "10.0.0.1", "vm.create", "web1", "ok");
        log.record("token:ci", "10.0.0.2", "vm.start", "web1", "ok");
        let mut f = std::fs::OpenOptions::new().append(true).open(dir.path().join("panel/audit.log")).unwrap();
        f.write_all(b"{\"time\":1,\"who\":").unwrap();
        log.record("admin", "10.0.0.1", "vm.stop", "web1", "ok");
        let got = log.recent(10);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].action, "vm.stop", "the entry after the torn line is whole");
        assert_eq!(got[1].action, "vm.start");
        assert_eq!(got[2].who, "admin");
    }

    #[test]
    fn the_log_rotates_at_its_limit_and_keeps_one_generation() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::with_limit(dir.path(), 1000);
        for i in 0..100 {
            log.record("admin", "10.0.0.1", "vm.start", &format!("vm{i}"), "ok");
        }
        let size = |name: &str| std::fs::metadata(dir.path().join("panel").join(name)).map(|m| m.len()).unwrap_or(0);
        assert!(size("audit.log") < 1200, "the log stays near its limit: {}", size("audit.log"));
        assert!(size("audit.log.1") < 1200);
        assert!(!dir.path().join("panel/audit.log.2").exists(), "one old generation only");
        let recent = log.recent(3);
        assert_eq!(recent[0].target, "vm99", "the newest entry survives rotation");
        assert!(log.recent(1000).len() < 100, "old entries are gone");
    }
}
