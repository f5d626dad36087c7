//! The PC machine against QEMU, side by side in one L1 (the nested harness:
//! the kvmos host kernel with busybox under QEMU TCG `-cpu max`, 1536 MiB,
//! 2 vCPUs). Both boot the same Debian 12 image (`kvmos_qemu_test::debian`,
//! on the L1's /dev/vda) with the same SeaBIOS, 1 vCPU, 512 MiB, virtio-blk
//! and virtio-rng, no NIC, the serial console on stdout; QEMU is the host's
//! `qemu-system-x86_64 -accel kvm -M pc -nographic` (so SeaBIOS shows its
//! screen on the serial port, as kvmos-vmm has it), copied into the L1
//! with its libraries. The two alternate, RUNS times each. Per boot, in L1 time from
//! the VMM's start: the firmware's first output, GRUB, the login prompt;
//! and at the login prompt the VMM's memory overhead: its RSS less the RSS
//! of the guest RAM mappings (the mappings of 100 MiB or more).
//!
//! Usage: `cargo run -p kvmos-qemu-test --bin pc-boot-bench -- [RUNS]`

use anyhow::{Context, Result};
use kvmos_qemu_test::debian;
use kvmos_qemu_test::nested::{Nested, L1_TSC};
use kvmos_qemu_test::stats::median;
use std::time::Duration;

const SCRIPT: &str = r#"
ip link set lo up
{l1_tsc}
now() { cut -d' ' -f1 /proc/uptime; }
# boot NAME COMMAND...: times to the firmware, GRUB and the login prompt.
boot() {
  name=$1; shift
  rm -f out
  t0=$(now)
  "$@" < /dev/null > out 2> err &
  pid=$!
  fw=; grub=; login=
  n=0
  while [ -z "$login" ] && [ $n -lt 3000 ]; do
    [ -z "$fw" ] && grep -q 'SeaBIOS (version' out && fw=$(now)
    [ -z "$grub" ] && grep -q 'GRUB: loading' out && grub=$(now)
    grep -q 'login:' out && login=$(now)
    n=$((n + 1)); sleep 0.1
  done
  # A jailed kvmos-vmm runs the VM in a child (its PID namespace's init):
  # the guest's RAM is there, and both processes count as overhead.
  vm=$pid
  for p in /proc/[0-9]*; do
    [ "$(cut -d' ' -f4 $p/stat 2>/dev/null)" = "$pid" ] && vm=${p#/proc/}
  done
  maps=/proc/$pid/smaps; [ "$vm" != "$pid" ] && maps="$maps /proc/$vm/smaps"
  total=$(cat $maps | awk '/^Rss:/ {s += $2} END {print s}')
  guest=$(awk '/^Size:/ {size = $2} /^Rss:/ {if (size >= 102400) s += $2} END {print s + 0}' /proc/$vm/smaps)
  kill $pid; wait $pid 2>/dev/null
  echo "RESULT vmm=$name t0=$t0 fw=$fw grub=$grub login=$login rss_kib=$total guest_kib=$guest"
}
for i in $(seq RUNS); do
  boot kvmos ./kvmos-vmm --jail-uid 1000 --jail-gid 1000 --firmware bios --firmware-path bios-256k.bin --disk /dev/vda --memory-mib 512 --vcpus 1 --serial stdio
  boot qemu /usr/bin/qemu-system-x86_64 -accel kvm -M pc -cpu host -m 512 -smp 1 -nodefaults -nographic \
    -serial stdio -monitor none -bios bios-256k.bin -L /usr/share/qemu -global kvm-apic.vapic=false \
    -drive file=/dev/vda,format=raw,if=none,id=d0 -device virtio-blk-pci,drive=d0 -device virtio-rng-pci
done
"#;

fn main() -> Result<()> {
    let runs: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let image = debian::image()?;
    let bios = kvmos_vmm::arch::firmware::find("bios-256k.bin").context("SeaBIOS (package seabios)")?;
    let qemu = kvmos_image_builder::host_programs::locate("qemu-system-x86_64")?;
    let r = Nested::new(&SCRIPT.replace("RUNS", &runs.to_string()).replace("{l1_tsc}", L1_TSC))?
        .memory_mib(1536)
        .with_vmm()?
        .file("bios-256k.bin", std::fs::read(bios)?, 0o644)?
        .program(&qemu, "/usr/bin/qemu-system-x86_64")?
        .drive(&image)
        .run("pc-boot-bench", Duration::from_secs(3600))?;
    println!("PC machine vs QEMU -M pc, nested: L1 = kvmos kernel + busybox under QEMU TCG -cpu max, 1536 MiB;");
    println!("L2 = Debian 12 image, SeaBIOS, 1 vCPU, 512 MiB, virtio-blk + virtio-rng; {runs} alternating runs each");
    // With the two rates over 250 ppm apart QEMU's guest runs with a
    // stalled timer (see `L1_TSC`), and the figures say more about that.
    for line in r.output.lines().filter(|l| l.starts_with("L1-TSC ")) {
        println!("{line}");
    }
    println!("| run | VMM | firmware output (s) | GRUB (s) | login prompt (s) | RSS (MiB) | guest RAM touched (MiB) | overhead (MiB) |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut login: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    let mut overhead: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for (i, line) in r.output.lines().filter(|l| l.starts_with("RESULT ")).enumerate() {
        let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap_or("").to_string();
        let t0: f64 = field("t0=").parse().unwrap_or(f64::NAN);
        let at = |k: &str| field(k).parse::<f64>().map(|t| t - t0).unwrap_or(f64::NAN);
        let rss = field("rss_kib=").parse::<f64>().unwrap_or(f64::NAN) / 1024.0;
        let guest = field("guest_kib=").parse::<f64>().unwrap_or(f64::NAN) / 1024.0;
        let vmm = field("vmm=");
        login.entry(vmm.clone()).or_default().push(at("login="));
        overhead.entry(vmm.clone()).or_default().push(rss - guest);
        println!(
            "| {} | {vmm} | {:.2} | {:.2} | {:.2} | {rss:.1} | {guest:.1} | {:.1} |",
            i / 2 + 1,
            at("fw="),
            at("grub="),
            at("login="),
            rss - guest
        );
    }
    let m =
        |map: &std::collections::BTreeMap<String, Vec<f64>>, k: &str| median(&map.get(k).cloned().unwrap_or_default());
    println!(
        "median to the login prompt: kvmos-vmm {:.2} s, QEMU {:.2} s, ratio {:.2}",
        m(&login, "kvmos"),
        m(&login, "qemu"),
        m(&login, "kvmos") / m(&login, "qemu")
    );
    println!(
        "median memory overhead: kvmos-vmm {:.1} MiB, QEMU {:.1} MiB, ratio {:.2}",
        m(&overhead, "kvmos"),
        m(&overhead, "qemu"),
        m(&overhead, "kvmos") / m(&overhead, "qemu")
    );
    Ok(())
}
