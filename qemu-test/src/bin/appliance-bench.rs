//! The appliance's day-one figures, in one run under QEMU TCG (`-cpu max`,
//! 2 vCPUs, 2048 MiB), booting `kvmos.img` under OVMF with a data disk, as
//! a server boots its disk:
//!
//! - QEMU start → the panel answering HTTPS on the forwarded port;
//! - memory in use at idle with the panel up and no VM (MemTotal −
//!   MemAvailable inside, from the panel's host overview);
//! - panel "start" → the demo guest's shell prompt on the console
//!   WebSocket (the guest runs nested: KVM inside TCG);
//! - the sizes of the image files.
//!
//! Usage: `cargo run -p kvmos-qemu-test --bin appliance-bench`

use anyhow::{Context, Result};
use kvmos_image_builder::guest::READY_LINE;
use kvmos_image_builder::qemu::{free_port, QemuOptions};
use kvmos_qemu_test::panel::Panel;
use kvmos_qemu_test::{https_get, image, work_dir, Appliance, Boot, DataDisk, BOOT_TIMEOUT};
use std::time::{Duration, Instant};

fn main() -> Result<()> {
    let img = image()?;
    let dir = work_dir("appliance-bench")?;
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

    let vm_spec = serde_json::json!({"name": "bench", "vcpus": 1, "memory_mib": 128,
        "boot": {"type": "guest", "guest": "demo"}, "network": true});
    let id = panel.ok("POST", "/api/v1/vms", Some(vm_spec))?["id"].as_str().context("id")?.to_string();
    let t1 = Instant::now();
    panel.action(&id, "start")?;
    let mut console = panel.console(&id)?;
    let at = console.expect(READY_LINE, Duration::from_secs(600))?;
    console.send("\n")?;
    console.expect_after(at, "demo:/# ", Duration::from_secs(120))?;
    let to_shell = t1.elapsed();

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
    Ok(())
}
