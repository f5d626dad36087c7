//! kvmos-init figures under QEMU TCG: kernel start → boot steps done,
//! → network up (DHCP), → the console block; and PID 1's resident memory.
//! The times are the appliance's own uptime (`/proc/uptime`), which init
//! prints; the memory is /proc/1/status read through the `kvmos.debug` hook.
//!
//! Usage: `cargo run -p kvmos-qemu-test --bin init-bench -- [RUNS]`

use anyhow::{Context, Result};
use kvmos_image_builder::qemu::QemuOptions;
use kvmos_qemu_test::{image, work_dir, Appliance, Boot, BOOT_TIMEOUT};
use std::time::Duration;

fn seconds_before(text: &str, marker: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.contains(marker))?;
    let after = line.split(marker).nth(1)?;
    after.split_whitespace().find_map(|w| w.trim_start_matches('(').parse().ok())
}

fn main() -> Result<()> {
    let runs: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let img = image()?;
    println!("QEMU TCG -cpu max, 2 vCPUs, 2048 MiB, -kernel/-initrd, `quiet kvmos.debug`, no data disk; {runs} runs");
    for i in 0..runs {
        let dir = work_dir("init-bench")?;
        let mut opts =
            QemuOptions::new(Boot::Direct { kernel: img.bz_image.clone(), initrd: img.initramfs.clone() }, &dir);
        opts.append = "quiet kvmos.debug".into();
        let mut vm = Appliance::boot("init-bench", opts)?;
        let steps = vm.expect("after kernel start)", BOOT_TIMEOUT)?;
        let net = vm.expect("s after kernel start", BOOT_TIMEOUT)?;
        vm.expect("Data disk:", BOOT_TIMEOUT)?;
        vm.debug("cat /proc/1/status", "VmRSS:")?;
        let rss = vm.expect("kB", Duration::from_secs(30))?;
        // "boot steps done in N ms (U s after kernel start)"
        let steps_uptime = steps
            .lines()
            .find(|l| l.contains("boot steps done in"))
            .and_then(|l| l.split('(').nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .context("no boot steps line")?;
        let net_uptime = seconds_before(&net, "network up").context("no network line")?;
        println!(
            "run {}: boot steps done at {:.2} s, network up (DHCP, console block) at {:.2} s of uptime; PID 1 VmRSS {} kB",
            i + 1,
            steps_uptime,
            net_uptime,
            rss.trim().trim_end_matches("kB").trim()
        );
    }
    Ok(())
}
