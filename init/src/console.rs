//! Messages to the admin: every active console (the serial port and the
//! physical monitor both, whichever the admin is looking at) and the kernel
//! log (`dmesg`).
//!
//! `/dev/console` is only the last `console=` of the command line, so
//! writing there alone would leave a monitor blank on a server whose serial
//! port is the primary console. The kernel lists all of them in
//! /sys/class/tty/console/active.

use std::fs::OpenOptions;
use std::io::Write;

/// Writes a line to each active console.
fn to_consoles(line: &str) {
    let active = std::fs::read_to_string("/sys/class/tty/console/active").unwrap_or_default();
    let mut wrote = false;
    for name in active.split_whitespace() {
        if let Ok(mut f) = OpenOptions::new().write(true).open(format!("/dev/{name}")) {
            wrote |= f.write_all(line.as_bytes()).is_ok();
        }
    }
    if !wrote {
        let _ = std::io::stdout().write_all(line.as_bytes());
    }
}

/// Records a line in the kernel log at the given syslog level. Level 7
/// (debug) keeps it out of the consoles, where `to_consoles` already put it.
fn to_kmsg(level: u8, msg: &str) {
    if let Ok(mut f) = OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = f.write_all(format!("<{level}>kvmos-init: {msg}\n").as_bytes());
    }
}

pub fn info(msg: &str) {
    to_consoles(&format!("{msg}\n"));
    to_kmsg(7, msg);
}

pub fn warn(msg: &str) {
    to_consoles(&format!("kvmos-init: WARNING: {msg}\n"));
    // Debug level like the rest: a warning level would make the kernel print
    // it on the consoles a second time.
    to_kmsg(7, &format!("WARNING: {msg}"));
}

/// Waits (up to a second) until every active console has sent what was
/// written to it. The kernel's own messages go straight to the UART and
/// would otherwise cut into a line still in the tty's buffer, as the last
/// line before a reboot is.
pub fn drain() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let active = std::fs::read_to_string("/sys/class/tty/console/active").unwrap_or_default();
        for name in active.split_whitespace() {
            if let Ok(f) = OpenOptions::new().write(true).open(format!("/dev/{name}")) {
                let _ = nix::sys::termios::tcdrain(&f);
            }
        }
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(std::time::Duration::from_secs(1));
}

/// Only in the kernel log.
pub fn debug(msg: &str) {
    to_kmsg(7, msg);
}

pub fn banner(title: &str) {
    let rule = "=".repeat(title.chars().count() + 4);
    to_consoles(&format!("\n{rule}\n  {title}\n{rule}\n"));
    to_kmsg(7, title);
}
