//! Orderly shutdown: stop every process, sync, then power off or reboot.

use crate::console;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::fmt;
use std::time::{Duration, Instant};

/// How long processes get to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    PowerOff,
    Reboot,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::PowerOff => "power off",
            Action::Reboot => "reboot",
        })
    }
}

/// The shutdown sequence; does not return.
pub fn run(action: Action) -> ! {
    timed("stop all processes", stop_all_processes);
    timed("sync file systems", nix::unistd::sync);
    console::info(&format!("kvmos-init: {action} now"));
    let how = match action {
        Action::PowerOff => nix::sys::reboot::RebootMode::RB_POWER_OFF,
        Action::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
    };
    let err = nix::sys::reboot::reboot(how);
    console::warn(&format!("reboot(2) failed: {err:?}; halting here"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn timed(name: &str, f: impl FnOnce()) {
    let start = Instant::now();
    f();
    console::info(&format!("kvmos-init: shutdown: {name} ({} ms)", start.elapsed().as_millis()));
}

/// SIGTERM to every process, a bounded wait, then SIGKILL to what is left.
fn stop_all_processes() {
    // pid -1: every process but PID 1 itself.
    if kill(Pid::from_raw(-1), Signal::SIGTERM).is_err() {
        return; // ESRCH: there is nothing to stop
    }
    let deadline = Instant::now() + TERM_GRACE;
    while Instant::now() < deadline {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Err(_) => return, // ECHILD: all gone
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(50)),
            Ok(_) => {}
        }
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    while waitpid(Pid::from_raw(-1), None).is_ok() {}
}
