//! The appliance's day-one figures, in one run under QEMU TCG (`-cpu max`,
//! 2 vCPUs, 2048 MiB), booting `kvmos.img` under OVMF with a data disk, as
//! a server boots its disk:
//!
//! - QEMU start → the panel answering HTTPS on the forwarded port;
//! - memory in use at idle with the panel up and no VM (MemTotal −
//!   MemAvailable inside, from the panel's host overview);
//! - panel "start" → the demo guest's shell prompt on the console
//!   WebSocket (the guest runs nested: KVM inside TCG);
//! - the sizes of the image files;
//! - where the idle memory goes: the same appliance booted directly with
//!   its debug console (`kvmos.debug`), the panel set up, then
//!   `/proc/meminfo`, the unpacked initramfs, and the resident memory of
//!   PID 1 and the panel.
//!
//! Usage: `cargo run -p kvmos-qemu-test --bin appliance-bench` (`-- memory`: the
//! breakdown alone)

use anyhow::{Context, Result};
use kvmos_image_builder::guest::READY_LINE;
use kvmos_image_builder::qemu::{free_port, QemuOptions};
use kvmos_qemu_test::panel::Panel;
use kvmos_qemu_test::{https_get, image, work_dir, Appliance, Boot, DataDisk, BOOT_TIMEOUT};
use std::time::{Duration, Instant};

