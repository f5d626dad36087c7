//! Why a VM stopped, and the process exit code that tells the panel.
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

use std::fmt;
use std::sync::Mutex;
use vmm_sys_util::eventfd::EventFd;

pub use kvmos_contract::exit::{
    EXIT_BAD_CONFIG, EXIT_FORBIDDEN_SYSCALL, EXIT_GUEST_FAULT, EXIT_INTERNAL_ERROR, EXIT_POWER_OFF, EXIT_REBOOT,
    EXIT_STOPPED,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    PowerOff,
    Reboot,
    /// Where the vCPU was (its registers, for whoever looks into it).
    TripleFault(String),
    GuestFault(String),
    Stopped,
    Internal(String),
}

impl ExitReason {
    pub fn code(&self) -> i32 {
        match self {
            ExitReason::PowerOff => EXIT_POWER_OFF,
            ExitReason::Reboot => EXIT_REBOOT,
            ExitReason::TripleFault(_) | ExitReason::GuestFault(_) => EXIT_GUEST_FAULT,
            ExitReason::Stopped => EXIT_STOPPED,
            ExitReason::Internal(_) => EXIT_INTERNAL_ERROR,
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::PowerOff => f.write_str("the guest powered off"),
            ExitReason::Reboot => f.write_str("the guest rebooted"),
            ExitReason::TripleFault(at) => {
                write!(f, "guest fault: triple fault (the guest's CPU reset itself) at {at}")
            }
            ExitReason::GuestFault(s) => write!(f, "guest fault: {s}"),
            ExitReason::Stopped => f.write_str("stopped from outside"),
            ExitReason::Internal(s) => write!(f, "internal error: {s}"),
        }
    }
}

/// Where devices and vCPUs report that the VM must stop. The first report
/// wins; the event fd wakes the event loop.
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    pub evt: EventFd,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self { reason: Mutex::new(None), evt: EventFd::new(libc::EFD_NONBLOCK)? })
    }

    pub fn request(&self, reason: ExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            tracing::info!("VM stopping: {reason}");
            *r = Some(reason);
        }
        let _ = self.evt.write(1);
    }

    pub fn reason(&self) -> Option<ExitReason> {
        self.reason.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_codes_are_distinct() {
        let s = ExitSignal::new().unwrap();
        assert_eq!(s.reason(), None);
        s.request(ExitReason::Reboot);
        s.request(ExitReason::PowerOff);
        assert_eq!(s.reason(), Some(ExitReason::Reboot));
        let codes = [
            ExitReason::PowerOff.code(),
            EXIT_INTERNAL_ERROR,
            EXIT_BAD_CONFIG,
            ExitReason::Reboot.code(),
            ExitReason::TripleFault(String::new()).code(),
            ExitReason::Stopped.code(),
            EXIT_FORBIDDEN_SYSCALL,
        ];
        let unique: std::collections::BTreeSet<_> = codes.iter().collect();
        assert_eq!(unique.len(), codes.len());
    }
}
