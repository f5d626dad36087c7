//! The configuration of one VM: a JSON file (`--config vm.json`) or flags,
//! typed with serde. Unknown fields are rejected, so a typo never silently
//! drops a setting.
//!
//! [`VmConfig::validate`] checks everything that can be checked before a
//! vCPU runs and returns the first problem as an error naming the field and
//! the fix.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One VM, as the panel or an admin describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// A name for logs and the default socket paths.
    #[serde(default = "default_id")]
    pub vm_id: String,
    /// Direct boot: a bzImage, or an ELF vmlinux (booted through PVH when it
    /// has the note). The VM is the lean direct-boot machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// Firmware boot: the VM is a PC (i440FX) that runs SeaBIOS or OVMF,
    /// which boots from the disks. Exactly one of `kernel` and `firmware`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<FirmwareConfig>,
    /// Firmware boot: indices into `disks`, the first to try first. Disks
    /// not listed are tried after these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boot_order: Vec<usize>,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    #[serde(default = "default_vcpus")]
    pub vcpus: u16,
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    #[serde(default)]
    pub nets: Vec<NetConfig>,
    #[serde(default)]
    pub serial: SerialConfig,
    /// The control API's Unix socket.
    #[serde(default)]
    pub api_socket: Option<PathBuf>,
    /// Firmware boot: the VNC server's Unix socket (the screen, keyboard
    /// and mouse); none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnc_socket: Option<PathBuf>,
    /// A virtio-rng device (on unless turned off).
    #[serde(default = "default_true")]
    pub rng: bool,
    /// Firmware boot: where the firmware's debug log (QEMU's debug console,
    /// port 0x402) goes, with the time since the VMM started on each line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_log: Option<PathBuf>,
    /// Where to write `{"code": N, "reason": "..."}` when the VMM ends, so a
    /// supervisor that is not this process's parent learns why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_file: Option<PathBuf>,
    /// The jail the VMM runs in (`jail.rs`). Required: only `kvmos-vmm
    /// --no-jail`, for development, runs without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail: Option<JailConfig>,
}

/// The longest argument the VMM appends to a direct boot's command line
/// for each virtio-mmio device (`virtio_mmio.device=4K@0xd0001000:12`
/// and a space).
pub const DEVICE_ARG_MAX: usize = 40;

/// How long a direct boot's own command line may be with `devices` virtio
/// devices: the kernel's 2048 bytes less the NUL and the device arguments
/// the VMM appends. The panel checks the same limit.
pub fn cmdline_room(devices: usize) -> usize {
    (crate::arch::layout::CMDLINE_MAX_SIZE - 1).saturating_sub(devices * DEVICE_ARG_MAX)
}

/// Where cgroup v2 is mounted; a VM's cgroup must be below it.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The VMM's jail: a user and group of this VM's own (neither may be
/// root, and no other VM may share them), and optionally a cgroup v2
/// leaf, created if missing, whose limits follow the VM's memory and vCPUs
/// (`jail::CgroupLimits`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
}

/// Which firmware a PC-machine VM runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum FirmwareConfig {
    /// SeaBIOS; `path` defaults to the installed `bios-256k.bin`.
    Bios {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<PathBuf>,
    },
    /// OVMF; `code` defaults to the installed `OVMF_CODE_4M.fd`; `vars` is
    /// this VM's own copy of the variable store (`OVMF_VARS_4M.fd`), where
    /// UEFI boot entries are kept.
    Uefi {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<PathBuf>,
        vars: PathBuf,
    },
}

impl FirmwareConfig {
    /// The code image: the configured one or the installed default.
    pub fn code_path(&self) -> Result<PathBuf, ConfigError> {
        use crate::arch::firmware::{find, OVMF_CODE_FILE, SEABIOS_FILE};
        let (given, file, package) = match self {
            FirmwareConfig::Bios { path } => (path, SEABIOS_FILE, "seabios"),
            FirmwareConfig::Uefi { code, .. } => (code, OVMF_CODE_FILE, "ovmf"),
        };
        match given {
            Some(p) => Ok(p.clone()),
            None => find(file).ok_or(ConfigError::FirmwareNotInstalled { file, package }),
        }
    }
}

/// What [`VmConfig::exit_file`] holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub code: i32,
    pub reason: String,
}

