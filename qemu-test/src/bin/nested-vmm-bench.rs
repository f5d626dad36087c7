//! kvmos-vmm booting Linux nested under QEMU TCG, the way the Firecracker
//! reference figure was taken (see BENCHMARKS.md): L1 is the kvmos host
//! kernel with a busybox initramfs under `-accel tcg -cpu max`, 1024 MiB; L2
//! is the guest kernel from `kernel-config/guest.config`, 1 vCPU, 128 MiB,
//! `quiet`, with a busybox init that prints its uptime, writes the boot
//! marker and reboots (so the VMM exits with code 3).
//!
//! Each run boots the bzImage (64-bit boot protocol) and then the same
//! kernel's vmlinux (PVH). Per boot: VMM start → vCPUs started → boot marker
//! (the VMM's own log), the L2 uptime at init, and VMM start → exit in L1
//! time.
//!
//! Usage: `cargo run -p kvmos-qemu-test --bin nested-vmm-bench -- [RUNS]`

use anyhow::Result;
use kvmos_qemu_test::nested::{guest_initramfs, Nested};
use std::time::Duration;

const L2_INIT: &str = r#"
mount -t proc proc /proc
mount -t devtmpfs devtmpfs /dev
echo "L2-UPTIME $(cut -d' ' -f1 /proc/uptime)"
printf x | dd of=/dev/port bs=1 seek=1088 count=1 2>/dev/null
reboot -f
"#;

fn number_after<'a>(text: &'a str, marker: &str) -> Vec<&'a str> {
    text.lines().filter_map(|l| l.split(marker).nth(1)?.split_whitespace().next()).collect()
}

fn main() -> Result<()> {
    let runs: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let script = format!(
        "for i in $(seq {runs}); do for kernel in guest-bzImage vmlinux; do\n\
         t0=$(cut -d' ' -f1 /proc/uptime)\n\
         ./kvmos-vmm --jail-uid 1000 --jail-gid 1000 --kernel $kernel --initrd l2.cpio.zst --cmdline 'console=ttyS0 reboot=k panic=1 pci=off quiet' \
         --memory-mib 128 --vcpus 1 --serial stdio < /dev/null > out 2> err\n\
         code=$?\n\
         t1=$(cut -d' ' -f1 /proc/uptime)\n\
         cat out err\n\
         echo \"RUN kernel=$kernel exit=$code l1_start=$t0 l1_end=$t1\"\n\
         done; done\n"
    );
    let vmlinux = std::fs::read(&kvmos_qemu_test::image()?.guest_vmlinux)?;
    let r = Nested::new(&script)?
        .with_vmm()?
        .file("vmlinux", vmlinux, 0o644)?
        .file("l2.cpio.zst", guest_initramfs(L2_INIT)?, 0o644)?
        .run("nested-vmm-bench", Duration::from_secs(1800))?;
    let built = number_after(&r.output, "VM built in ");
    let vcpus = number_after(&r.output, "starting the vCPUs ");
    let marker = number_after(&r.output, "guest boot marker: ");
    let uptime = number_after(&r.output, "L2-UPTIME ");
    println!("nested: QEMU TCG -cpu max, L1 1024 MiB; L2 guest kernel, 1 vCPU, 128 MiB, quiet; {runs} runs");
    println!("| run | kernel (boot) | VM built (ms) | vCPUs started (ms) | boot marker (ms) | L2 uptime at init (s) | VMM start → exit, L1 time (s) | exit code |");
    println!("|---|---|---|---|---|---|---|---|");
    for (i, line) in r.output.lines().filter(|l| l.starts_with("RUN ")).enumerate() {
        let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap_or("?").to_string();
        let span = match (field("l1_start=").parse::<f64>(), field("l1_end=").parse::<f64>()) {
            (Ok(a), Ok(b)) => format!("{:.2}", b - a),
            _ => "?".into(),
        };
        let get = |v: &Vec<&str>| v.get(i).copied().unwrap_or("?").to_string();
        let kernel = if field("kernel=") == "vmlinux" { "vmlinux (PVH)" } else { "bzImage (64-bit)" };
        println!(
            "| {} | {kernel} | {} | {} | {} | {} | {span} | {} |",
            i / 2 + 1,
            get(&built),
            get(&vcpus),
            get(&marker),
            get(&uptime),
            field("exit=")
        );
    }
    Ok(())
}
