//! Orderly shutdown: the panel powers the VMs off, everything else is asked
//! to stop and then killed, the data disk is synced and unmounted, the
//! watchdog is disarmed, and only then does the machine power off or reboot.
//! Each step is logged with its duration. No data on the data disk is lost.
//!
//! Triggers (all end here): SIGTERM or SIGUSR2 → power off; SIGINT
//! (ctrl-alt-del) or SIGUSR1 → reboot; the ACPI power button → power off.
//! The panel asks by sending SIGTERM or SIGUSR1 to PID 1.

use crate::console;
use crate::datadisk;
use crate::machine::{reap, Machine};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::fmt;
use std::time::{Duration, Instant};

/// kvmos-webadmin gets this long to power the VMs off gracefully (it gives
/// each VM a deadline itself, then stops it hard) and exit.
pub const WEBADMIN_GRACE: Duration = Duration::from_secs(90);
/// Everything else gets this long after SIGTERM before SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(10);

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

type Step = (&'static str, fn(&mut Machine) -> Result<(), String>);

/// The shutdown sequence, in order.
pub const STEPS: &[Step] = &[
    ("stop kvmos-webadmin (it powers off the VMs)", stop_webadmin),
    ("stop all other processes", |_| {
        stop_all_processes();
        Ok(())
    }),
    ("sync and unmount the data disk", |_| datadisk::unmount()),
    ("disarm the watchdog", disarm_watchdog),
];

/// Runs the sequence, then reboot(2); does not return.
pub fn run(m: &mut Machine, action: Action) -> ! {
    let all = Instant::now();
    for (name, f) in STEPS {
        let start = Instant::now();
        let r = f(m);
        let ms = start.elapsed().as_millis();
        match r {
            Ok(()) => console::info(&format!("kvmos-init: shutdown: {name} ({ms} ms)")),
            Err(e) => console::warn(&format!("shutdown: {name} ({ms} ms): {e}")),
        }
    }
    nix::unistd::sync();
    console::info(&format!("kvmos-init: {action} now (shutdown took {} ms)", all.elapsed().as_millis()));
    console::drain();
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

fn stop_webadmin(m: &mut Machine) -> Result<(), String> {
    let Some(w) = m.webadmin.as_mut() else { return Ok(()) };
    w.stop_supervising();
    let Some(pid) = w.pid else { return Ok(()) };
    kill(pid, Signal::SIGTERM).map_err(|e| format!("cannot signal kvmos-webadmin: {e}"))?;
    let deadline = Instant::now() + WEBADMIN_GRACE;
    while Instant::now() < deadline {
        reap(m);
        if m.webadmin.as_ref().and_then(|w| w.pid).is_none() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = kill(pid, Signal::SIGKILL);
    Err(format!("kvmos-webadmin did not stop within {WEBADMIN_GRACE:?}; killed it"))
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

fn disarm_watchdog(m: &mut Machine) -> Result<(), String> {
    match m.watchdog.take() {
        Some(w) => w.disarm(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_stops_vms_before_processes_before_the_disk_before_the_watchdog() {
        let names: Vec<&str> = STEPS.iter().map(|s| s.0).collect();
        let pos = |needle: &str| names.iter().position(|n| n.contains(needle)).unwrap();
        assert_eq!(pos("webadmin"), 0, "VMs are powered off first, while everything they need still runs");
        assert!(pos("all other processes") < pos("data disk"), "nothing may write after the unmount");
        assert_eq!(pos("watchdog"), names.len() - 1, "the watchdog guards the whole sequence");
    }

    #[test]
    fn signals_map_to_actions() {
        use crate::machine::action_for;
        assert_eq!(action_for(Signal::SIGTERM), Some(Action::PowerOff));
        assert_eq!(action_for(Signal::SIGINT), Some(Action::Reboot));
        assert_eq!(action_for(Signal::SIGUSR1), Some(Action::Reboot));
        assert_eq!(action_for(Signal::SIGHUP), None);
    }
}
