//! kvmos-vmm figures on this host's /dev/kvm, with the hand-assembled tiny
//! guests (Linux guests cannot run here; the nested figures come from
//! `nested-vmm-bench`). The VMM is the release static binary the appliance
//! ships.
//!
//! - start → API socket ready: wall ms, and the CPU ms the VMM's threads
//!   used by then (from /proc/<pid>/task/*/schedstat, in ns);
//! - memory overhead for 1 vCPU and 128 MiB: VmRSS minus the resident part
//!   of the guest memory mapping;
//! - VMs created, booted to the boot marker and torn down per second, one
//!   after another (one stream, so per core).
//!
//! Each figure is taken twice in the same run, alternating: with the jail
//! (`--jail-uid`, as the panel runs every VMM; the figures are the jailed
//! child's) and with `--no-jail`, so the jail's cost shows as a ratio.
//!
//! Usage: `cargo run -p kvmos-qemu-test --bin vmm-bench -- [RUNS]`

use anyhow::{bail, Context, Result};
use kvmos_qemu_test::stats::median;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn config(dir: &Path, kernel: &Path, name: &str) -> Result<PathBuf> {
    let cfg = serde_json::json!({
        "vm_id": name, "kernel": kernel, "memory_mib": 128, "vcpus": 1, "rng": false,
        "serial": {"mode": "socket", "path": dir.join(format!("{name}.console"))},
        "api_socket": dir.join(format!("{name}.api")),
    });
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, cfg.to_string())?;
    Ok(path)
}

/// With the jail (as uid 990000, which nothing else on a test host uses)
/// or without.
const MODES: [(&str, &[&str]); 2] =
    [("jail", &["--jail-uid", "990000", "--jail-gid", "990000"]), ("no jail", &["--no-jail"])];

fn spawn(vmm: &Path, cfg: &Path, flags: &[&str]) -> Result<Child> {
    Ok(Command::new(vmm).arg("--config").arg(cfg).args(flags).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?)
}

/// The process that runs the VM: the jailed child, or the VMM itself.
fn vm_pid(child: &Child) -> u32 {
    kvmos_vmm::jail::jailed_child(child.id()).unwrap_or(child.id())
}

#[derive(Default)]
struct Figures {
    walls: Vec<f64>,
    cpus_all: Vec<f64>,
    cpus_main: Vec<f64>,
    overheads: Vec<f64>,
    /// Each VM's start → exit, ms.
    vm_ms: Vec<f64>,
}

/// CPU time of every thread of `pid`, and of its main thread, in ns.
fn cpu_ns(pid: u32) -> (u64, u64) {
    let read = |p: PathBuf| -> u64 {
        std::fs::read_to_string(p).ok().and_then(|s| s.split_whitespace().next()?.parse().ok()).unwrap_or(0)
    };
    let main = read(PathBuf::from(format!("/proc/{pid}/task/{pid}/schedstat")));
    let all = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.flatten().map(|t| read(t.path().join("schedstat"))).sum())
        .unwrap_or(main);
    (all, main)
}

/// The `q` quantile of `values` (nearest rank).
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or(f64::NAN)
}

