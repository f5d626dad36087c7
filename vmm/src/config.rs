//! The configuration of one VM: `vm.json` (`--config`) or flags, typed in
//! `kvmos_contract::vm` (re-exported here), which the panel shares.
//!
//! [`Validate::validate`] checks everything that can be checked before a
//! vCPU runs and returns the first problem as an error naming the field and
//! the fix.

pub use kvmos_contract::exit::ExitRecord;
pub use kvmos_contract::vm::*;

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
    /// disks[{index}].media: CD-ROM drives and IDE disks are part of the PC machine; boot with firmware (bios or uefi) to use one
    CdromWithKernel { index: usize },
    /// disks[{index}].media: a VM has at most {max} CD-ROM drives and IDE disks together (the IDE controller's four positions); make the others virtio disks
    TooManyCdroms { index: usize, max: usize },
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
    /// jail.cpu_weight: {0} is out of range; give 1 to 10000 (100 is an ordinary share)
    JailCpuWeight(u32),
}

impl From<ReadError> for ConfigError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::File(path, why) => ConfigError::ReadFile(path, why),
            ReadError::Parse(why) => ConfigError::Parse(why),
        }
    }
}

impl From<MissingFirmware> for ConfigError {
    fn from(m: MissingFirmware) -> Self {
        ConfigError::FirmwareNotInstalled { file: m.file, package: m.package }
    }
}

/// The VMM's checks of a configuration against this host.
pub trait Validate {
    /// Static checks: files, counts and sizes against the host's limits.
    /// Locks and TAP devices are checked when they are opened, which is
    /// still before any vCPU runs.
    fn validate(&self, limits: &HostLimits) -> Result<(), ConfigError>;
}

impl Validate for VmConfig {
    fn validate(&self, limits: &HostLimits) -> Result<(), ConfigError> {
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
                check_firmware(self, firmware)?;
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
            if let Some(w) = j.cpu_weight.filter(|w| !kvmos_contract::vm::CPU_WEIGHT_RANGE.contains(w)) {
                return Err(ConfigError::JailCpuWeight(w));
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
        let mut cdroms = 0;
        for (index, d) in self.disks.iter().enumerate() {
            if d.media != DiskMedia::Disk {
                if self.firmware.is_none() {
                    return Err(ConfigError::CdromWithKernel { index });
                }
                cdroms += 1;
                if cdroms > crate::devices::ide::POSITIONS.len() {
                    return Err(ConfigError::TooManyCdroms { index, max: crate::devices::ide::POSITIONS.len() });
                }
            }
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

fn check_firmware(config: &VmConfig, firmware: &FirmwareConfig) -> Result<(), ConfigError> {
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
    for (index, &disk) in config.boot_order.iter().enumerate() {
        if disk >= config.disks.len() {
            return Err(ConfigError::BootOrderNoDisk { index, disk, count: config.disks.len() });
        }
        if !seen.insert(disk) {
            return Err(ConfigError::BootOrderTwice { index, disk });
        }
    }
    Ok(())
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

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
        c.disks.push(DiskConfig {
            path: dir.path().join("missing.img"),
            read_only: false,
            id: None,
            media: Default::default(),
        });
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
        c.disks.push(DiskConfig { path: k.clone(), read_only: true, id: None, media: Default::default() });
        c.boot_order = vec![0, 1];
        assert_eq!(
            c.validate(&limits()).unwrap_err().to_string(),
            "boot_order[1]: disk 1 does not exist; the VM has 1 disk(s), numbered from 0"
        );
        c.boot_order = vec![0, 0];
        assert!(matches!(c.validate(&limits()), Err(ConfigError::BootOrderTwice { index: 1, disk: 0 })));

        // IDE drives: CD-ROMs and hard disks share the controller's four
        // positions, and only the PC machine has one.
        let ide = |media| DiskConfig { path: k.clone(), read_only: false, id: None, media };
        let mut c = pc.clone();
        c.disks = vec![ide(DiskMedia::Ide), ide(DiskMedia::Cdrom), ide(DiskMedia::Ide), ide(DiskMedia::Disk)];
        assert_eq!(c.validate(&limits()), Ok(()));
        c.disks.push(ide(DiskMedia::Ide));
        c.disks.push(ide(DiskMedia::Cdrom));
        assert_eq!(c.validate(&limits()), Err(ConfigError::TooManyCdroms { index: 5, max: 4 }));
        let mut c = json(&format!(r#"{{"kernel":"{}"}}"#, k.display()));
        c.disks = vec![ide(DiskMedia::Disk), ide(DiskMedia::Ide)];
        let e = c.validate(&limits()).unwrap_err();
        assert_eq!(e, ConfigError::CdromWithKernel { index: 1 });
        assert!(e.to_string().contains("boot with firmware"), "{e}");
        assert_eq!(serde_json::from_str::<DiskConfig>(r#"{"path":"/d","media":"ide"}"#).unwrap().media, DiskMedia::Ide);

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
            r#"{"kernel":"/k","initrd":"/i","exit_file":"/e","firmware_log":"/f","api_socket":"/a","vnc_socket":"/v","boot_order":[0],
                "jail":{"uid":1,"gid":1},"socket_owner":{"uid":2,"gid":2}}"#,
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
