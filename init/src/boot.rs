//! Boot: the table of contents of what the appliance does at start. Each
//! step is logged by name to the console and the kernel log; a step that
//! fails or panics is reported with what to do, and boot goes on.

use crate::config::{self, Config};
use crate::machine::{write_status, Event, Machine};
use crate::supervisor::Service;
use crate::{clock, console, datadisk, debug, memory, mounts, net, power_button, watchdog};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Instant;

/// A boot step: a name for the logs and what it does.
pub type Step = (&'static str, fn(&mut Machine) -> Result<(), String>);

/// Boot, in order. The order matters: the data disk holds saved settings,
/// so it comes before the settings are applied; the network needs the
/// settings; the panel needs the data disk and announces itself last.
pub const STEPS: &[Step] = &[
    ("mount pseudo file systems", |_| mounts::mount_all()),
    ("show the banner", show_banner),
    ("read the kernel command line", read_cmdline),
    ("check the clock", |_| clock::check().map(|m| console::info(&format!("kvmos-init: {m}")))),
    ("check KVM", check_kvm),
    ("size the free-memory reserve", |_| memory::size_reserve().map(|m| console::info(&format!("kvmos-init: {m}")))),
    ("mount the data disk", mount_data_disk),
    ("apply saved settings", apply_saved_settings),
    ("set the hostname", set_configured_hostname),
    ("start the network", start_network),
    ("start the watchdog", start_watchdog),
    ("watch the power button", watch_power_button),
    ("start kvmos-webadmin", start_webadmin),
    ("enable the debug hooks", enable_debug_hooks),
];

/// The saved host settings, written by the panel.
pub const SAVED_SETTINGS: &str = "/var/lib/kvmos/config/host.json";
pub const WEBADMIN: &str = "/usr/bin/kvmos-webadmin";

pub fn run(m: &mut Machine) {
    console::info(&format!("kvmos-init {}: running as PID 1", crate::VERSION));
    let boot_start = Instant::now();
    for (name, f) in STEPS {
        let start = Instant::now();
        match catch_unwind(AssertUnwindSafe(|| f(m))) {
            Ok(Ok(())) => console::debug(&format!("step `{name}` done in {} ms", start.elapsed().as_millis())),
            Ok(Err(e)) => console::warn(&format!("step `{name}` failed: {e}")),
            Err(_) => console::warn(&format!("step `{name}` panicked; continuing without it")),
        }
    }
    write_status(m);
    console::info(&format!(
        "kvmos-init: boot steps done in {} ms ({:.2} s after kernel start)",
        boot_start.elapsed().as_millis(),
        clock::uptime_secs()
    ));
    console::info(crate::READY_LINE);
}

fn show_banner(_: &mut Machine) -> Result<(), String> {
    let build = std::fs::read_to_string("/usr/share/kvmos/version").unwrap_or_default();
    let commit = build.lines().find_map(|l| l.strip_prefix("commit ")).map(|c| format!(" ({c})")).unwrap_or_default();
    console::banner(&format!("kvmos {}{commit} — KVM hypervisor appliance", crate::VERSION));
    Ok(())
}

fn read_cmdline(m: &mut Machine) -> Result<(), String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("cannot read /proc/cmdline: {e}"))?;
    let (overrides, problems) = config::parse_cmdline(&cmdline);
    for p in &problems {
        console::warn(&p.to_string());
    }
    let mut c = Config::default();
    c.apply(overrides.clone());
    m.config = c;
    m.cmdline = overrides;
    m.status.panel_port = m.config.panel_port;
    Ok(())
}

fn check_kvm(_: &mut Machine) -> Result<(), String> {
    if Path::new("/dev/kvm").exists() {
        console::info("KVM: /dev/kvm is available");
        Ok(())
    } else {
        Err("/dev/kvm is missing: enable VT-x / AMD-V (SVM) in the server's firmware setup; VMs cannot run without it"
            .into())
    }
}

fn mount_data_disk(m: &mut Machine) -> Result<(), String> {
    let disk = datadisk::bring_up(&m.config.data, &|msg| console::info(&format!("kvmos-init: {msg}")));
    let result = match &disk {
        datadisk::DataDisk::Mounted { .. } => {
            console::info(&format!("Data disk: {}", disk.describe()));
            Ok(())
        }
        datadisk::DataDisk::RamOnly { .. } => {
            let line = "!".repeat(72);
            // Loud on purpose, but not a failed step: RAM-only is a mode the
            // appliance runs in, and the panel shows it too.
            console::info(&format!("\n{line}\n!! {}\n{line}", disk.describe()));
            Ok(())
        }
    };
    let _ = std::fs::create_dir_all(datadisk::MOUNT_POINT);
    m.status.data = Some(disk);
    result
}

