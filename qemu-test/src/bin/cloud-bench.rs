//! A cloud image's first boot to a working SSH login, kvmos-vmm against
//! QEMU, side by side in one L1 (the nested harness: the kvmos host kernel
//! with busybox under QEMU TCG `-cpu max`, 1536 MiB, 2 vCPUs).
//!
//! Both boot the Debian 12 cloud-style image (`debian::Flavour::Cloud`, on
//! the L1's /dev/vda) with the same SeaBIOS, 1 vCPU, 512 MiB, virtio-blk,
//! a NoCloud seed (host name, user, SSH key, static 10.0.2.50/24) as a
//! second read-only virtio disk, and virtio-net on a TAP whose L1 side is
//! 10.0.2.2. QEMU is the host's `qemu-system-x86_64 -accel kvm -M pc`,
//! copied into the L1 with its libraries; so is OpenSSH's client. Each
//! boot has a seed with a new instance ID, so cloud-init does its
//! first-boot work (user, host keys, network) every time. The two
//! alternate, RUNS times each. Per boot, in L1 seconds from the VMM's
//! start: the SSH banner on port 22, and the first successful login as the
//! user with the key.
//!
//! Usage: `cargo run -p kvmos-qemu-test --bin cloud-bench -- [RUNS]`

use anyhow::{Context, Result};
use kvmos_qemu_test::debian::{self, Flavour, Seed};
use kvmos_qemu_test::nested::Nested;
use kvmos_qemu_test::stats::median;
use std::collections::BTreeMap;
use std::time::Duration;

const SCRIPT: &str = r#"
ip link set lo up
export HOME=/root
now() { cut -d' ' -f1 /proc/uptime; }
# boot NAME TAP COMMAND...: times to the SSH banner and to a login.
boot() {
  name=$1; tap=$2; shift 2
  t0=$(now)
  "$@" < /dev/null > out 2>&1 &
  pid=$!
  n=0
  until [ -e /sys/class/net/$tap ] || [ $n -gt 600 ]; do n=$((n + 1)); sleep 0.05; done
  ip addr add 10.0.2.2/24 dev $tap
  ip link set $tap up
  banner=; login=; host=
  n=0
  while [ -z "$login" ] && [ $n -lt 1200 ]; do
    n=$((n + 1))
    if [ -z "$banner" ]; then
      nc -w 1 10.0.2.50 22 < /dev/null 2>/dev/null | grep -q '^SSH-2.0' && banner=$(now) || sleep 0.5
      continue
    fi
    host=$(/usr/bin/ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
      -o ConnectTimeout=5 -o LogLevel=ERROR -i /work/key ops@10.0.2.50 hostname 2>/dev/null) && login=$(now) || sleep 0.5
  done
  [ -z "$login" ] && tail -c 3000 out
  kill $pid; wait $pid 2>/dev/null
  echo "RESULT vmm=$name t0=$t0 banner=$banner login=$login host=$host"
}
for i in $(seq RUNS); do
  boot kvmos tap0 ./kvmos-vmm --jail-uid 1000 --jail-gid 1000 --firmware bios --firmware-path bios-256k.bin \
    --disk /dev/vda --disk seed-kvmos-$i.img,ro --net tap=tap0,mac=52:54:00:12:34:56 \
    --memory-mib 512 --vcpus 1 --serial stdio
  boot qemu tap1 /usr/bin/qemu-system-x86_64 -accel kvm -M pc -cpu host -m 512 -smp 1 -nodefaults -nographic \
    -serial stdio -monitor none -bios bios-256k.bin -L /usr/share/qemu -global kvm-apic.vapic=false \
    -drive file=/dev/vda,format=raw,if=none,id=d0 -device virtio-blk-pci,drive=d0,bootindex=0 \
    -drive file=seed-qemu-$i.img,format=raw,if=none,id=d1,readonly=on -device virtio-blk-pci,drive=d1 \
    -netdev tap,id=n0,ifname=tap1,script=no,downscript=no \
    -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,romfile=
done
"#;

fn main() -> Result<()> {
    let runs: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let image = debian::image_of(Flavour::Cloud)?;
    let dir = kvmos_qemu_test::work_dir("cloud-bench")?;
    let (key, public_key) = kvmos_qemu_test::ssh::new_key(&dir)?;
    let bios = kvmos_vmm::arch::firmware::find("bios-256k.bin").context("SeaBIOS (package seabios)")?;
    let qemu = kvmos_image_builder::host_programs::locate("qemu-system-x86_64")?;
    let ssh = kvmos_image_builder::host_programs::locate("ssh")?;
    let mut nested = Nested::new(&SCRIPT.replace("RUNS", &runs.to_string()))?
        .memory_mib(1536)
        .with_vmm()?
        .file("bios-256k.bin", std::fs::read(bios)?, 0o644)?
        .file("key", std::fs::read(&key)?, 0o600)?
        .file("/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n".to_vec(), 0o644)?
        .file("/root/.keep", Vec::new(), 0o644)?
        .program(&qemu, "/usr/bin/qemu-system-x86_64")?
        .program(&ssh, "/usr/bin/ssh")?
        .drive(&image);
    for i in 1..=runs {
        for vmm in ["kvmos", "qemu"] {
            let path = dir.join(format!("seed-{vmm}-{i}.img"));
            let instance_id = format!("bench-{vmm}-{i}");
            Seed {
                instance_id: &instance_id,
                hostname: "web1",
                user: "ops",
                ssh_key: &public_key,
                mac: "52:54:00:12:34:56",
                address: "10.0.2.50/24",
                gateway: "10.0.2.2",
            }
            .write(&path)?;
            nested = nested.file(&format!("seed-{vmm}-{i}.img"), std::fs::read(&path)?, 0o644)?;
        }
    }
    let r = nested.run("cloud-bench", Duration::from_secs(7200))?;
    println!("A cloud image's first boot to SSH, nested: L1 = kvmos kernel + busybox under QEMU TCG -cpu max,");
    println!("1536 MiB; L2 = Debian 12 cloud image + NoCloud seed, SeaBIOS, 1 vCPU, 512 MiB, virtio-blk,");
    println!("virtio-net on a TAP; {runs} alternating runs each; L1 seconds from the VMM's start");
    println!("| run | VMM | SSH banner (s) | SSH login (s) | host name |");
    println!("|---|---|---|---|---|");
    let mut login: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (i, line) in r.output.lines().filter(|l| l.starts_with("RESULT ")).enumerate() {
        let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap_or("").to_string();
        let t0: f64 = field("t0=").parse().unwrap_or(f64::NAN);
        let at = |k: &str| field(k).parse::<f64>().map(|t| t - t0).unwrap_or(f64::NAN);
        let vmm = field("vmm=");
        login.entry(vmm.clone()).or_default().push(at("login="));
        println!("| {} | {vmm} | {:.1} | {:.1} | {} |", i / 2 + 1, at("banner="), at("login="), field("host="));
    }
    if login.values().flatten().any(|t| t.is_nan()) {
        println!("(a boot did not reach SSH; the L1's output:)\n{}", r.output);
    }
    let m = |k: &str| median(&login.get(k).cloned().unwrap_or_default());
    println!(
        "median to an SSH login: kvmos-vmm {:.1} s, QEMU {:.1} s, ratio {:.2}",
        m("kvmos"),
        m("qemu"),
        m("kvmos") / m("qemu")
    );
    Ok(())
}