fn kib(status: &str, key: &str) -> u64 {
    status.lines().find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// The resident KiB of the guest memory mapping (the anonymous mapping of
/// at least the guest's size).
fn guest_rss_kib(pid: u32, guest_kib: u64) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut total = 0;
    let mut in_guest = false;
    for line in smaps.lines() {
        // A mapping's header line starts with its address range.
        if line.split_whitespace().next().is_some_and(|f| f.contains('-') && !f.ends_with(':')) {
            in_guest = false;
        }
        if let Some(size) = line.strip_prefix("Size:") {
            in_guest =
                size.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).is_some_and(|s| s >= guest_kib);
        }
        if in_guest {
            if let Some(rss) = line.strip_prefix("Rss:") {
                total += rss.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    total
}

fn stop(child: &mut Child, api: &Path) -> Result<()> {
    kvmos_contract::control::Client::new(api).act(kvmos_contract::control::Action::Stop)?;
    child.wait()?;
    Ok(())
}

fn main() -> Result<()> {
    let runs: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let bins = kvmos_qemu_test::binaries()?;
    let dir = kvmos_qemu_test::work_dir("vmm-bench")?;
    let echo = dir.join("tiny.elf");
    std::fs::write(&echo, kvmos_vmm::tiny_guest::elf())?;
    let marker = dir.join("marker.elf");
    std::fs::write(&marker, kvmos_vmm::tiny_guest::marker_elf())?;
    println!("kvmos-vmm {} on this host's /dev/kvm; 1 vCPU, 128 MiB; {runs} runs", bins.vmm.display());

    let mut figures: [Figures; 2] = Default::default();
    for i in 0..runs {
        for (m, (mode, flags)) in MODES.iter().enumerate() {
            let f = &mut figures[m];
            let name = format!("start{i}-{m}");
            let cfg = config(&dir, &echo, &name)?;
            let api = dir.join(format!("{name}.api"));
            let t0 = Instant::now();
            let mut child = spawn(&bins.vmm, &cfg, flags)?;
            while UnixStream::connect(&api).is_err() {
                if t0.elapsed() > Duration::from_secs(10) {
                    bail!("the API socket never came up ({mode})");
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            let wall = t0.elapsed().as_secs_f64() * 1000.0;
            let pid = vm_pid(&child);
            let (all, main) = cpu_ns(pid);
            // Let the guest settle, then read the memory.
            std::thread::sleep(Duration::from_millis(300));
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("status")?;
            let rss = kib(&status, "VmRSS:");
            let guest = guest_rss_kib(pid, 128 * 1024);
            stop(&mut child, &api)?;
            f.walls.push(wall);
            f.cpus_all.push(all as f64 / 1e6);
            f.cpus_main.push(main as f64 / 1e6);
            f.overheads.push((rss - guest) as f64 / 1024.0);
            if i == 0 {
                println!("  first run, {mode}: VmRSS {rss} KiB, guest memory resident {guest} KiB");
            }
        }
    }
    // VMs per second: each VM timed on its own, the modes taking turns VM
    // by VM, so that both meet the host in the same states (this host's
    // KVM sometimes takes ~16 ms to tear a VM down, whichever mode ran it).
    for round in 0..runs * 5 {
        for (m, (mode, flags)) in MODES.iter().enumerate() {
            let name = format!("boot{round}-{m}");
            let cfg = config(&dir, &marker, &name)?;
            let t0 = Instant::now();
            let status = spawn(&bins.vmm, &cfg, flags)?.wait()?;
            let took = t0.elapsed().as_secs_f64();
            if status.code() != Some(0) {
                bail!("the marker guest ended with {status} ({mode})");
            }
            figures[m].vm_ms.push(took * 1000.0);
        }
    }
    println!("| | jail | no jail | ratio |");
    println!("|---|---|---|---|");
    let row = |what: &str, of: &dyn Fn(&Figures) -> Vec<f64>| {
        let (j, n) = (median(&of(&figures[0])), median(&of(&figures[1])));
        println!("| {what} | {j:.2} | {n:.2} | {:.2} |", j / n);
    };
    row("start → API socket ready (ms, median)", &|f| f.walls.clone());
    row("CPU by then, all threads (ms)", &|f| f.cpus_all.clone());
    row("CPU by then, main thread (ms)", &|f| f.cpus_main.clone());
    row("memory overhead, VmRSS − guest (MiB)", &|f| f.overheads.clone());
    row("one VM, start → boot marker → exit (ms, median)", &|f| f.vm_ms.clone());
    row("one VM, the fastest quarter (ms, 25th percentile)", &|f| vec![quantile(&f.vm_ms, 0.25)]);
    // VMs per second over the whole stream of a mode's VMs.
    let per_second = |f: &Figures| vec![f.vm_ms.len() as f64 * 1000.0 / f.vm_ms.iter().sum::<f64>()];
    row("VMs per second, boot marker and exit, one stream (all the VMs of a mode)", &per_second);
    Ok(())
}
