//! kvmos-webadmin under load: the latency of `GET /api/v1/vms` at a fixed
//! request rate, measured by oha from a second process over loopback
//! HTTPS, and the panel's resident memory idle and under that load.
//!
//! The panel runs on this host (release binary) with 10 VM definitions and
//! an API token; oha keeps 50 connections and a fixed rate.
//!
//! Usage: `cargo run -p kvmos-qemu-test --bin panel-bench -- [RATE] [SECONDS]`
//! (`PANEL_BENCH_PIN=1` pins the panel to CPU 0 and oha to CPU 1)
//! (needs oha: `cargo install oha --locked`)

use anyhow::{bail, Context, Result};
use kvmos_qemu_test::panel::{HostPanel, Panel};
use std::process::Command;
use std::time::Duration;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse().ok()))
        .unwrap_or(0)
}

fn main() -> Result<()> {
    let rate: u32 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let secs: u32 = std::env::args().nth(2).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let host = HostPanel::start("panel-bench")?;
    let pid = host.pid().context("panel pid")?;
    let mut panel = Panel::new(host.port);
    panel.setup(&host.setup_code()?, "benchmark password")?;
    for i in 0..10 {
        panel.ok(
            "POST",
            "/api/v1/vms",
            Some(serde_json::json!({"name": format!("vm{i}"), "vcpus": 1, "memory_mib": 64,
                                    "boot": {"type": "guest", "guest": "tiny"}})),
        )?;
    }
    let token = panel.ok("POST", "/api/v1/tokens", Some(serde_json::json!({"name": "bench"})))?;
    let secret = token["secret"].as_str().context("token")?.to_string();
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss_kib(pid);

    let url = format!("https://127.0.0.1:{}/api/v1/vms", host.port);
    // The panel on CPU 0, oha on CPU 1: neither steals the other's core.
    let pin = std::env::var("PANEL_BENCH_PIN").is_ok_and(|v| v == "1");
    if pin {
        Command::new("taskset").args(["-a", "-p", "-c", "0", &pid.to_string()]).status()?;
    }
    let mut oha = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "1", "oha"]);
        c
    } else {
        Command::new("oha")
    };
    let mut oha = oha
        .args(["--no-tui", "--insecure", "--output-format", "json", "-c", "50"])
        .args(["-q", &rate.to_string(), "-z", &format!("{secs}s")])
        .args(["-H", &format!("Authorization: Bearer {secret}")])
        .arg(&url)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot run oha (cargo install oha --locked)")?;
    let mut peak = 0;
    while oha.try_wait()?.is_none() {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = oha.wait_with_output()?;
    if !out.status.success() {
        bail!("oha failed: {}", String::from_utf8_lossy(&out.stdout));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let ms = |k: &str| v["latencyPercentiles"][k].as_f64().unwrap_or(f64::NAN) * 1000.0;
    let ok = v["statusCodeDistribution"]["200"].as_u64().unwrap_or(0);
    println!(
        "GET /api/v1/vms (10 VMs, bearer token) at {rate} req/s for {secs} s, 50 connections, oha over loopback HTTPS"
    );
    println!(
        "  requests/s achieved {:.0}; 200 OK {ok}; p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        v["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        ms("p50"),
        ms("p90"),
        ms("p99"),
        v["summary"]["slowest"].as_f64().unwrap_or(f64::NAN) * 1000.0
    );
    println!("  panel VmRSS: idle {:.1} MiB, peak under load {:.1} MiB", idle as f64 / 1024.0, peak as f64 / 1024.0);
    Ok(())
}
