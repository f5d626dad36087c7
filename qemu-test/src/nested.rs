//! A harness for tests that need Linux on our VMM: it boots the appliance
//! kernel under QEMU TCG (`-cpu max`, so KVM works inside) with a test
//! initramfs of busybox, the files a test hands it (kvmos-vmm, a guest
//! kernel and initramfs, disk images…) and a shell script. The script's
//! output and exit status come back over the serial console.
//!
//! Linux guests cannot run on the development machines' own /dev/kvm
//! (DESIGN.md), so this is where every Linux boot of kvmos-vmm is tested.

use crate::{image, work_dir, Appliance};
use anyhow::{bail, Context, Result};
use kvmos_image_builder::binaries::TARGET;
use kvmos_image_builder::initramfs::{self, Archive};
use kvmos_image_builder::qemu::{Boot, Emulator, QemuOptions};
use kvmos_image_builder::Layout;
use std::path::Path;
use std::time::{Duration, Instant};

/// What a nested run printed and how its script ended.
pub struct NestedResult {
    pub output: String,
    pub status: i32,
}

pub struct Nested {
    archive: Archive,
    script: String,
    memory_mib: u32,
    cpus: u32,
    drives: Vec<std::path::PathBuf>,
    emulator: Option<Emulator>,
    /// The shared libraries added with programs so far.
    libs: std::collections::BTreeSet<std::path::PathBuf>,
}

/// The L1 init: mount, run the script, report, power off.
const L1_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
cd /work
echo NESTED-START
sh /work/test.sh
echo "NESTED-RESULT $?"
poweroff -f
"#;

/// A busybox initramfs for an L2 guest whose /init is `init_script`.
pub fn guest_initramfs(init_script: &str) -> Result<Vec<u8>> {
    let mut a = Archive::new();
    a.file("/bin/busybox", 0o755, std::fs::read("/bin/busybox").context("busybox-static is needed")?)?;
    a.file("/init", 0o755, format!("#!/bin/busybox sh\n/bin/busybox --install -s /bin\n{init_script}").into_bytes())?;
    a.char_dev("/dev/console", 0o600, 5, 1)?;
    for d in ["/proc", "/sys", "/tmp"] {
        a.dir(d, 0o755)?;
    }
    initramfs::compress(&a.to_cpio())
}

impl Nested {
    /// A run of `script` (sh) in /work of the L1 machine.
    pub fn new(script: &str) -> Result<Self> {
        let mut archive = Archive::new();
        archive.file("/bin/busybox", 0o755, std::fs::read("/bin/busybox").context("busybox-static is needed")?)?;
        archive.file("/init", 0o755, L1_INIT.into())?;
        archive.char_dev("/dev/console", 0o600, 5, 1)?;
        for d in ["/proc", "/sys", "/dev", "/tmp", "/run"] {
            archive.dir(d, 0o755)?;
        }
        archive.file("/work/test.sh", 0o755, script.as_bytes().to_vec())?;
        Ok(Self {
            archive,
            script: script.into(),
            memory_mib: 1024,
            cpus: 2,
            drives: Vec::new(),
            emulator: None,
            libs: Default::default(),
        })
    }

    /// The L1 machine's CPU count (2 by default).
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// Attaches a raw disk image to the L1 machine (`/dev/vda`, then
    /// `/dev/vdb`…), for guests too big for its initramfs. What the run
    /// writes to it is kept in QEMU's overlay and dropped at the end, so a
    /// cached image stays as it was.
    pub fn drive(mut self, path: &std::path::Path) -> Self {
        self.drives.push(path.to_path_buf());
        self
    }

    /// Runs the L1 machine on the patched L0 QEMU ([`crate::l0_qemu`]),
    /// which an L2 guest running UEFI firmware needs.
    pub fn for_uefi_guests(mut self) -> Result<Self> {
        self.emulator = Some(crate::l0_qemu::emulator()?);
        Ok(self)
    }

    /// Adds a file to /work (or an absolute path).
    pub fn file(mut self, path: &str, data: Vec<u8>, mode: u32) -> Result<Self> {
        let p = if path.starts_with('/') { path.to_string() } else { format!("/work/{path}") };
        self.archive.file(&p, mode, data)?;
        Ok(self)
    }

