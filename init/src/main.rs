//! kvmos-init is PID 1 of the kvmos appliance: the first and only program the
//! kernel starts. It brings the machine up as a table of named steps
//! ([`boot::STEPS`]), then runs the event loop in [`machine`]: reap every
//! child, keep kvmos-webadmin running, show the console screen, and turn the
//! shutdown triggers into the orderly sequence of [`shutdown`]. It never
//! exits and never panics out: a failing step is reported and boot goes on,
//! because a PID 1 that dies takes the whole server with it.
//!
//! Modules, in boot order: [`mounts`], [`config`] (the `kvmos.*` command
//! line and saved settings), [`clock`], [`datadisk`], [`net`] (netlink, the
//! bridge, the DHCP client), [`watchdog`], [`power_button`], [`supervisor`],
//! [`status`] (the console screen and /run/kvmos/status.json), [`debug`]
//! (test hooks behind `kvmos.debug`), and [`console`] for all output.

mod boot;
mod clock;
mod config;
mod console;
mod datadisk;
mod debug;
mod machine;
mod memory;
mod mounts;
mod net;
mod power_button;
mod shutdown;
mod status;
mod supervisor;
mod watchdog;

/// The version of this build, shown in the banner and the console screen.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Printed when boot is complete; tests and tools wait for this line.
pub const READY_LINE: &str = "kvmos-init: ready";

fn main() {
    if std::process::id() != 1 {
        // The same binary serves the debug hooks' helper processes.
        if let Some(code) = std::env::args().nth(1).and_then(|m| debug::run_helper(&m)) {
            std::process::exit(code);
        }
        eprintln!(
            "kvmos-init is the appliance's PID 1 (/init in its initramfs); it does not run as an ordinary program"
        );
        std::process::exit(2);
    }
    machine::run()
}
