//! The KVM switch at scale: a panel on this host with 16 VMMs on its
//! /dev/kvm, each booting SeaBIOS and the switch guest
//! (`tiny_guest::switch_disk`), and the Switch page open in headless
//! Chromium (4×4 grid). It measures, over windows of `SECS` seconds each:
//!
//! - idle: all screens still; the host CPU of the 16 VMMs and the panel
//!   (/proc/PID/stat; the VMMs' VNC threads from the scheduler's
//!   nanosecond counts in /proc/PID/task/*/schedstat) and the bytes the panel sends to the browser
//!   (its TCP connections' `bytes_sent`, from `ss -ti`);
//! - one unfocused tile changing: F12 starts the guest's counter (18.2
//!   changes a second) on a tile without the focus;
//! - the same screen changing with the focus (full-size noVNC view);
//! - the time from a hotkey press (Ctrl+Alt+N, then a key, in one
//!   WebDriver action) to the key's echo on the newly focused VM's serial
//!   console, beside the same key without a switch.
//!
//! `cargo run --release -p kvmos-qemu-test --bin switch-bench -- [SECS] [ROUNDS]`

use anyhow::{bail, Context, Result};
use kvmos_qemu_test::browser::Browser;
use kvmos_qemu_test::panel::{HostPanel, Panel};
use kvmos_qemu_test::stats::median;
use kvmos_qemu_test::timed::TimedOutput;
use kvmos_vmm::tiny_guest;
use serde_json::json;
use std::time::{Duration, Instant};

const VMS: usize = 16;
const PASSWORD: &str = "switch bench password";
const CTRL: char = '\u{e009}';
const ALT: char = '\u{e00a}';

/// Bytes the panel has sent on its established connections (port `port`).
fn bytes_sent(port: u16) -> Result<u64> {
    let out = std::process::Command::new("ss")
        .args(["-tinH", "state", "established", &format!("( sport = :{port} )")])
        .output()
        .context("ss (iproute2)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("bytes_sent:"))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum())
}

/// CPU time (ms, from the scheduler's nanosecond counts) of the threads
/// of `pid` that `which` picks by name.
fn threads_ms(pid: u32, which: impl Fn(&str) -> bool) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0.0 };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| which(c.trim())))
        .filter_map(|t| {
            std::fs::read_to_string(t.path().join("schedstat")).ok()?.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum::<u64>() as f64
        / 1e6
}

/// A process's CPU time in ms (/proc/PID/stat: threads that ended count
/// too; clock ticks of 10 ms, so windows must be long).
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat.rsplit_once(')').map(|r| r.1).unwrap_or("").split_whitespace().collect();
    let ticks: u64 =
        f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0u64) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0u64);
    // SAFETY: sysconf has no preconditions.
    ticks as f64 * 1000.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// The VMM threads that serve the screens.
fn vnc_ms(pid: u32) -> f64 {
    threads_ms(pid, |name| name == "vnc")
}

struct Window {
    cpu_ms_per_s: f64,
    /// Of which the panel's (the last pid).
    panel_ms_per_s: f64,
    /// Of which the VMMs' VNC threads'.
    vnc_ms_per_s: f64,
    bytes_per_s: f64,
}