    /// Adds a dynamically linked host program at `dest`, with the shared
    /// libraries it needs at their own paths (e.g. QEMU, to compare with);
    /// libraries two programs share are added once.
    pub fn program(mut self, host_path: &std::path::Path, dest: &str) -> Result<Self> {
        kvmos_image_builder::host_programs::add(&mut self.archive, &mut self.libs, host_path, dest)?;
        Ok(self)
    }

    /// The L1 machine's memory (1024 MiB by default).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Adds the static kvmos-vmm at /work/kvmos-vmm and the demo guest's
    /// kernel at /work/guest-bzImage.
    pub fn with_vmm(self) -> Result<Self> {
        let img = image()?;
        let layout = Layout::this_checkout();
        let target = kvmos_image_builder::binaries::target_dir(&layout.repo);
        let vmm = std::fs::read(target.join(TARGET).join("release/kvmos-vmm")).context("the static kvmos-vmm")?;
        let kernel = std::fs::read(&img.guest_kernel)?;
        self.file("kvmos-vmm", vmm, 0o755)?.file("guest-bzImage", kernel, 0o644)
    }

    /// Boots it; waits for the script's result.
    pub fn run(self, name: &str, timeout: Duration) -> Result<NestedResult> {
        let img = image()?;
        let dir = work_dir(name)?;
        let initrd = dir.join("l1-initramfs.cpio.zst");
        std::fs::write(&initrd, initramfs::compress(&self.archive.to_cpio())?)?;
        let mut opts = QemuOptions::new(Boot::Direct { kernel: img.bz_image.clone(), initrd }, &dir);
        opts.memory_mib = self.memory_mib;
        opts.cpus = self.cpus;
        opts.snapshot_drives = self.drives.clone();
        // Without address randomisation, System.map names the addresses
        // a hang report shows.
        opts.append = "quiet nokaslr".into();
        opts.emulator = self.emulator.clone();
        let monitor = dir.join("monitor.sock");
        opts.monitor_socket = Some(monitor.clone());
        let mut vm = Appliance::boot_until(name, opts, "NESTED-START")?;
        self.wait(&mut vm, timeout, &monitor)
    }

    fn wait(&self, vm: &mut Appliance, timeout: Duration, monitor: &Path) -> Result<NestedResult> {
        vm.expect("NESTED-START", timeout)?;
        let deadline = Instant::now() + timeout;
        let mut silence = Silence::new(vm);
        let out = loop {
            let slice = SILENCE_STEP.min(deadline.saturating_duration_since(Instant::now()));
            match vm.expect("NESTED-RESULT ", slice) {
                Ok(out) => break out,
                Err(e) if vm.child.try_wait().ok().flatten().is_some() => {
                    return Err(e.context("QEMU exited before the script ended"))
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!("{}{}", silence.report, l1_state(vm, monitor, self.cpus))))
                }
                Err(_) => silence.check(vm, monitor, self.cpus),
            }
        };
        let status_line = vm.expect("\n", Duration::from_secs(30))?;
        let status = status_line.trim().parse().unwrap_or(-1);
        if out.contains("Kernel panic") {
            bail!("the L1 kernel panicked running {:?}:\n{out}", self.script);
        }
        Ok(NestedResult { output: out, status })
    }
}

/// How often a nested run's console is looked at, and how long it may
/// stay still before the L1's state is taken: a nested script's guests
/// print at least every few seconds while they boot.
/// A line for a nested script: the L1's TSC rate, first and refined
/// ("L1-TSC Detected 2594.697 MHz;Refined ... 2596.138 MHz;"). When the two
/// are more than 250 ppm apart, the L1's KVM leaves new vCPUs' TSC
/// multiplier at zero: kvmos-vmm repairs that (`kvmos_vmm::arch::tsc`);
/// another VMM's guest runs with a broken timer and clock.
pub const L1_TSC: &str = r#"echo "L1-TSC $(dmesg | grep -o -E 'Detected [0-9.]+ MHz|Refined TSC clocksource calibration: [0-9.]+ MHz' | tr '\n' ';')""#;

