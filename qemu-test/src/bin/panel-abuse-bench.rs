//! kvmos-webadmin under abuse, on this host (release binary, as its own
//! user, loopback only, bounded in count and time):
//!
//! - oha sends authenticated `GET /api/v1/vms` (10 VMs) at a fixed rate for
//!   the whole run (1000 req/s for 60 s by default);
//! - meanwhile, 10,000 failed logins come from 1,000 loopback source
//!   addresses (127.3.x.y), 10 each over a kept-alive connection;
//! - and 500 connections are opened from 127.4.x.y and never send a byte
//!   (idle, half-open as far as HTTP goes).
//!
//! Afterwards: does the panel answer, how much memory does it hold (idle,
//! peak, after), how big is the audit log, how many idle connections did
//! it close. Figures for BENCHMARKS.md.
//!
//! Usage: `cargo run --release -p kvmos-qemu-test --bin panel-abuse-bench -- [RATE] [SECONDS]`
//! (needs oha: `cargo install oha --locked`; `PANEL_BENCH_PIN=1` pins the
//! panel to CPU 0 and oha to CPU 1)

use anyhow::{Context, Result};
use kvmos_qemu_test::abuse::{closed, failed_logins, file_kib, idle_connections};
use kvmos_qemu_test::load::{bench_panel, rss_kib, Rate};
use std::process::Command;
use std::time::{Duration, Instant};

const LOGIN_SOURCES: u32 = 1000;
const LOGINS_PER_SOURCE: u32 = 10;
const IDLE_CONNECTIONS: u32 = 500;

fn main() -> Result<()> {
    let rate: u32 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let secs: u32 = std::env::args().nth(2).map(|s| s.parse()).transpose()?.unwrap_or(60);
    let (host, panel, secret) = bench_panel("panel-abuse-bench")?;
    let pid = host.pid().context("panel pid")?;
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss = rss_kib(pid);
    let pin = std::env::var("PANEL_BENCH_PIN").is_ok_and(|v| v == "1");
    if pin {
        Command::new("taskset").args(["-a", "-p", "-c", "0", &pid.to_string()]).status()?;
    }

    let idle = idle_connections(host.port, IDLE_CONNECTIONS);
    let opened = idle.len();
    let started = Instant::now();
    let port = host.port;
    let over = Duration::from_secs(u64::from(secs));
    let logins = std::thread::spawn(move || failed_logins(port, LOGIN_SOURCES, LOGINS_PER_SOURCE, over, 1));
    let url = format!("https://127.0.0.1:{}/api/v1/vms", host.port);
    let load = Rate { url: &url, token: &secret, per_second: rate, seconds: secs, connections: 50, pin }.run(pid)?;
    let logins = logins.join().map_err(|_| anyhow::anyhow!("the login thread panicked"))?;
    let took = started.elapsed();

    let closed = closed(&idle);
    let health = panel.call("GET", "/api/v1/health", None).map(|(status, _)| status).unwrap_or(0);
    std::thread::sleep(Duration::from_secs(2));
    let after_rss = rss_kib(pid);
    let audit = host.dir.join("data/panel/audit.log");

    println!("kvmos-webadmin under abuse for {:.0} s (release, its own user, loopback):", took.as_secs_f64());
    println!(
        "  GET /api/v1/vms at {rate} req/s, 50 connections (oha): achieved {:.0}/s, 200 OK {}, other statuses {}, errors {}; \
         p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
        load.achieved_per_second, load.ok, load.other_statuses, load.errors, load.p50_ms, load.p90_ms, load.p99_ms, load.max_ms
    );
    println!(
        "  failed logins: {} from {LOGIN_SOURCES} addresses: 401 {}, 429 {}, other {}, connection errors {}",
        LOGIN_SOURCES * LOGINS_PER_SOURCE,
        logins.unauthorized,
        logins.too_many,
        logins.other,
        logins.connection_errors
    );
    println!("  idle connections: {opened} opened, {closed} closed by the panel by the end");
    println!("  afterwards: GET /api/v1/health {health}");
    println!(
        "  panel VmRSS: idle {:.1} MiB, peak {:.1} MiB, after {:.1} MiB",
        idle_rss as f64 / 1024.0,
        load.peak_rss_kib as f64 / 1024.0,
        after_rss as f64 / 1024.0
    );
    println!(
        "  audit log: {} KiB (+ {} KiB rotated; the cap is {} KiB)",
        file_kib(&audit),
        file_kib(&audit.with_extension("log.1")),
        4 << 10
    );
    Ok(())
}
