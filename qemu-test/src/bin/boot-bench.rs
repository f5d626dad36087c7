//! Boot benchmark: QEMU start → the init's ready line under TCG, for the kvmos
//! kernel + initramfs and, in the same run, for Debian's stock kernel with a
//! busybox initramfs that only prints a line. Runs alternate (ours, stock,
//! ours, …) so machine noise hits both alike; the ratio is the figure to
//! compare across runs.
//!
//! Usage: `cargo run -p kvmos-qemu-test --bin boot-bench -- [RUNS]`
//! Needs the package linux-image-amd64 for the stock kernel.

use anyhow::{bail, Context, Result};
use kvmos_image_builder::initramfs::{self, Archive};
use kvmos_image_builder::qemu::QemuOptions;
use kvmos_qemu_test::stats::median;
use kvmos_qemu_test::{image, work_dir, Appliance, Boot};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const STOCK_READY: &str = "bench: stock init ready";

fn main() -> Result<()> {
    let runs: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let img = image()?;
    let dir = work_dir("boot-bench")?;
    let stock_kernel = stock_kernel()?;
    let stock_initrd = dir.join("stock-initramfs.cpio.zst");
    std::fs::write(&stock_initrd, initramfs::compress(&stock_archive()?.to_cpio())?)?;

    let mut ours = QemuOptions::new(Boot::Direct { kernel: img.bz_image.clone(), initrd: img.initramfs.clone() }, &dir);
    ours.append = "quiet".into();
    let mut stock = QemuOptions::new(Boot::Direct { kernel: stock_kernel.clone(), initrd: stock_initrd }, &dir);
    stock.append = "console=ttyS0,115200 quiet".into();

    println!("QEMU TCG -cpu max, 2 vCPUs, 2048 MiB, -kernel/-initrd, `quiet`; {runs} runs each, alternating");
    println!("stock kernel: {}", stock_kernel.display());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..runs {
        a.push(time_to(&format!("bench-ours-{i}"), &ours, "kvmos-init: ready")?);
        b.push(time_to(&format!("bench-stock-{i}"), &stock, STOCK_READY)?);
        println!("run {}: kvmos {:.2} s, stock {:.2} s", i + 1, a[i].as_secs_f64(), b[i].as_secs_f64());
    }
    let ratios: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x.as_secs_f64() / y.as_secs_f64()).collect();
    println!(
        "median QEMU start → ready: kvmos {:.2} s, Debian stock {:.2} s, ratio kvmos/stock {:.2}",
        median(&a.iter().map(Duration::as_secs_f64).collect::<Vec<_>>()),
        median(&b.iter().map(Duration::as_secs_f64).collect::<Vec<_>>()),
        median(&ratios)
    );
    for f in &img.manifest.files {
        println!("size {}: {} bytes ({:.1} MiB)", f.name, f.bytes, f.bytes as f64 / 1048576.0);
    }
    Ok(())
}

fn time_to(name: &str, opts: &QemuOptions, line: &str) -> Result<Duration> {
    let start = Instant::now();
    // Returns once `line` is on the console (the stock init prints no
    // kvmos-init line for `Appliance::boot` to wait for).
    let _vm = Appliance::boot_until(name, opts.clone(), line)?;
    Ok(start.elapsed())
}

fn stock_kernel() -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .collect();
    found.sort();
    match found.pop() {
        Some(p) => Ok(p),
        None => bail!("no Debian kernel in /boot: apt-get install linux-image-amd64"),
    }
}

fn stock_archive() -> Result<Archive> {
    let mut a = Archive::new();
    a.file("/bin/busybox", 0o755, std::fs::read("/bin/busybox").context("busybox-static is needed")?)?;
    let init = format!("#!/bin/busybox sh\n/bin/busybox echo '{STOCK_READY}'\n/bin/busybox poweroff -f\n");
    a.file("/init", 0o755, init.into_bytes())?;
    a.char_dev("/dev/console", 0o600, 5, 1)?;
    Ok(a)
}
