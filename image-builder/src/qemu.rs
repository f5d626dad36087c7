//! Booting the appliance under QEMU: the one place that knows QEMU's command
//! line, used by `kvmos-image run` and by the qemu-test crate.
//!
//! Always TCG with `-cpu max`: QEMU's KVM acceleration does not boot kernels on
//! the development machines, and TCG's `-cpu max` hands the guest AMD SVM, so
//! `/dev/kvm` works inside the appliance and VMs run nested.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const QEMU: &str = "qemu-system-x86_64";
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// The panel's port inside the appliance.
pub const PANEL_PORT: u16 = 443;

/// How the appliance is started.
#[derive(Debug, Clone)]
pub enum Boot {
    /// `-kernel/-initrd`, like PXE or a bootloader would.
    Direct { kernel: PathBuf, initrd: PathBuf },
    /// `kvmos.img` under OVMF, like a server booting its disk. The image is
    /// opened with `snapshot=on`, so the built image is never modified.
    Uefi { disk: PathBuf },
}

/// Where the serial console goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serial {
    /// The terminal, multiplexed with the QEMU monitor (Ctrl-A C; Ctrl-A X quits).
    Terminal,
    /// QEMU's stdin/stdout, for a program to read and write.
    Pipe,
}

#[derive(Debug, Clone)]
pub struct QemuOptions {
    pub boot: Boot,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Host port forwarded (on 127.0.0.1) to the panel's port 443.
    pub panel_host_port: Option<u16>,
    /// More host ports forwarded (on 127.0.0.1), each to an address on the
    /// appliance's network: `(port, "10.0.2.50:22")` reaches a VM on br0.
    pub forwards: Vec<(u16, String)>,
    /// Appended to the kernel command line (direct boot only: a UEFI boot
    /// uses the command line built into the kernel).
    pub append: String,
    /// Extra raw disks, attached as virtio-blk after the boot disk.
    pub drives: Vec<PathBuf>,
    /// Raw disks attached after those, whose writes QEMU keeps in a
    /// temporary overlay and drops at exit (the file never changes).
    pub snapshot_drives: Vec<PathBuf>,
    /// A Unix socket for the human monitor protocol (e.g. `system_powerdown`).
    pub monitor_socket: Option<PathBuf>,
    pub serial: Serial,
    /// A folder for QEMU's per-run files (the UEFI variable store).
    pub run_dir: PathBuf,
    /// Extra QEMU devices (`-device` values), e.g. `i6300esb` for a watchdog.
    pub devices: Vec<String>,
    /// Another build of QEMU than the installed `qemu-system-x86_64`.
    pub emulator: Option<Emulator>,
}

/// A QEMU binary other than the installed one (which finds the installed
/// package's firmware and option ROMs itself).
#[derive(Debug, Clone)]
pub struct Emulator {
    pub program: PathBuf,
}

impl QemuOptions {
    pub fn new(boot: Boot, run_dir: &Path) -> Self {
        Self {
            boot,
            memory_mib: 2048,
            cpus: 2,
            panel_host_port: None,
            forwards: Vec::new(),
            append: String::new(),
            drives: Vec::new(),
            snapshot_drives: Vec::new(),
            monitor_socket: None,
            serial: Serial::Pipe,
            run_dir: run_dir.to_path_buf(),
            devices: Vec::new(),
            emulator: None,
        }
    }

    /// The kernel command line of a direct boot: `tsc=reliable`, then
    /// [`append`](Self::append).
    ///
    /// TCG's `-cpu max` is an AMD CPU without the invariant-TSC bit (TCG
    /// drops `+invtsc`), so with two CPUs the kernel takes its TSCs as
    /// unsynchronized and marks the TSC unstable. Its KVM then runs VMs in
    /// TSC catch-up mode, without the master clock, holding a guest's TSC
    /// while its vCPU thread is off the CPU. TCG's TSC is one clock for all
    /// vCPUs, read from the host's and never going back, so it is reliable,
    /// and the flag says so.
    /// (A UEFI boot has the kernel's built-in command line, made for servers,
    /// whose TSCs are invariant.)
    pub fn kernel_arguments(&self) -> String {
        format!("tsc=reliable {}", self.append).trim_end().to_string()
    }

