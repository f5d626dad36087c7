//! Load on the panel: authenticated API calls at a fixed rate over
//! loopback HTTPS, sent by oha (a second process, for the benchmarks) or
//! by threads in this process (for the abuse test, which needs nothing
//! installed), and the panel's resident memory while it runs.

use crate::panel::{HostPanel, Panel};
use anyhow::{bail, Context, Result};
use std::process::Command;
use std::time::Duration;

/// A process's resident memory, in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse().ok()))
        .unwrap_or(0)
}

/// A fixed rate of authenticated `GET url`s, `per_second` for `seconds`
/// over `connections` connections: run by oha ([`Rate::run`]) or by
/// threads in this process ([`Rate::run_here`]).
pub struct Rate<'a> {
    pub url: &'a str,
    pub token: &'a str,
    pub per_second: u32,
    pub seconds: u32,
    pub connections: u32,
    /// Pin oha to CPU 1 (and leave CPU 0 to the panel).
    pub pin: bool,
}

/// What the load saw, and the panel's peak memory meanwhile.
#[derive(Debug, Clone)]
pub struct Figures {
    pub achieved_per_second: f64,
    pub ok: u64,
    pub other_statuses: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub peak_rss_kib: u64,
}

impl Rate<'_> {
    /// Runs oha (`cargo install oha --locked`) to the end, sampling the
    /// memory of `panel_pid` every 200 ms.
    pub fn run(&self, panel_pid: u32) -> Result<Figures> {
        let mut oha = if self.pin {
            let mut c = Command::new("taskset");
            c.args(["-c", "1", "oha"]);
            c
        } else {
            Command::new("oha")
        };
        let mut oha = oha
            .args(["--no-tui", "--insecure", "--output-format", "json", "-c", &self.connections.to_string()])
            .args(["-q", &self.per_second.to_string(), "-z", &format!("{}s", self.seconds)])
            .args(["-H", &format!("Authorization: Bearer {}", self.token)])
            .arg(self.url)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("cannot run oha (cargo install oha --locked)")?;
        let mut peak = 0;
        while oha.try_wait()?.is_none() {
            peak = peak.max(rss_kib(panel_pid));
            std::thread::sleep(Duration::from_millis(200));
        }
        let out = oha.wait_with_output()?;
        if !out.status.success() {
            bail!("oha failed: {}", String::from_utf8_lossy(&out.stdout));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let ms = |k: &str| v["latencyPercentiles"][k].as_f64().unwrap_or(f64::NAN) * 1000.0;
        let statuses = v["statusCodeDistribution"].as_object().cloned().unwrap_or_default();
        let ok = statuses.get("200").and_then(|n| n.as_u64()).unwrap_or(0);
        let all: u64 = statuses.values().filter_map(|n| n.as_u64()).sum();
        let errors: u64 = v["errorDistribution"].as_object().map_or(0, |e| e.values().filter_map(|n| n.as_u64()).sum());
        Ok(Figures {
            achieved_per_second: v["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
            ok,
            other_statuses: all - ok,
            errors,
            p50_ms: ms("p50"),
            p90_ms: ms("p90"),
            p99_ms: ms("p99"),
            max_ms: v["summary"]["slowest"].as_f64().unwrap_or(f64::NAN) * 1000.0,
            peak_rss_kib: peak,
        })
    }
}

/// A panel on this host as the load benchmarks use it: set up, 10 VM
/// definitions, an API token; the panel, a logged-in client and the token.
pub fn bench_panel(name: &str) -> Result<(HostPanel, Panel, String)> {
    let host = HostPanel::start(name)?;
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
    let secret = token["secret"].as_str().context("the token's secret")?.to_string();
    Ok((host, panel, secret))
}

/// One thread's requests: latencies of the 200s, other statuses, errors.
#[derive(Default)]
struct Sent {
    ok: Vec<Duration>,
    other_statuses: u64,
    errors: u64,
}

impl Rate<'_> {
    /// The same load from threads in this process instead of oha (`pin`
    /// does not apply): one thread per connection, each over its own
    /// kept-alive HTTPS connection and on a fixed schedule. A request's
    /// latency runs from the time the schedule gave it to the end of its
    /// answer, so one held back by a slow answer before it counts that
    /// wait too (measuring from the send would hide every stall behind
    /// the one request that caused it). It also counts how late this
    /// process's own thread woke for the send, which on a busy machine
    /// can be a millisecond or more.
    pub fn run_here(&self, panel_pid: u32) -> Result<Figures> {
        let interval = Duration::from_secs_f64(f64::from(self.connections) / f64::from(self.per_second));
        let start = std::time::Instant::now() + Duration::from_millis(100);
        let end = start + Duration::from_secs(u64::from(self.seconds));
        let threads: Vec<_> = (0..self.connections)
            .map(|i| {
                let (url, auth) = (self.url.to_string(), format!("Bearer {}", self.token));
                // Spread the threads' schedules over one interval.
                let first = start + interval * i / self.connections;
                std::thread::spawn(move || {
                    let agent = crate::panel::agent(Duration::from_secs(10));
                    let mut sent = Sent::default();
                    let mut at = first;
                    while at < end {
                        if let Some(wait) = at.checked_duration_since(std::time::Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        let answer = agent.get(&url).header("Authorization", &auth).call().and_then(|mut r| {
                            let status = r.status().as_u16();
                            r.body_mut().read_to_vec().map(|_| status)
                        });
                        match answer {
                            Ok(200) => sent.ok.push(at.elapsed()),
                            Ok(_) => sent.other_statuses += 1,
                            Err(_) => sent.errors += 1,
                        }
                        at += interval;
                    }
                    sent
                })
            })
            .collect();
        let mut peak = 0;
        while !threads.iter().all(|t| t.is_finished()) {
            peak = peak.max(rss_kib(panel_pid));
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut all = Sent::default();
        for t in threads {
            let s = t.join().map_err(|_| anyhow::anyhow!("a load thread panicked"))?;
            all.ok.extend(s.ok);
            all.other_statuses += s.other_statuses;
            all.errors += s.errors;
        }
        let took = start.elapsed().as_secs_f64();
        all.ok.sort();
        let ms = |q: f64| {
            let i = ((all.ok.len() as f64 * q).ceil() as usize).saturating_sub(1);
            all.ok.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
        };
        let answered = all.ok.len() as u64 + all.other_statuses;
        Ok(Figures {
            achieved_per_second: answered as f64 / took,
            ok: all.ok.len() as u64,
            other_statuses: all.other_statuses,
            errors: all.errors,
            p50_ms: ms(0.50),
            p90_ms: ms(0.90),
            p99_ms: ms(0.99),
            max_ms: ms(1.0),
            peak_rss_kib: peak,
        })
    }
}