const SILENCE_STEP: Duration = Duration::from_secs(20);
const SILENCE_LIMIT: Duration = Duration::from_secs(180);

/// The L1 console's silence watch. When nothing has come for
/// [`SILENCE_LIMIT`], it takes the L1's state from the L0 QEMU (where
/// the CPUs are, their local APICs and the IO-APIC: an interrupt left in
/// service or pending, a timer not armed), then types a newline on the
/// console: its receive interrupt wakes an L1 that sleeps for want of an
/// interrupt, and says whether the L1 answers at all. What it sees goes to
/// the test's log at once, and into the failure if the run times out.
struct Silence {
    len: usize,
    since: Instant,
    nudged: Option<Instant>,
    report: String,
}

impl Silence {
    fn new(vm: &Appliance) -> Self {
        Self { len: vm.output_len(), since: Instant::now(), nudged: None, report: String::new() }
    }

    /// Says `line` on the test's log now and keeps it for a failure.
    fn say(&mut self, line: String) {
        let line = line.trim_end();
        eprintln!("{line}");
        self.report.push_str(line);
        self.report.push('\n');
    }

    fn check(&mut self, vm: &mut Appliance, monitor: &Path, cpus: u32) {
        let len = vm.output_len();
        if len != self.len {
            if let Some(at) = self.nudged.take() {
                let secs = at.elapsed().as_secs_f64();
                self.say(format!(
                    "[{}] the L1 console came back {secs:.0} s after the newline ({} bytes)",
                    vm.name,
                    len - self.len
                ));
            }
            self.len = len;
            self.since = Instant::now();
            return;
        }
        if self.nudged.is_some() || self.since.elapsed() < SILENCE_LIMIT {
            return;
        }
        let secs = self.since.elapsed().as_secs_f64();
        self.say(format!(
            "[{}] the L1 console has been silent for {secs:.0} s; {}",
            vm.name,
            l1_state(vm, monitor, cpus)
        ));
        let typed = vm.send("\n").map_or_else(|e| format!(" (could not type it: {e:#})"), |()| String::new());
        self.say(format!("[{}] typed a newline on the L1 console{typed}", vm.name));
        self.nudged = Some(Instant::now());
    }
}

/// The L1's state, for a script that never ended or went quiet: each
/// CPU's instruction pointer, three times a second apart, with the L1
/// kernel's function there (from the build's System.map), then each CPU's
/// local APIC (interrupts in service and pending, the timer) and the
/// IO-APIC. Spinning, idle or stuck in one place tells an L1 hang from a
/// slow or waiting script; an in-service bit that stays set blocks every
/// interrupt below it.
fn l1_state(vm: &Appliance, monitor: &Path, cpus: u32) -> String {
    let mut report = l1_cpus(vm, monitor);
    for cpu in 0..cpus {
        match vm.monitor(monitor, &format!("info lapic {cpu}")) {
            Ok(text) => report.push_str(&interesting_lines(&text, &["dumping", "LVTT", "Timer", "ISR", "IRR", "APR"])),
            Err(e) => report.push_str(&format!("  info lapic {cpu}: {e:#}\n")),
        }
    }
    match vm.monitor(monitor, "info pic") {
        Ok(text) => report.push_str(&interesting_lines(&text, &["pin 4 ", "IRR", "pic"])),
        Err(e) => report.push_str(&format!("  info pic: {e:#}\n")),
    }
    report
}

/// The lines of a monitor answer that start with one of `keys` (after
/// blanks), indented.
fn interesting_lines(text: &str, keys: &[&str]) -> String {
    text.lines().map(str::trim).filter(|l| keys.iter().any(|k| l.starts_with(k))).map(|l| format!("  {l}\n")).collect()
}

