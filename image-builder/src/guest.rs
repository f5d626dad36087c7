//! The bundled demo guest: the guest kernel plus a busybox initramfs that
//! boots to a shell on the serial console.
//!
//! It is what an admin starts first from the panel, and what the tests boot
//! inside the appliance. Its init brings up networking by DHCP when it has a
//! NIC, and powers off on the ACPI power button (busybox acpid), so "shut
//! down" from the panel is clean.

use crate::initramfs::Archive;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The line the guest prints when its shell is ready; tests wait for it.
pub const READY_LINE: &str = "kvmos demo guest ready";

/// The kernel command line the demo guest is booted with. `reboot=k` makes
/// the guest reset through the i8042, which the VMM watches; `panic=1` turns
/// a guest panic into a reset instead of a hang.
pub const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off quiet";

/// `/usr/share/kvmos/guests/demo/guest.json`: how to boot the files next to it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GuestDescriptor {
    pub name: String,
    pub description: String,
    pub kernel: String,
    pub initrd: String,
    pub cmdline: String,
    pub memory_mib: u32,
    pub vcpus: u32,
}

const INITTAB: &str = "\
::sysinit:/etc/init.d/rcS
::respawn:-/bin/cttyhack /bin/sh -l
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/umount -a -r
";

const RCS: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /tmp /run
mount -t devpts devpts /dev/pts
hostname demo
ip link set lo up
for dev in /sys/class/net/eth*; do
    [ -e "$dev" ] || continue
    udhcpc -b -q -t 5 -i "${dev##*/}" -s /etc/udhcpc.script >/dev/null 2>&1 &
done
# acpid logs and keeps a pid file; both need a writable place.
[ -d /dev/input ] && acpid -c /etc/acpi -l /tmp/acpid.log -p /run/acpid.pid
echo "kvmos demo guest ready: $(uname -sr), type 'poweroff' to stop"
"#;

const PROFILE: &str = "export PS1='demo:\\w# '\nexport PATH=/bin:/sbin:/usr/bin:/usr/sbin\n";

/// udhcpc calls this with the lease in its environment.
const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
deconfig)
    ip addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    if [ -n "$router" ]; then
        ip route add default via "${router%% *}" dev "$interface"
    fi
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    ;;
esac
"#;

/// busybox acpid runs /etc/acpi/PWRF/00000080 when the power button is pressed.
const POWER_BUTTON: &str = "#!/bin/sh\npoweroff\n";

/// The initramfs of the demo guest, from a static busybox binary.
pub fn initramfs(busybox: &Path) -> Result<Archive> {
    let busybox_bytes = std::fs::read(busybox).with_context(|| format!("cannot read {}", busybox.display()))?;
    let mut a = Archive::new();
    a.file("/bin/busybox", 0o755, busybox_bytes)?;
    // Only the links init needs before `busybox --install`: the rest of the
    // applets are linked at first boot to keep the archive small and the
    // applet list whatever the host's busybox provides.
    for applet in ["sh", "mount", "mkdir", "hostname", "ip", "udhcpc", "acpid", "cttyhack", "umount", "echo", "uname"] {
        a.symlink(&format!("/bin/{applet}"), "busybox")?;
    }
    a.symlink("/sbin/init", "/bin/busybox")?;
    a.symlink("/init", "/bin/busybox")?;
    a.file("/etc/inittab", 0o644, INITTAB.into())?;
    a.file(
        "/etc/init.d/rcS",
        0o755,
        format!("#!/bin/sh\n/bin/busybox --install -s\n{}", RCS.trim_start_matches("#!/bin/sh\n")).into_bytes(),
    )?;
    a.file("/etc/profile", 0o644, PROFILE.into())?;
    a.file("/etc/udhcpc.script", 0o755, UDHCPC_SCRIPT.into())?;
    a.file("/etc/acpi/PWRF/00000080", 0o755, POWER_BUTTON.into())?;
    a.file("/etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n".to_vec())?;
    a.file("/etc/group", 0o644, b"root:x:0:\n".to_vec())?;
    for d in
        ["/proc", "/sys", "/dev", "/tmp", "/run", "/root", "/usr/bin", "/usr/sbin", "/sbin", "/var/log", "/var/run"]
    {
        a.dir(d, 0o755)?;
    }
    a.char_dev("/dev/console", 0o600, 5, 1)?;
    a.char_dev("/dev/null", 0o666, 1, 3)?;
    Ok(a)
}

pub fn descriptor() -> GuestDescriptor {
    GuestDescriptor {
        name: "demo".into(),
        description: "Busybox shell on the serial console, DHCP on its first NIC".into(),
        kernel: "bzImage".into(),
        initrd: "initramfs.cpio.zst".into(),
        cmdline: CMDLINE.into(),
        memory_mib: 128,
        vcpus: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_archive_has_init_console_and_busybox() {
        let dir = tempfile::tempdir().unwrap();
        let bb = dir.path().join("busybox");
        std::fs::write(&bb, b"\x7fELF fake for the archive layout").unwrap();
        let cpio = initramfs(&bb).unwrap().to_cpio();
        let entries = crate::initramfs::list(&cpio).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        for needed in ["init", "bin/busybox", "dev/console", "etc/inittab", "etc/init.d/rcS", "etc/acpi/PWRF/00000080"]
        {
            assert!(names.contains(&needed), "{needed} missing from {names:?}");
        }
        let rcs = entries.iter().find(|e| e.0 == "etc/init.d/rcS").unwrap();
        let rcs = String::from_utf8_lossy(&rcs.2);
        assert!(rcs.starts_with("#!/bin/sh\n/bin/busybox --install -s\n"), "{rcs}");
        assert!(rcs.contains(READY_LINE));
    }
}