    /// The QEMU command for these options.
    pub fn command(&self) -> Result<Command> {
        let mut c = Command::new(self.emulator.as_ref().map_or(Path::new(QEMU), |e| e.program.as_path()));
        c.args(["-accel", "tcg", "-cpu", "max", "-nodefaults", "-no-user-config", "-display", "none"]);
        c.arg("-m").arg(self.memory_mib.to_string());
        c.arg("-smp").arg(self.cpus.to_string());
        // Entropy from the host, so nothing in the appliance waits for the
        // random pool (DESIGN.md: TLS keys and HashMap seeds would block).
        c.args(["-device", "virtio-rng-pci"]);
        let mut netdev = String::from("user,id=uplink");
        if let Some(port) = self.panel_host_port {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{port}-:{PANEL_PORT}"));
        }
        for (port, to) in &self.forwards {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{port}-{to}"));
        }
        c.arg("-netdev").arg(netdev);
        c.args(["-device", "virtio-net-pci,netdev=uplink"]);
        match self.serial {
            Serial::Terminal => c.args(["-serial", "mon:stdio"]),
            Serial::Pipe => c.args(["-serial", "stdio"]),
        };
        match &self.monitor_socket {
            Some(sock) => c.arg("-monitor").arg(format!("unix:{},server=on,wait=off", sock.display())),
            None if self.serial == Serial::Pipe => c.args(["-monitor", "none"]),
            None => &mut c,
        };
        match &self.boot {
            Boot::Direct { kernel, initrd } => {
                c.arg("-kernel").arg(kernel).arg("-initrd").arg(initrd);
                c.arg("-append").arg(self.kernel_arguments());
            }
            Boot::Uefi { disk } => {
                if !self.append.is_empty() {
                    bail!("a UEFI boot uses the command line built into the kernel; extra arguments ({}) need a direct boot", self.append);
                }
                std::fs::create_dir_all(&self.run_dir)?;
                let vars = self.run_dir.join("OVMF_VARS.fd");
                std::fs::copy(OVMF_VARS, &vars)
                    .with_context(|| format!("cannot copy {OVMF_VARS}: install the package ovmf"))?;
                c.arg("-drive").arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"));
                c.arg("-drive").arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()));
                c.arg("-drive").arg(format!("if=none,id=boot,format=raw,snapshot=on,file={}", disk.display()));
                c.args(["-device", "virtio-blk-pci,drive=boot,bootindex=0"]);
            }
        }
        for d in &self.devices {
            c.arg("-device").arg(d);
        }
        let snapshot =
            self.drives.iter().map(|d| (d, "")).chain(self.snapshot_drives.iter().map(|d| (d, ",snapshot=on")));
        for (i, (d, extra)) in snapshot.enumerate() {
            c.arg("-drive").arg(format!("if=none,id=disk{i},format=raw{extra},file={}", d.display()));
            c.arg("-device").arg(format!("virtio-blk-pci,drive=disk{i}"));
        }
        Ok(c)
    }
}

/// A free TCP port on 127.0.0.1 (for the panel forward), found by binding.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a local port")?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(c: &Command) -> Vec<String> {
        c.get_args().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn direct_boot_uses_tcg_max_rng_and_forward() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = QemuOptions::new(Boot::Direct { kernel: "k".into(), initrd: "i".into() }, dir.path());
        o.panel_host_port = Some(8443);
        o.forwards = vec![(2222, "10.0.2.50:22".into())];
        o.append = "kvmos.debug".into();
        let a = args(&o.command().unwrap()).join(" ");
        assert!(a.contains("-accel tcg -cpu max"), "{a}");
        assert!(a.contains("virtio-rng-pci"), "{a}");
        assert!(a.contains("hostfwd=tcp:127.0.0.1:8443-:443,hostfwd=tcp:127.0.0.1:2222-10.0.2.50:22"), "{a}");
        assert!(a.contains("-kernel k -initrd i -append tsc=reliable kvmos.debug"), "{a}");
    }

    #[test]
    fn uefi_boot_never_writes_the_image_and_refuses_append() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = QemuOptions::new(Boot::Uefi { disk: "kvmos.img".into() }, dir.path());
        let a = args(&o.command().unwrap()).join(" ");
        assert!(a.contains("snapshot=on,file=kvmos.img"), "{a}");
        assert!(a.contains(OVMF_CODE), "{a}");
        o.append = "x".into();
        assert!(o.command().is_err());
    }
}