impl ExitRecord {
    /// Writes the record next to its final path and renames it in place.
    pub fn write(&self, path: &std::path::Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, path)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// A raw disk image file (or block device).
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    /// The serial the guest reads as the device ID (20 bytes at most);
    /// the file name when absent.
    #[serde(default)]
    pub id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// An existing TAP device, or one the VMM may create (e.g. `vm-web1`).
    pub tap: String,
    /// The guest's MAC.
    #[serde(default)]
    pub mac: Option<String>,
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum SerialConfig {
    /// This process's stdin and stdout, like a terminal.
    Stdio,
    /// A Unix socket any number of clients can attach to.
    Socket { path: PathBuf },
    /// Kept only in the ring buffer (readable through the API).
    #[default]
    None,
}

fn default_id() -> String {
    "vm".into()
}
fn default_cmdline() -> String {
    "console=ttyS0 reboot=k panic=1".into()
}
fn default_memory() -> u64 {
    128
}
fn default_vcpus() -> u16 {
    1
}
fn default_true() -> bool {
    true
}

/// A configuration problem: the field, what is wrong, and the fix.
#[derive(Debug, displaydoc::Display, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// cannot read the configuration file {0}: {1}
    ReadFile(String, String),
    /// the configuration file is not valid: {0}
    Parse(String),
    /// give either kernel (direct Linux boot) or firmware ({{"type": "bios"}} or {{"type": "uefi", "vars": FILE}}) to boot from the disks
    NoBoot,
    /// kernel and firmware: give one of them, not both
    TwoBoots,
    /// {0}: only a direct kernel boot takes it; leave it out with firmware
    KernelOnly(&'static str),
    /// boot_order: only firmware boot has a boot order; leave it out with kernel
    BootOrderWithKernel,
    /// vnc_socket: only a firmware-booted VM has a display; leave it out with kernel
    VncWithKernel,
    /// firmware: {0}
    Firmware(#[from] crate::arch::firmware::FirmwareError),
    /// firmware: {file} is not installed; install Debian's {package} package or give its path
    FirmwareNotInstalled { file: &'static str, package: &'static str },
    /// boot_order[{index}]: disk {disk} does not exist; the VM has {count} disk(s), numbered from 0
    BootOrderNoDisk { index: usize, disk: usize, count: usize },
    /// firmware_log: cannot create {0}: {1}
    FirmwareLog(String, String),
    /// boot_order[{index}]: disk {disk} is listed twice
    BootOrderTwice { index: usize, disk: usize },
    /// kernel: {0} does not exist; give the path of a bzImage or vmlinux
    KernelMissing(String),
    /// kernel: {0} is not a Linux kernel (neither a bzImage nor an ELF vmlinux)
    NotAKernel(String),
    /// initrd: {0} does not exist; give the path of an initramfs or leave initrd out
    InitrdMissing(String),
    /// vcpus: a VM needs at least 1 vCPU
    NoVcpus,
    /// vcpus: {requested} is more than KVM allows here ({max}); use at most {max}
    TooManyVcpus { requested: u64, max: u64 },
    /// memory_mib: {0} MiB is too small; give at least 16
    MemoryTooSmall(u64),
    /// memory_mib: {requested} MiB is more than this host can give ({available} MiB available); lower it or stop other VMs
    MemoryTooLarge { requested: u64, available: u64 },
    /// disks[{index}].path: {path} does not exist; create the image first (e.g. truncate -s 1G {path})
    DiskMissing { index: usize, path: String },
    /// disks[{index}].path: cannot open {path}: {reason}
    DiskOpen { index: usize, path: String, reason: String },
    /// disks[{index}].path: {path} is in use by another VM (it is locked); stop that VM or give a copy
    DiskLocked { index: usize, path: String },
    /// disks[{index}].id: {id:?} is longer than 20 bytes; shorten it
    DiskIdTooLong { index: usize, id: String },
    /// nets[{index}].mac: {mac:?} is not a unicast MAC address like 52:54:00:12:34:56
    BadMac { index: usize, mac: String },
    /// nets[{index}].tap: {tap:?} is not a valid interface name; use 1 to 15 letters, digits, '-' or '_'
    BadTapName { index: usize, tap: String },
    /// nets[{index}].tap: cannot open the TAP device {tap}: {reason} (the VMM needs CAP_NET_ADMIN, or a tap created for its user)
    TapOpen { index: usize, tap: String, reason: String },
    /// --{flag}: {reason}
    Flag { flag: &'static str, reason: String },
    /// cmdline: {len} bytes is too long for a direct boot with {devices} virtio device(s): at most {max} (the kernel takes 2047, and kvmos-vmm adds each device's address); shorten it
    CmdlineTooLong { len: usize, devices: usize, max: usize },
    /// jail: the VMM runs in a jail: give "jail": {{"uid": N, "gid": N}} (a user of this VM's own), or --jail-uid and --jail-gid; on a development host --no-jail runs it without one
    NoJail,
    /// jail.{0}: the VMM never runs as root; give a user of this VM's own
    JailRoot(&'static str),
    /// jail.cgroup: {0} is not under /sys/fs/cgroup; give a cgroup v2 directory such as /sys/fs/cgroup/kvmos.slice/web1
    JailCgroup(String),
}

impl VmConfig {
    /// Reads and parses a JSON configuration file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::ReadFile(path.display().to_string(), e.to_string()))?;
        Self::from_json(&text)
    }

    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        serde_json::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Static checks: files, counts and sizes against the host's limits.
    /// Locks and TAP devices are checked when they are opened, which is still
    /// before any vCPU runs.
    pub fn validate(&self, limits: &HostLimits) -> Result<(), ConfigError> {
        match (&self.kernel, &self.firmware) {
            (None, None) => return Err(ConfigError::NoBoot),
            (Some(_), Some(_)) => return Err(ConfigError::TwoBoots),
            (Some(kernel), None) => {
                check_kernel(kernel)?;
                if let Some(initrd) = &self.initrd {
                    if !initrd.is_file() {
                        return Err(ConfigError::InitrdMissing(initrd.display().to_string()));
                    }
                }
                if !self.boot_order.is_empty() {
                    return Err(ConfigError::BootOrderWithKernel);
                }
                if self.vnc_socket.is_some() {
                    return Err(ConfigError::VncWithKernel);
                }
                let devices = self.disks.len() + self.nets.len() + usize::from(self.rng);
                let max = cmdline_room(devices);
                if self.cmdline.len() > max {
                    return Err(ConfigError::CmdlineTooLong { len: self.cmdline.len(), devices, max });
                }
            }
            (None, Some(firmware)) => {
                if self.initrd.is_some() {
                    return Err(ConfigError::KernelOnly("initrd"));
                }
                self.check_firmware(firmware)?;
            }
        }
        if let Some(j) = &self.jail {
            if j.uid == 0 {
                return Err(ConfigError::JailRoot("uid"));
            }
            if j.gid == 0 {
                return Err(ConfigError::JailRoot("gid"));
            }
            if let Some(c) = &j.cgroup {
                let below = c.strip_prefix(CGROUP_ROOT).is_ok_and(|r| {
                    r.components().count() > 0 && r.components().all(|p| matches!(p, std::path::Component::Normal(_)))
                });
                if !below {
                    return Err(ConfigError::JailCgroup(c.display().to_string()));
                }
            }
        }
        if self.vcpus == 0 {
            return Err(ConfigError::NoVcpus);
        }
        if u64::from(self.vcpus) > limits.max_vcpus {
            return Err(ConfigError::TooManyVcpus { requested: self.vcpus.into(), max: limits.max_vcpus });
        }
        if self.memory_mib < 16 {
            return Err(ConfigError::MemoryTooSmall(self.memory_mib));
        }
        if self.memory_mib > limits.available_mib {
            return Err(ConfigError::MemoryTooLarge { requested: self.memory_mib, available: limits.available_mib });
        }
        for (index, d) in self.disks.iter().enumerate() {
            if !d.path.exists() {
                return Err(ConfigError::DiskMissing { index, path: d.path.display().to_string() });
            }
            if let Some(id) = &d.id {
                if id.len() > 20 {
                    return Err(ConfigError::DiskIdTooLong { index, id: id.clone() });
                }
            }
        }
        for (index, n) in self.nets.iter().enumerate() {
            let name_ok = !n.tap.is_empty()
                && n.tap.len() <= crate::tap::MAX_NAME_LEN
                && n.tap.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !name_ok {
                return Err(ConfigError::BadTapName { index, tap: n.tap.clone() });
            }
            if let Some(mac) = n.mac.as_ref().filter(|m| parse_mac(m).is_none()) {
                return Err(ConfigError::BadMac { index, mac: mac.clone() });
            }
        }
        Ok(())
    }
}

impl VmConfig {
    fn check_firmware(&self, firmware: &FirmwareConfig) -> Result<(), ConfigError> {
        use crate::arch::firmware;
        let code = firmware.code_path()?;
        match firmware {
            FirmwareConfig::Bios { .. } => {
                firmware::load_bios(&code)?;
            }
            FirmwareConfig::Uefi { vars, .. } => {
                let image = firmware::load_uefi_code(&code)?;
                firmware::check_uefi_vars(vars, image.len() as u64)?;
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (index, &disk) in self.boot_order.iter().enumerate() {
            if disk >= self.disks.len() {
                return Err(ConfigError::BootOrderNoDisk { index, disk, count: self.disks.len() });
            }
            if !seen.insert(disk) {
                return Err(ConfigError::BootOrderTwice { index, disk });
            }
        }
        Ok(())
    }
}

/// The most vCPUs a VM may have: APIC IDs are 8 bits without x2APIC
/// interrupt remapping, and 255 is the broadcast ID.
pub const MAX_VCPUS: u64 = 254;

/// What this host allows, read once at start.
#[derive(Debug, Clone, Copy)]
pub struct HostLimits {
    pub max_vcpus: u64,
    pub available_mib: u64,
}

/// The bytes that make a file a kernel we can boot.
fn check_kernel(path: &std::path::Path) -> Result<(), ConfigError> {
    let shown = path.display().to_string();
    match is_kernel(path) {
        Err(_) => Err(ConfigError::KernelMissing(shown)),
        Ok(true) => Ok(()),
        Ok(false) => Err(ConfigError::NotAKernel(shown)),
    }
}

/// Whether the file starts like a kernel kvmos-vmm boots: an ELF vmlinux,
/// or a bzImage (the x86 boot protocol's "HdrS" magic at 0x202).
pub fn is_kernel(path: &std::path::Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut head = vec![0u8; 0x210];
    let n = f.read(&mut head).unwrap_or(0);
    head.truncate(n);
    Ok(head.starts_with(b"\x7fELF") || head.get(0x202..0x206) == Some(b"HdrS"))
}

/// Parses `52:54:00:12:34:56`; refuses multicast addresses.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mac = s.parse::<macaddr::MacAddr6>().ok()?.into_array();
    (mac[0] & 1 == 0).then_some(mac)
}

/// FNV-1a of `seed`: a stable hash for IDs derived from names.
pub fn fnv1a(seed: &str) -> u64 {
    seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// A locally administered unicast MAC derived from `seed` (FNV-1a), the
/// same for the same seed on every host and every run.
pub fn derived_mac(seed: &str) -> [u8; 6] {
    let b = fnv1a(seed).to_le_bytes();
    [0x52, 0x54, 0x00, b[0], b[1], b[2]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HostLimits {
        HostLimits { max_vcpus: 8, available_mib: 1024 }
    }

    fn kernel(dir: &std::path::Path) -> PathBuf {
        let mut k = vec![0u8; 0x400];
        k[0x202..0x206].copy_from_slice(b"HdrS");
        let p = dir.join("bzImage");
        std::fs::write(&p, k).unwrap();
        p
    }

    #[test]
    fn json_with_defaults_parses_and_unknown_fields_are_refused() {
        let c = VmConfig::from_json(r#"{"kernel":"/k","serial":{"mode":"socket","path":"/run/s.sock"}}"#).unwrap();
        assert_eq!(c.memory_mib, 128);
        assert_eq!(c.vcpus, 1);
        assert!(c.rng);
        assert_eq!(c.serial, SerialConfig::Socket { path: "/run/s.sock".into() });
        let e = VmConfig::from_json(r#"{"kernel":"/k","memroy_mib":64}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `memroy_mib`"), "{e}");
    }

    #[test]
    fn each_problem_names_its_field_and_fix() {
        let dir = tempfile::tempdir().unwrap();
        let k = kernel(dir.path());
        let base = VmConfig::from_json(&format!(r#"{{"kernel":"{}"}}"#, k.display())).unwrap();
        assert_eq!(base.validate(&limits()), Ok(()));

        let mut c = base.clone();
        c.kernel = Some(dir.path().join("nope"));
        assert!(c.validate(&limits()).unwrap_err().to_string().starts_with("kernel:"));
        let not_kernel = dir.path().join("text");
        std::fs::write(&not_kernel, b"hello").unwrap();
        c.kernel = Some(not_kernel);
        assert!(matches!(c.validate(&limits()), Err(ConfigError::NotAKernel(_))));

        let mut c = base.clone();
        c.vcpus = 9;
        let e = c.validate(&limits()).unwrap_err().to_string();
        assert_eq!(e, "vcpus: 9 is more than KVM allows here (8); use at most 8");

        let mut c = base.clone();
        c.memory_mib = 4096;
        assert!(c.validate(&limits()).unwrap_err().to_string().starts_with("memory_mib: 4096 MiB is more"));

        let mut c = base.clone();
        c.disks.push(DiskConfig { path: dir.path().join("missing.img"), read_only: false, id: None });
        assert!(c.validate(&limits()).unwrap_err().to_string().starts_with("disks[0].path:"));

        let mut c = base.clone();
        c.nets.push(NetConfig { tap: "tap0".into(), mac: Some("01:00:00:00:00:01".into()) });
        assert!(c.validate(&limits()).unwrap_err().to_string().starts_with("nets[0].mac:"));

        let mut c = base.clone();
        c.nets.push(NetConfig { tap: "tap 0".into(), mac: None });
        assert!(c.validate(&limits()).unwrap_err().to_string().starts_with("nets[0].tap:"));
    }

    fn bios(dir: &std::path::Path) -> PathBuf {
        let mut b = vec![0u8; 64 << 10];
        let n = b.len();
        b[n - 16] = 0xea;
        let p = dir.join("bios.bin");
        std::fs::write(&p, b).unwrap();
        p
    }

    #[test]
    fn the_boot_choice_is_one_of_kernel_and_firmware() {
        let dir = tempfile::tempdir().unwrap();
        let k = kernel(dir.path());
        let b = bios(dir.path());
        let json = |s: &str| VmConfig::from_json(s).unwrap();
        let e = json("{}").validate(&limits()).unwrap_err();
        assert_eq!(e, ConfigError::NoBoot);
        assert!(e.to_string().contains(r#"{"type": "bios"}"#), "{e}");
        let both =
            json(&format!(r#"{{"kernel":"{}","firmware":{{"type":"bios","path":"{}"}}}}"#, k.display(), b.display()));
        assert_eq!(both.validate(&limits()), Err(ConfigError::TwoBoots));

        let pc = json(&format!(r#"{{"firmware":{{"type":"bios","path":"{}"}}}}"#, b.display()));
        assert_eq!(pc.validate(&limits()), Ok(()));
        let mut c = pc.clone();
        c.initrd = Some(k.clone());
        assert_eq!(
            c.validate(&limits()).unwrap_err().to_string(),
            "initrd: only a direct kernel boot takes it; leave it out with firmware"
        );

        let mut c = pc.clone();
        c.disks.push(DiskConfig { path: k.clone(), read_only: true, id: None });
        c.boot_order = vec![0, 1];
        assert_eq!(
            c.validate(&limits()).unwrap_err().to_string(),
            "boot_order[1]: disk 1 does not exist; the VM has 1 disk(s), numbered from 0"
        );
        c.boot_order = vec![0, 0];
        assert!(matches!(c.validate(&limits()), Err(ConfigError::BootOrderTwice { index: 1, disk: 0 })));

        let mut c = pc.clone();
        c.firmware = Some(FirmwareConfig::Bios { path: Some(k.clone()) });
        assert!(c.validate(&limits()).unwrap_err().to_string().starts_with("firmware: "));

        let uefi = json(&format!(
            r#"{{"firmware":{{"type":"uefi","code":"{}","vars":"/nonexistent/VARS.fd"}}}}"#,
            b.display()
        ));
        assert!(uefi.validate(&limits()).unwrap_err().to_string().contains("not an OVMF code image"));
    }

    /// `openapi.yaml` lists exactly the fields a configuration has.
    #[test]
    fn the_openapi_contract_names_every_field() {
        let yaml = include_str!("../openapi.yaml");
        let section = yaml.split("    VmConfig:").nth(1).unwrap().split("\n    Firmware:").next().unwrap();
        let props = section.split_once("\n      properties:\n").unwrap().1;
        let documented: std::collections::BTreeSet<&str> = props
            .lines()
            .filter(|l| l.starts_with("        ") && !l.starts_with("         "))
            .filter_map(|l| l.trim().split(':').next())
            .collect();
        let mut c = VmConfig::from_json(
            r#"{"kernel":"/k","initrd":"/i","exit_file":"/e","firmware_log":"/f","api_socket":"/a","vnc_socket":"/v","boot_order":[0]}"#,
        )
        .unwrap();
        c.firmware = Some(FirmwareConfig::Bios { path: None });
        let json = serde_json::to_value(&c).unwrap();
        let fields: std::collections::BTreeSet<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(documented, fields);
    }

    #[test]
    fn derived_macs_are_stable_unicast_and_differ_by_seed() {
        let a = derived_mac("web1/0");
        assert_eq!(a, derived_mac("web1/0"));
        assert_ne!(a, derived_mac("web2/0"));
        assert_eq!(a[0] & 1, 0);
        assert_eq!(&a[..3], &[0x52, 0x54, 0x00]);
    }
}