fn main() -> Result<()> {
    let img = image()?;
    let dir = work_dir("appliance-bench")?;
    if std::env::args().nth(1).as_deref() == Some("memory") {
        return memory_breakdown(&dir);
    }
    let disk = DataDisk::create(&dir.join("data.img"), 512, "KVMOS_DATA")?;
    let port = free_port()?;
    let mut opts = QemuOptions::new(Boot::Uefi { disk: img.disk_image.clone() }, &dir);
    opts.drives = vec![disk.path.clone()];
    opts.panel_host_port = Some(port);
    let t0 = Instant::now();
    let mut vm = Appliance::boot("appliance-bench", opts)?;
    while !matches!(https_get(port, "/api/v1/health"), Ok((200, _))) {
        anyhow::ensure!(t0.elapsed() < BOOT_TIMEOUT, "the panel never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let to_panel = t0.elapsed();

    let block = vm.expect("(enter it in the panel", BOOT_TIMEOUT)?;
    let code = block.lines().rev().find_map(|l| l.split("Setup code: ").nth(1)).context("no setup code")?;
    let code = code.split_whitespace().next().context("no setup code")?.to_string();
    let mut panel = Panel::new(port);
    panel.setup(&code, "benchmark admin password")?;
    std::thread::sleep(Duration::from_secs(5));
    let host = panel.ok("GET", "/api/v1/host", None)?;
    let used = host["memory_used_bytes"].as_u64().unwrap_or(0);
    let total = host["memory_total_bytes"].as_u64().unwrap_or(0);

    let (_, to_shell) = demo_to_prompt(&panel, "bench", true)?;

    println!("QEMU TCG -cpu max, 2 vCPUs, 2048 MiB, kvmos.img under OVMF, 512 MiB data disk");
    println!("  QEMU start → panel answering HTTPS: {:.2} s", to_panel.as_secs_f64());
    println!(
        "  memory in use at idle, panel up, no VM: {:.1} MiB of {:.0} MiB",
        used as f64 / 1048576.0,
        total as f64 / 1048576.0
    );
    println!("  panel start → demo guest shell prompt (nested): {:.2} s", to_shell.as_secs_f64());
    for (name, path) in
        [("bzImage", &img.bz_image), ("initramfs.cpio.zst", &img.initramfs), ("kvmos.img", &img.disk_image)]
    {
        let len = std::fs::metadata(path)?.len();
        println!("  {name}: {len} bytes ({:.1} MiB)", len as f64 / 1048576.0);
    }
    drop(vm);
    memory_breakdown(&dir)
}

/// Creates a 128 MiB demo VM named `name` and starts it from the panel;
/// its ID and the time from "start" to its shell prompt.
fn demo_to_prompt(panel: &Panel, name: &str, network: bool) -> Result<(String, Duration)> {
    let vm_spec = serde_json::json!({"name": name, "vcpus": 1, "memory_mib": 128,
        "boot": {"type": "guest", "guest": "demo"}, "network": network});
    let id = panel.ok("POST", "/api/v1/vms", Some(vm_spec))?["id"].as_str().context("id")?.to_string();
    let t0 = Instant::now();
    panel.action(&id, "start")?;
    let mut console = panel.console(&id)?;
    let at = console.expect(READY_LINE, Duration::from_secs(600))?;
    console.send("\n")?;
    console.expect_after(at, "demo:/# ", Duration::from_secs(120))?;
    Ok((id, t0.elapsed()))
}

/// Reads `kvmos-debug cat PATH` into lines.
fn cat(vm: &mut Appliance, path: &str) -> Result<String> {
    let text = vm.debug(&format!("cat {path}"), &format!("end of {path}"))?;
    // The answer starts `kvmos-debug: PATH: ` on the file's first line.
    let start = format!("kvmos-debug: {path}: ");
    let body = text.split_once(&start).map(|(_, b)| b).context("no answer")?;
    Ok(body.lines().map(str::trim).filter(|l| !l.contains("kvmos-debug")).collect::<Vec<_>>().join("\n"))
}

/// A `Key:   123 kB` field of /proc/meminfo or /proc/PID/status, in MiB.
fn field_mib(text: &str, key: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn memory_breakdown(dir: &std::path::Path) -> Result<()> {
    let img = image()?;
    let disk = DataDisk::create(&dir.join("data-direct.img"), 512, "KVMOS_DATA")?;
    let port = free_port()?;
    let mut opts = QemuOptions::new(Boot::Direct { kernel: img.bz_image.clone(), initrd: img.initramfs.clone() }, dir);
    opts.drives = vec![disk.path.clone()];
    opts.panel_host_port = Some(port);
    opts.append = "kvmos.debug".into();
    let mut vm = Appliance::boot("appliance-bench-memory", opts)?;
    let block = vm.expect("(enter it in the panel", BOOT_TIMEOUT)?;
    let code = block.lines().rev().find_map(|l| l.split("Setup code: ").nth(1)).context("no setup code")?;
    let code = code.split_whitespace().next().context("no setup code")?.to_string();
    let mut panel = Panel::new(port);
    panel.setup(&code, "benchmark admin password")?;
    std::thread::sleep(Duration::from_secs(5));
    let meminfo = cat(&mut vm, "/proc/meminfo")?;
    let zoneinfo = cat(&mut vm, "/proc/zoneinfo")?;
    // `ps PID STATE COMM` lines.
    let ps = vm.debug("ps", "ps end")?;
    let panel_pid = ps
        .lines()
        .find(|l| l.contains("kvmos-webadmin"))
        .and_then(|l| l.split_whitespace().skip_while(|w| *w != "ps").nth(1)?.parse::<u32>().ok())
        .context("no kvmos-webadmin in the process list")?;
    let init = cat(&mut vm, "/proc/1/status")?;
    let min_free = cat(&mut vm, "/proc/sys/vm/min_free_kbytes")?;
    let panel_status = cat(&mut vm, &format!("/proc/{panel_pid}/status"))?;
    let unpacked: u64 = walk_sizes(&img.initramfs)?;
    let m = |k: &str| field_mib(&meminfo, k);
    println!("where the idle memory goes (direct boot, kvmos.debug, same memory and data disk, panel set up), MiB:");
    println!("  MemTotal − MemAvailable: {:.1}", m("MemTotal") - m("MemAvailable"));
    println!("  MemTotal − MemFree (pages actually in use): {:.1}", m("MemTotal") - m("MemFree"));
    for key in [
        "MemFree",
        "MemAvailable",
        "Shmem",
        "Unevictable",
        "AnonPages",
        "Mapped",
        "Buffers",
        "Cached",
        "Slab",
        "SReclaimable",
        "SUnreclaim",
        "KernelStack",
        "PageTables",
        "Percpu",
    ] {
        println!("  {key}: {:.1}", m(key));
    }
    println!("  the unpacked initramfs (files in RAM): {:.1}", unpacked as f64 / 1048576.0);
    println!("  vm.min_free_kbytes: {}", min_free.trim());
    let (held, high) = per_cpu_free_lists(&zoneinfo);
    println!(
        "  free pages held on the CPUs' own lists: {:.1} (up to {:.1}: the zones' low watermark, split between the CPUs)",
        held as f64 / 256.0,
        high as f64 / 256.0
    );
    for (who, status) in [("PID 1 (kvmos-init)", &init), ("kvmos-webadmin", &panel_status)] {
        println!(
            "  {who}: VmRSS {:.1} (anonymous {:.1}, file {:.1})",
            field_mib(status, "VmRSS"),
            field_mib(status, "RssAnon"),
            field_mib(status, "RssFile")
        );
    }

    // A VM's RAM still gets huge pages with the reserve the appliance sets.
    let (id, _) = demo_to_prompt(&panel, "huge", false)?;
    let meminfo = cat(&mut vm, "/proc/meminfo")?;
    println!(
        "  with a 128 MiB demo VM at its shell prompt: AnonHugePages {:.1}, MemTotal − MemAvailable {:.1}",
        field_mib(&meminfo, "AnonHugePages"),
        field_mib(&meminfo, "MemTotal") - field_mib(&meminfo, "MemAvailable")
    );
    panel.action(&id, "force-off")?;
    Ok(())
}

/// The pages on the per-CPU free lists of every zone, and the most they
/// may hold, from /proc/zoneinfo's `count:` and `high:` lines.
fn per_cpu_free_lists(zoneinfo: &str) -> (u64, u64) {
    let sum = |key: &str| -> u64 {
        zoneinfo.lines().filter_map(|l| l.trim().strip_prefix(key)?.trim().parse::<u64>().ok()).sum()
    };
    (sum("count:"), sum("high:"))
}

/// The bytes of the files in a zstd-compressed cpio archive.
fn walk_sizes(initramfs: &std::path::Path) -> Result<u64> {
    let cpio = zstd::decode_all(std::fs::File::open(initramfs)?)?;
    Ok(kvmos_image_builder::initramfs::list(&cpio)?.iter().map(|(_, _, data)| data.len() as u64).sum())
}