/// Saved settings, then the command line again on top (it always wins).
fn apply_saved_settings(m: &mut Machine) -> Result<(), String> {
    let Ok(json) = std::fs::read_to_string(SAVED_SETTINGS) else { return Ok(()) };
    let (saved, problems) = config::parse_saved(&json);
    for p in &problems {
        console::warn(&p.to_string());
    }
    let mut c = Config::default();
    c.apply(saved);
    c.apply(m.cmdline.clone());
    m.config = c;
    m.status.panel_port = m.config.panel_port;
    console::info(&format!("kvmos-init: applied saved settings from {SAVED_SETTINGS}"));
    Ok(())
}

pub fn set_hostname(m: &mut Machine, name: &str) {
    match nix::unistd::sethostname(name) {
        Ok(()) => {
            m.status.hostname = name.to_string();
            let _ = std::fs::write("/etc/hostname", format!("{name}\n"));
        }
        Err(e) => console::warn(&format!("cannot set the hostname {name}: {e}")),
    }
}

/// The configured name now; without one, the network thread's MAC-derived
/// name once the uplink is known.
fn set_configured_hostname(m: &mut Machine) -> Result<(), String> {
    let name = m.config.hostname.clone().unwrap_or_else(|| "kvmos".into());
    set_hostname(m, &name);
    Ok(())
}

fn start_network(m: &mut Machine) -> Result<(), String> {
    let cfg = net::NetConfig {
        mode: m.config.net.clone(),
        iface: m.config.iface.clone(),
        hostname: m.config.hostname.clone(),
    };
    let tx = m.events.clone();
    net::spawn(cfg, move |s| {
        let _ = tx.send(Event::Network(s));
    })
    .map_err(|e| format!("cannot start the network thread: {e}"))
}

fn start_watchdog(m: &mut Machine) -> Result<(), String> {
    match watchdog::start()? {
        Some(w) => {
            console::info(&format!("kvmos-init: hardware watchdog armed ({} s timeout)", w.timeout.as_secs()));
            m.watchdog = Some(w);
        }
        None => console::debug("no hardware watchdog"),
    }
    Ok(())
}

fn watch_power_button(m: &mut Machine) -> Result<(), String> {
    let tx = m.events.clone();
    let n = power_button::watch(move || {
        let _ = tx.send(Event::PowerButton);
    })?;
    if n == 0 {
        console::debug("no power button input device");
    }
    Ok(())
}

/// The command line webadmin is started with.
pub fn webadmin_args(m: &Machine) -> Vec<String> {
    let mut args = vec![
        "--data-dir".to_string(),
        datadisk::MOUNT_POINT.to_string(),
        "--listen".to_string(),
        format!("0.0.0.0:{}", m.config.panel_port),
        "--status-file".to_string(),
        crate::status::STATUS_FILE.to_string(),
        // Its own user, never root (it keeps a small launcher for that).
        "--user".to_string(),
        format!("{}:{}", kvmos_contract::panel::UID, kvmos_contract::panel::GID),
    ];
    if m.status.ram_only() {
        args.push("--ram-only".into());
    }
    args
}

fn start_webadmin(m: &mut Machine) -> Result<(), String> {
    if !Path::new(WEBADMIN).exists() {
        return Err(format!("{WEBADMIN} is missing from the image; there is no panel"));
    }
    let mut svc = Service::new("kvmos-webadmin", WEBADMIN, webadmin_args(m));
    if let Some(msg) = svc.tick(Instant::now()) {
        console::info(&format!("kvmos-init: {msg}"));
    }
    m.webadmin = Some(svc);
    Ok(())
}

fn enable_debug_hooks(m: &mut Machine) -> Result<(), String> {
    if !m.config.debug {
        return Ok(());
    }
    let tx = m.events.clone();
    debug::listen(move |cmd| {
        let _ = tx.send(Event::Debug(cmd));
    })
    .map_err(|e| format!("cannot read the console: {e}"))?;
    console::info("kvmos-init: kvmos.debug is set: debug commands are read from the serial console");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(name: &str) -> usize {
        STEPS.iter().position(|(n, _)| *n == name).unwrap_or_else(|| panic!("no step {name}"))
    }

    #[test]
    fn steps_run_in_dependency_order() {
        assert_eq!(position("mount pseudo file systems"), 0, "everything needs /proc, /sys and /dev");
        assert!(
            position("read the kernel command line") < position("mount the data disk"),
            "kvmos.data picks the disk"
        );
        assert!(position("mount the data disk") < position("apply saved settings"), "settings live on the data disk");
        assert!(position("apply saved settings") < position("start the network"));
        assert!(position("mount the data disk") < position("start kvmos-webadmin"), "webadmin is told if RAM-only");
        let names: std::collections::BTreeSet<_> = STEPS.iter().map(|s| s.0).collect();
        assert_eq!(names.len(), STEPS.len(), "step names are unique");
    }
}