fn measure(pids: &[u32], port: u16, secs: u64) -> Result<Window> {
    let cpu = || pids.iter().map(|&p| cpu_ms(p)).sum::<f64>();
    let panel = || pids.last().map(|&p| cpu_ms(p)).unwrap_or(0.0);
    let vnc = || pids.iter().map(|&p| vnc_ms(p)).sum::<f64>();
    let (c0, p0, v0, b0, t0) = (cpu(), panel(), vnc(), bytes_sent(port)?, Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let (c1, p1, v1, b1, dt) = (cpu(), panel(), vnc(), bytes_sent(port)?, t0.elapsed().as_secs_f64());
    Ok(Window {
        cpu_ms_per_s: (c1 - c0) / dt,
        panel_ms_per_s: (p1 - p0) / dt,
        vnc_ms_per_s: (v1 - v0) / dt,
        bytes_per_s: b1.saturating_sub(b0) as f64 / dt,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let secs: u64 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let rounds: usize = std::env::args().nth(2).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let host = tokio::task::spawn_blocking(|| HostPanel::start("switch-bench")).await??;
    let port = host.port;
    let code = host.setup_code()?;
    let ids = tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
        let mut panel = Panel::new(port);
        panel.setup(&code, PASSWORD)?;
        panel.ok(
            "PUT",
            "/api/v1/switch/settings",
            Some(json!({"layout": "4x4", "modifiers": "ctrl+alt", "double_tap": "scrolllock", "roaming": false})),
        )?;
        let mut ids = Vec::new();
        for i in 1..=VMS {
            panel.upload(&format!("b{i:02}.img"), "disk", tiny_guest::switch_disk(&format!("vm-{i:02}"), false))?;
            let vm = panel.ok(
                "POST",
                "/api/v1/vms",
                Some(json!({"name": format!("b{i:02}"), "vcpus": 1, "memory_mib": 16,
                    "boot": {"type": "firmware", "firmware": "bios"}, "disks": [{"image": format!("b{i:02}.img")}]})),
            )?;
            let id = vm["id"].as_str().context("id")?.to_string();
            panel.action(&id, "start")?;
            ids.push(id);
        }
        Ok(ids)
    })
    .await??;
    let serials: Vec<TimedOutput> = ids
        .iter()
        .map(|id| TimedOutput::attach(&host.dir.join("run").join(id).join("console.sock")))
        .collect::<Result<_>>()?;
    for (i, s) in serials.iter().enumerate() {
        s.when(0, &format!("READY vm-{:02}", i + 1), Duration::from_secs(300))?;
    }
    // The jailed children run the VMs (their parents only wait).
    let mut pids: Vec<u32> =
        host.vmm_pids().into_iter().map(|p| kvmos_vmm::jail::jailed_child(p as u32).unwrap_or(p as u32)).collect();
    if pids.len() != VMS {
        bail!("{} VMMs running, not {VMS}", pids.len());
    }
    pids.push(host.pid().context("the panel's pid")?);

    // The VMs alone, before the page opens: their guests' timer ticks.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let alone = measure(&pids, port, secs)?;

    let shots = host.dir.join("screenshots");
    std::fs::create_dir_all(&shots)?;
    let b = Browser::logged_in(&shots, port, PASSWORD).await?;
    b.client.goto(&format!("https://127.0.0.1:{port}/#/switch")).await?;
    b.wait_js(
        "16 live tiles",
        "document.querySelectorAll('.tile[data-stream=live]').length === 15",
        Duration::from_secs(120),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    b.screenshot("grid").await?;

    println!("switch-bench: {VMS} VMMs (SeaBIOS + switch guest) and the panel on this host, the Switch page in headless Chromium (4x4), {secs} s windows");
    let row = |what: &str, w: &Window| {
        let screens = w.panel_ms_per_s + w.vnc_ms_per_s;
        println!(
            "{what:27} panel + VNC threads {screens:6.2} ms CPU/s (panel {:5.2}, VNC {:5.2}); all VMM threads {:7.2} ms/s; {:7.1} B/s to the browser",
            w.panel_ms_per_s, w.vnc_ms_per_s, w.cpu_ms_per_s - w.panel_ms_per_s, w.bytes_per_s
        );
        screens
    };
    row("no page open:", &alone);
    let idle = measure(&pids, port, secs)?;
    let idle_cpu = row("page open, screens idle:", &idle);

    // One unfocused tile changes: tile 5's counter, started with F12
    // through the REST API (the focus stays on tile 1).
    let changing = 4;
    let mut api = Panel::new(port);
    let id = ids[changing].clone();
    let api = tokio::task::spawn_blocking(move || -> Result<Panel> {
        api.login(PASSWORD)?;
        api.ok("POST", "/api/v1/screens/keys", Some(json!({"vms": [id], "keys": ["f12"]})))?;
        Ok(api)
    })
    .await??;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let unfocused = measure(&pids, port, secs)?;
    let unfocused_cpu = row("one unfocused tile moving:", &unfocused);
    b.chord(&[CTRL, ALT, char::from(b'1' + changing as u8)]).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let focused = measure(&pids, port, secs)?;
    let focused_cpu = row("the same tile focused:", &focused);
    let ratio = |u: f64, f: f64| if f > 0.0 { u / f } else { f64::NAN };
    println!(
        "a moving tile above idle, unfocused / focused: CPU {:.3} ({:.2} / {:.2} ms/s), bytes {:.3} ({:.1} / {:.1} B/s)",
        ratio(unfocused_cpu - idle_cpu, focused_cpu - idle_cpu),
        unfocused_cpu - idle_cpu,
        focused_cpu - idle_cpu,
        ratio(unfocused.bytes_per_s - idle.bytes_per_s, focused.bytes_per_s - idle.bytes_per_s),
        unfocused.bytes_per_s - idle.bytes_per_s,
        focused.bytes_per_s - idle.bytes_per_s
    );
    let id = ids[changing].clone();
    tokio::task::spawn_blocking(move || {
        api.ok("POST", "/api/v1/screens/keys", Some(json!({"vms": [id], "keys": ["f12"]})))
    })
    .await??;

    // Hotkey → the first key on the newly focused VM, against the same key
    // with no switch. Tiles 1..9 in turn; 'a' is echoed as K1E.
    let (mut switched, mut direct) = (Vec::new(), Vec::new());
    let mut at = changing;
    for r in 0..rounds {
        let next = (at + 1 + r % 3) % 9;
        let from = serials[next].len();
        let t0 = Instant::now();
        b.chord(&[CTRL, ALT, char::from(b'1' + next as u8)]).await?;
        b.chord(&['a']).await?;
        switched.push(
            serials[next].when(from, "K1E\n", Duration::from_secs(10))?.duration_since(t0).as_secs_f64() * 1000.0,
        );
        let from = serials[next].len();
        let t0 = Instant::now();
        b.chord(&['a']).await?;
        direct.push(
            serials[next].when(from, "K1E\n", Duration::from_secs(10))?.duration_since(t0).as_secs_f64() * 1000.0,
        );
        at = next;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!(
        "hotkey + key → echo on the new VM: median {:.1} ms (min {:.1}, max {:.1}) of {rounds}; the key alone: median {:.1} ms",
        median(&switched),
        switched.iter().cloned().fold(f64::INFINITY, f64::min),
        switched.iter().cloned().fold(0.0, f64::max),
        median(&direct)
    );
    b.close().await?;
    drop(host);
    Ok(())
}
