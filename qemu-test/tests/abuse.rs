//! The panel under abuse, on this host: the release kvmos-webadmin as its
//! own user, loopback only, bounded in count and time. Its own test binary,
//! so that nothing else runs beside it.
//!
//! For 60 s, authenticated `GET /api/v1/vms` (10 VMs defined) at 1000 req/s
//! over 50 kept-alive connections; meanwhile 10,000 failed logins from 100
//! source addresses (100 each), and 500 connections, each from its own
//! address, that never send a byte. Every API call must be answered 200;
//! the rate limit must let exactly 5 wrong passwords per address reach the
//! password check and answer the rest with 429; the idle connections must
//! be closed; afterwards the panel answers, its memory is bounded and its
//! audit log within its cap.
//!
//! The latency figures are printed; the benchmark (`panel-abuse-bench`,
//! BENCHMARKS.md) holds them to the 5 ms p99 goal on a quiet machine. Here
//! the bound is one a shared CI machine keeps: p99 under 50 ms, which an
//! API call waiting behind a password check (about 100 ms each) breaks.

use kvmos_qemu_test::abuse::{closed, failed_logins, file_kib, idle_connections};
use kvmos_qemu_test::load::{bench_panel, rss_kib, Rate};
use std::time::Duration;

const SECONDS: u32 = 60;
const RATE: u32 = 1000;
const LOGIN_SOURCES: u32 = 100;
const LOGINS_PER_SOURCE: u32 = 100;
/// `webadmin/src/auth.rs`: LOGIN_ATTEMPTS.
const ATTEMPTS_BEFORE_429: u32 = 5;
const IDLE: u32 = 500;
/// `webadmin/src/audit.rs`: MAX_BYTES.
const AUDIT_CAP_KIB: u64 = 4 << 10;

#[test]
fn the_panel_holds_under_abuse() {
    let (host, panel, secret) = bench_panel("panel-abuse").unwrap();
    let pid = host.pid().expect("the panel's pid");
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss = rss_kib(pid);

    let idle = idle_connections(host.port, IDLE);
    assert_eq!(idle.len(), IDLE as usize, "every idle connection was made");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(closed(&idle), 0, "the panel took every idle connection (none over its cap)");
    let port = host.port;
    let logins =
        std::thread::spawn(move || failed_logins(port, LOGIN_SOURCES, LOGINS_PER_SOURCE, Duration::from_secs(30), 4));
    let url = format!("https://127.0.0.1:{port}/api/v1/vms");
    let load = Rate { url: &url, token: &secret, per_second: RATE, seconds: SECONDS, connections: 50, pin: false }
        .run_here(pid)
        .unwrap();
    let logins = logins.join().unwrap();
    println!(
        "API calls: {:.0}/s, 200 OK {}, other {}, errors {}; p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
        load.achieved_per_second,
        load.ok,
        load.other_statuses,
        load.errors,
        load.p50_ms,
        load.p90_ms,
        load.p99_ms,
        load.max_ms
    );
    println!("failed logins: {logins:?}");

    assert_eq!((load.errors, load.other_statuses), (0, 0), "every API call answered 200: {load:?}");
    assert!(load.achieved_per_second > f64::from(RATE) * 0.9, "the load ran at its rate: {load:?}");
    assert!(load.p99_ms < 50.0, "no API call waits behind the password checks: {load:?}");

    let sources = LOGIN_SOURCES;
    assert_eq!((logins.other, logins.connection_errors), (0, 0), "{logins:?}");
    assert_eq!(logins.unauthorized, sources * ATTEMPTS_BEFORE_429, "5 wrong passwords per address checked: {logins:?}");
    assert_eq!(logins.too_many, sources * (LOGINS_PER_SOURCE - ATTEMPTS_BEFORE_429), "{logins:?}");

    assert_eq!(closed(&idle), IDLE as usize, "the panel closed every idle connection");
    let (status, body) = panel.call("GET", "/api/v1/health", None).unwrap();
    assert_eq!(status, 200, "{body}");
    std::thread::sleep(Duration::from_secs(2));
    let after_rss = rss_kib(pid);
    println!(
        "panel VmRSS: idle {:.1} MiB, peak {:.1} MiB, after {:.1} MiB",
        idle_rss as f64 / 1024.0,
        load.peak_rss_kib as f64 / 1024.0,
        after_rss as f64 / 1024.0
    );
    assert!(after_rss < 64 << 10, "the panel's memory is bounded: {after_rss} KiB");
    let audit = host.dir.join("data/panel/audit.log");
    let (log, rotated) = (file_kib(&audit), file_kib(&audit.with_extension("log.1")));
    println!("audit log: {log} KiB, rotated {rotated} KiB");
    assert!(log > 0 && log <= AUDIT_CAP_KIB && rotated <= AUDIT_CAP_KIB, "the audit log within its cap");
}
