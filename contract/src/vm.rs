//! `vm.json`: one VM's configuration, which the panel writes into the VM's
//! run directory and kvmos-vmm reads (`--config`; its flags fill the same
//! struct). Unknown fields are refused, so a typo never silently drops a
//! setting. kvmos-vmm checks a configuration against the host before any
//! vCPU runs (`kvmos_vmm::config::Validate`); `vmm/openapi.yaml` documents
//! every field.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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
    /// Who may use the VM's sockets (API, console, VNC; mode 0600): the
    /// supervisor's user, when it is not the one the VMM starts as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_owner: Option<Owner>,
}

/// A user and group, by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl VmConfig {
    /// Reads a configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ReadError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ReadError::File(path.display().to_string(), e.to_string()))?;
        Self::from_json(&text)
    }

    /// Parses a configuration; unknown fields are an error.
    pub fn from_json(text: &str) -> Result<Self, ReadError> {
        serde_json::from_str(text).map_err(|e| ReadError::Parse(e.to_string()))
    }

    /// The configuration as the file holds it.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Why a configuration could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The file (its path and the system's error).
    File(String, String),
    /// The JSON, with serde's message (which names the field).
    Parse(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::File(path, why) => write!(f, "cannot read {path}: {why}"),
            ReadError::Parse(why) => write!(f, "not a VM configuration: {why}"),
        }
    }
}

impl std::error::Error for ReadError {}

/// The kernel's command-line limit (`COMMAND_LINE_SIZE` on x86), NUL
/// included.
pub const CMDLINE_MAX_SIZE: usize = 2048;

/// The longest argument the VMM appends to a direct boot's command line
/// for each virtio-mmio device (`virtio_mmio.device=4K@0xd0001000:12`
/// and a space).
pub const DEVICE_ARG_MAX: usize = 40;

/// How long a direct boot's own command line may be with `devices` virtio
/// devices: the kernel's 2048 bytes less the NUL and the device arguments
/// the VMM appends. The panel checks the same limit.
pub fn cmdline_room(devices: usize) -> usize {
    (CMDLINE_MAX_SIZE - 1).saturating_sub(devices * DEVICE_ARG_MAX)
}

/// Where cgroup v2 is mounted; a VM's cgroup must be below it.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The most vCPUs a VM may have (APIC IDs fit a byte, 255 is broadcast).
pub const MAX_VCPUS: u64 = 254;

/// The `cpu.weight` values cgroup v2 takes (100 is its default).
pub const CPU_WEIGHT_RANGE: std::ops::RangeInclusive<u32> = 1..=10_000;

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
    /// The cgroup's `cpu.weight`: the VM's share of the CPUs against the
    /// other VMs when they are all busy (1 to 10000; the kernel's 100 when
    /// absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u32>,
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
    pub fn code_path(&self) -> Result<PathBuf, MissingFirmware> {
        use crate::firmware::{find, OVMF_CODE_FILE, SEABIOS_FILE};
        let (given, file, package) = match self {
            FirmwareConfig::Bios { path } => (path, SEABIOS_FILE, "seabios"),
            FirmwareConfig::Uefi { code, .. } => (code, OVMF_CODE_FILE, "ovmf"),
        };
        match given {
            Some(p) => Ok(p.clone()),
            None => find(file).ok_or(MissingFirmware { file, package }),
        }
    }
}

/// The installed firmware a configuration asks for is not there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingFirmware {
    pub file: &'static str,
    /// The Debian package that installs it.
    pub package: &'static str,
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
    /// How the guest sees the file: a virtio disk (the default), the
    /// medium in a CD-ROM drive, or an IDE hard disk.
    #[serde(default, skip_serializing_if = "DiskMedia::is_disk")]
    pub media: DiskMedia,
}

/// What a disk entry is to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskMedia {
    /// A virtio-blk disk.
    #[default]
    Disk,
    /// An ATAPI CD-ROM drive on the PC's IDE controller, with the file (an
    /// ISO image) as its medium, always read-only: what firmware boots El
    /// Torito ISOs from and what installers expect. Firmware boot only.
    Cdrom,
    /// An ATA hard disk on the PC's IDE controller, for guests without
    /// virtio drivers (a Windows installer). Slower than virtio: every
    /// sector goes through port I/O. Firmware boot only.
    Ide,
}

impl DiskMedia {
    pub fn is_disk(&self) -> bool {
        *self == DiskMedia::Disk
    }
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

/// Whether the file at `path` is a kernel kvmos-vmm boots directly: an ELF
/// vmlinux or a bzImage (the `HdrS` boot protocol magic).
pub fn is_kernel(path: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut head = vec![0u8; 0x210];
    let n = f.read(&mut head).unwrap_or(0);
    head.truncate(n);
    Ok(head.starts_with(b"\x7fELF") || head.get(0x202..0x206) == Some(b"HdrS"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `fixtures/vm.json` is a UEFI VM with every field the panel writes:
    /// the VMM reads exactly what the panel wrote, and writing it again
    /// gives the same file.
    #[test]
    fn a_full_vm_json_reads_back_field_for_field_and_writes_the_same_text() {
        let text = include_str!("../fixtures/vm.json");
        let c = VmConfig::from_json(text).unwrap();
        assert_eq!(c.vm_id, "web1");
        assert_eq!(
            c.firmware,
            Some(FirmwareConfig::Uefi { code: None, vars: "/var/lib/kvmos/vms/3f2a.OVMF_VARS.fd".into() })
        );
        assert_eq!(c.boot_order, vec![1, 0]);
        assert_eq!((c.memory_mib, c.vcpus), (2048, 2));
        let media: Vec<DiskMedia> = c.disks.iter().map(|d| d.media).collect();
        assert_eq!(media, vec![DiskMedia::Disk, DiskMedia::Cdrom, DiskMedia::Ide]);
        assert!(c.disks[1].read_only);
        assert_eq!(c.nets[0].mac.as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!(c.serial, SerialConfig::Socket { path: "/run/kvmos/vms/3f2a/console.sock".into() });
        let jail = c.jail.clone().unwrap();
        assert_eq!((jail.uid, jail.gid, jail.cpu_weight), (100_001, 100_001, Some(200)));
        assert_eq!(c.socket_owner, Some(Owner { uid: 990, gid: 990 }));
        assert_eq!(c.to_json(), text.trim_end(), "the panel's writer gives the fixture's text");
        assert_eq!(VmConfig::from_json(&c.to_json()).unwrap(), c);
    }

    #[test]
    fn a_misspelt_field_is_refused_not_dropped() {
        let text = include_str!("../fixtures/vm.json").replace("\"cpu_weight\"", "\"cpu_weigth\"");
        let e = VmConfig::from_json(&text).unwrap_err().to_string();
        assert!(e.contains("cpu_weigth"), "{e}");
    }

    #[test]
    fn a_minimal_vm_json_gets_the_documented_defaults() {
        let c = VmConfig::from_json(r#"{"kernel": "/k"}"#).unwrap();
        assert_eq!((c.vm_id.as_str(), c.memory_mib, c.vcpus, c.rng), ("vm", 128, 1, true));
        assert_eq!(c.cmdline, "console=ttyS0 reboot=k panic=1");
        assert_eq!(c.serial, SerialConfig::None);
        assert!(c.jail.is_none() && c.disks.is_empty() && c.nets.is_empty());
    }
}
