//! The pseudo file systems every later step relies on.

use nix::mount::{mount, MsFlags};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

struct Mount {
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC);

/// In order: later entries live inside earlier ones.
const MOUNTS: &[Mount] = &[
    Mount { target: "/proc", fstype: "proc", flags: NOSUID_NODEV_NOEXEC, data: None },
    Mount { target: "/sys", fstype: "sysfs", flags: NOSUID_NODEV_NOEXEC, data: None },
    // cgroup v2: each VMM's memory, process and CPU limits (kvmos.slice).
    Mount { target: "/sys/fs/cgroup", fstype: "cgroup2", flags: NOSUID_NODEV_NOEXEC, data: None },
    Mount { target: "/dev", fstype: "devtmpfs", flags: MsFlags::MS_NOSUID, data: Some("mode=0755") },
    Mount {
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("mode=0620,ptmxmode=0666"),
    },
    Mount {
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    Mount {
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
];

/// Mounts each pseudo file system; one that fails is reported and the rest
/// are still mounted.
pub fn mount_all() -> Result<(), String> {
    let mut failed = Vec::new();
    for m in MOUNTS {
        if is_mounted(m.target) {
            continue;
        }
        let _ = std::fs::create_dir_all(m.target);
        if let Err(e) = mount(Some(m.fstype), m.target, Some(m.fstype), m.flags, m.data) {
            failed.push(format!("{} ({}): {e}", m.target, m.fstype));
        }
    }
    // UEFI variables, when the firmware booted us (the boot entries an
    // admin may want to inspect).
    let efivars = "/sys/firmware/efi/efivars";
    if Path::new("/sys/firmware/efi").exists() && !is_mounted(efivars) {
        if let Err(e) = mount(Some("efivarfs"), efivars, Some("efivarfs"), NOSUID_NODEV_NOEXEC, None::<&str>) {
            failed.push(format!("{efivars} (efivarfs): {e}"));
        }
    }
    // What udev's default rules would do: anyone may open the TUN/TAP
    // device (creating or attaching to a tap still takes CAP_NET_ADMIN), so
    // the panel, which is not root, can make the VMs' taps.
    if let Err(e) = std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(0o666)) {
        failed.push(format!("/dev/net/tun (mode 0666): {e}"));
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("cannot mount {}", failed.join(", ")))
    }
}

fn is_mounted(target: &str) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    Path::new(target).exists() && mounts.lines().any(|l| l.split_whitespace().nth(1) == Some(target))
}
