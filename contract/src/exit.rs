//! How a VMM ends: its process exit code, and the exit record it writes
//! (`exit_file` in `vm.json`, `exit.json` in the panel's run directory) so
//! that a supervisor which is not its parent learns why.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | the guest powered off (ACPI S5) |
//! | 1 | internal error of the VMM |
//! | 2 | bad configuration (nothing ran) |
//! | 3 | the guest rebooted (the panel starts it again) |
//! | 4 | guest fault: triple fault, KVM internal or entry error |
//! | 5 | stopped from outside (API `stop` or a signal) |
//! | 6 | the VMM made a system call its seccomp filter forbids, and was killed |
//! | 128+N | the VMM was killed by signal N |

use serde::{Deserialize, Serialize};
use std::path::Path;

pub const EXIT_POWER_OFF: i32 = 0;
pub const EXIT_INTERNAL_ERROR: i32 = 1;
pub const EXIT_BAD_CONFIG: i32 = 2;
pub const EXIT_REBOOT: i32 = 3;
pub const EXIT_GUEST_FAULT: i32 = 4;
pub const EXIT_STOPPED: i32 = 5;
/// Written by the jail's waiting parent when seccomp killed the VMM.
pub const EXIT_FORBIDDEN_SYSCALL: i32 = 6;

/// What the exit file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub code: i32,
    pub reason: String,
}

impl ExitRecord {
    /// Writes the record next to its final path and renames it in place.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, path)
    }

    /// Reads a record; `Ok(None)` when there is none (the VMM has not
    /// ended, or was killed before it could write one).
    pub fn read(path: &Path) -> std::io::Result<Option<Self>> {
        crate::read_json(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_written_by_the_vmm_reads_back_in_the_panel() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exit.json");
        assert_eq!(ExitRecord::read(&path).unwrap(), None, "no record yet");
        let r = ExitRecord { code: EXIT_GUEST_FAULT, reason: "guest fault: triple fault".into() };
        r.write(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), r#"{"code":4,"reason":"guest fault: triple fault"}"#);
        assert_eq!(ExitRecord::read(&path).unwrap(), Some(r));
        assert!(!path.with_extension("tmp").exists());
    }
}
