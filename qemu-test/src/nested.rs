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
use std::time::Duration;

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
        opts.append = "quiet".into();
        opts.emulator = self.emulator.clone();
        let mut vm = Appliance::boot_until(name, opts, "NESTED-START")?;
        self.wait(&mut vm, timeout)
    }

    fn wait(&self, vm: &mut Appliance, timeout: Duration) -> Result<NestedResult> {
        vm.expect("NESTED-START", timeout)?;
        let out = vm.expect("NESTED-RESULT ", timeout)?;
        let status_line = vm.expect("\n", Duration::from_secs(30))?;
        let status = status_line.trim().parse().unwrap_or(-1);
        if out.contains("Kernel panic") {
            bail!("the L1 kernel panicked running {:?}:\n{out}", self.script);
        }
        Ok(NestedResult { output: out, status })
    }
}
