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

use anyhow::{Context, Result};
use kvmos_qemu_test::load::{bench_panel, rss_kib, Rate};
use std::process::Command;
use std::time::Duration;

fn main() -> Result<()> {
    let rate: u32 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let secs: u32 = std::env::args().nth(2).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let (host, _panel, secret) = bench_panel("panel-bench")?;
    let pid = host.pid().context("panel pid")?;
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss_kib(pid);

    let url = format!("https://127.0.0.1:{}/api/v1/vms", host.port);
    // The panel on CPU 0, oha on CPU 1: neither steals the other's core.
    let pin = std::env::var("PANEL_BENCH_PIN").is_ok_and(|v| v == "1");
    if pin {
        Command::new("taskset").args(["-a", "-p", "-c", "0", &pid.to_string()]).status()?;
    }
    let f = Rate { url: &url, token: &secret, per_second: rate, seconds: secs, connections: 50, pin }.run(pid)?;
    println!(
        "GET /api/v1/vms (10 VMs, bearer token) at {rate} req/s for {secs} s, 50 connections, oha over loopback HTTPS"
    );
    println!(
        "  requests/s achieved {:.0}; 200 OK {}; p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        f.achieved_per_second, f.ok, f.p50_ms, f.p90_ms, f.p99_ms, f.max_ms
    );
    println!(
        "  panel VmRSS: idle {:.1} MiB, peak under load {:.1} MiB",
        idle as f64 / 1024.0,
        f.peak_rss_kib as f64 / 1024.0
    );
    Ok(())
}