/// Where the L1's CPUs are: each CPU's instruction pointer, three times a
/// second apart, named from the build's System.map.
fn l1_cpus(vm: &Appliance, monitor: &Path) -> String {
    let map = std::fs::read_to_string(Layout::this_checkout().system_map()).map(|m| SymbolMap::parse(&m));
    let mut report = String::from("the L1's CPUs:\n");
    for sample in 0..3 {
        if sample > 0 {
            std::thread::sleep(Duration::from_secs(1));
        }
        match vm.monitor(monitor, "info registers -a") {
            Ok(regs) => {
                for (cpu, rip) in instruction_pointers(&regs) {
                    let name = map.as_ref().ok().and_then(|m| m.name(rip)).unwrap_or_else(|| "?".into());
                    report.push_str(&format!("  sample {sample}: CPU {cpu} at {rip:#x} {name}\n"));
                }
            }
            Err(e) => report.push_str(&format!("  sample {sample}: the QEMU monitor: {e:#}\n")),
        }
    }
    report
}

/// (CPU, RIP) for each CPU in `info registers -a` output.
fn instruction_pointers(text: &str) -> Vec<(u32, u64)> {
    let mut cpu = 0;
    let mut out = Vec::new();
    for word in text.split_whitespace() {
        if let Some(n) = word.strip_prefix("CPU#") {
            cpu = n.trim_end_matches(':').parse().unwrap_or(cpu);
        } else if let Some(hex) = word.strip_prefix("RIP=") {
            if let Ok(rip) = u64::from_str_radix(hex, 16) {
                out.push((cpu, rip));
            }
        }
    }
    out
}

/// A kernel's text symbols, sorted by address.
struct SymbolMap(Vec<(u64, String)>);

impl SymbolMap {
    fn parse(system_map: &str) -> Self {
        let mut symbols: Vec<(u64, String)> = system_map
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let addr = u64::from_str_radix(w.next()?, 16).ok()?;
                let kind = w.next()?;
                let name = w.next()?;
                matches!(kind, "T" | "t" | "W" | "w").then(|| (addr, name.to_string()))
            })
            .collect();
        symbols.sort();
        Self(symbols)
    }

    /// `function+offset` for `addr`, if it is in the kernel's text.
    fn name(&self, addr: u64) -> Option<String> {
        let i = self.0.partition_point(|(a, _)| *a <= addr).checked_sub(1)?;
        let (start, name) = &self.0[i];
        let last = self.0.last()?.0;
        (addr <= last + 0x10000).then(|| format!("{name}+{:#x}", addr - start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruction_pointers_are_named_from_the_symbol_table() {
        let regs =
            "CPU#0\nRAX=0000000000000000 RBX=ffffffff82013940\nRIP=ffffffff81a2b3c4 RFL=00000246 [---Z-P-] CPL=0\n\
                    CPU#1\nRAX=0000000000000001\nRIP=ffffffff81000010 RFL=00000002\n";
        assert_eq!(instruction_pointers(regs), vec![(0, 0xffffffff81a2b3c4), (1, 0xffffffff81000010)]);
        let map = SymbolMap::parse(
            "ffffffff81000000 T _stext\nffffffff81a2b300 t default_idle\nffffffff81a2b400 T arch_cpu_idle\n\
             ffffffff82000000 D some_data\n",
        );
        assert_eq!(map.name(0xffffffff81a2b3c4).as_deref(), Some("default_idle+0xc4"));
        assert_eq!(map.name(0xffffffff81000010).as_deref(), Some("_stext+0x10"));
        assert_eq!(map.name(0x1000), None, "below the kernel: user space");
    }

    #[test]
    fn the_interrupt_state_keeps_the_lines_that_tell_a_lost_interrupt() {
        let lapic = "dumping local APIC state for CPU 0 \n\nLVT0\t 0x00010000 masked\n\
                     LVTT\t 0x000000ec one-shot (vec 236)\nTimer\t DCR=0x3 current_count = 3065643\n\
                     ISR\t (none)\nIRR\t 0x31\n\nAPR 0x00 TPR 0x00 PPR 0x00\n";
        assert_eq!(
            interesting_lines(lapic, &["dumping", "LVTT", "Timer", "ISR", "IRR"]),
            "  dumping local APIC state for CPU 0\n  LVTT\t 0x000000ec one-shot (vec 236)\n  \
             Timer\t DCR=0x3 current_count = 3065643\n  ISR\t (none)\n  IRR\t 0x31\n"
        );
    }
}
