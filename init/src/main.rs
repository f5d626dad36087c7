//! kvmos-init is PID 1 of the kvmos appliance: the first and only program the
//! kernel starts. It brings the machine up as a sequence of named steps
//! ([`boot`]), then spends its life reaping children and waiting for a
//! shutdown signal ([`run_forever`]). It never exits and never panics out: a
//! failing step is reported and boot goes on, because a PID 1 that dies takes
//! the whole server with it.
//!
//! Modules: [`console`] writes to every console the admin may be looking at
//! and to the kernel log; [`mounts`] mounts the pseudo file systems;
//! [`shutdown`] stops everything in order and powers off or reboots.

mod console;
mod mounts;
mod shutdown;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use shutdown::Action;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Duration;

/// The version of this build, shown in the banner.
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Printed when boot is complete; tests and tools wait for this line.
pub const READY_LINE: &str = "kvmos-init: ready";
/// The version file the image builder writes into the initramfs.
const VERSION_FILE: &str = "/usr/share/kvmos/version";

fn main() {
    if std::process::id() != 1 {
        eprintln!(
            "kvmos-init is the appliance's PID 1 (/init in its initramfs); it does not run as an ordinary program"
        );
        std::process::exit(2);
    }
    // Signals are taken synchronously in `run_forever`; block them first so
    // none is lost or acted on by the default disposition during boot.
    let signals = handled_signals();
    if let Err(e) = signals.thread_block() {
        console::warn(&format!("cannot block signals: {e}"));
    }
    boot();
    run_forever(&signals);
}

/// Boot, as a table of contents of what the appliance does at start.
fn boot() {
    console::info(&format!("kvmos-init {VERSION}: running as PID 1"));
    step("mount pseudo file systems", mounts::mount_all);
    step("show the banner", show_banner);
    step("check KVM", check_kvm);
    console::info(READY_LINE);
}

/// Runs one boot step, catching errors and panics: the step is reported by
/// name and boot continues in whatever degraded mode is left.
fn step(name: &str, f: impl FnOnce() -> Result<(), String>) {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => console::debug(&format!("step `{name}` done")),
        Ok(Err(e)) => console::warn(&format!("step `{name}` failed: {e}")),
        Err(_) => console::warn(&format!("step `{name}` panicked; continuing without it")),
    }
}

fn show_banner() -> Result<(), String> {
    let build = std::fs::read_to_string(VERSION_FILE).unwrap_or_default();
    let commit = build.lines().find_map(|l| l.strip_prefix("commit ")).map(|c| format!(" ({c})")).unwrap_or_default();
    console::banner(&format!("kvmos {VERSION}{commit} — KVM hypervisor appliance"));
    Ok(())
}

fn check_kvm() -> Result<(), String> {
    if Path::new("/dev/kvm").exists() {
        console::info("KVM: /dev/kvm is available");
        Ok(())
    } else {
        Err("/dev/kvm is missing: enable VT-x / AMD-V (SVM) in the server's firmware setup; VMs cannot run without it"
            .into())
    }
}

fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGHUP] {
        set.add(s);
    }
    set
}

/// PID 1's main loop: reap every child (orphans are reparented to us), and
/// turn shutdown signals into an orderly stop. Never returns.
fn run_forever(signals: &SigSet) -> ! {
    // With ctrl-alt-del off, the kernel sends SIGINT here instead of
    // rebooting on the spot, so data is synced first.
    if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
        console::warn(&format!("cannot route ctrl-alt-del to init: {e}"));
    }
    loop {
        reap_children();
        let sig = match signals.wait() {
            Ok(s) => s,
            Err(e) => {
                console::warn(&format!("waiting for signals failed: {e}"));
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let action = match sig {
            Signal::SIGTERM | Signal::SIGUSR2 => Some(Action::PowerOff),
            Signal::SIGINT | Signal::SIGUSR1 => Some(Action::Reboot),
            _ => None,
        };
        if let Some(action) = action {
            console::info(&format!("received {sig}: {action}"));
            shutdown::run(action);
        }
    }
}

/// Collects the exit status of every child that has exited.
fn reap_children() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(status) => console::debug(&format!("reaped {status:?}")),
        }
    }
}
