//! The data disk: the one place where anything persists (VM definitions and
//! disks, settings, credentials, the TLS key, the audit log).
//!
//! It is found by GPT partition name or ext4 label (`KVMOS_DATA` by default)
//! or by a `/dev` path, checked with e2fsck when the image carries it, and
//! mounted at /var/lib/kvmos with the journal replaying. Safety rules:
//! - a partition that holds anything is never formatted. Only a partition
//!   *named* `KVMOS_DATA` in the GPT whose first 64 KiB are all zero (what
//!   `kvmos-image build --data-size` makes) is formatted, on first boot;
//! - a disk that cannot be mounted is reported and left alone, and the
//!   appliance runs RAM-only, saying so loudly.

use crate::config::DataSelector;
use nix::mount::{mount, MsFlags};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the data disk is mounted.
pub const MOUNT_POINT: &str = "/var/lib/kvmos";
/// Some storage drivers (NVMe, USB, SCSI host adapters) find their disks
/// after the kernel has started init, so a missing disk may just be late.
/// When the machine has such a controller ([`late_storage_controllers`]),
/// wait until the set of block devices has not changed for [`SETTLE`], and
/// never longer than [`PROBE_WAIT`]; a RAM-only boot pays only the settle
/// time. Without one, every disk is there when init starts (the kernel has
/// finished virtio and AHCI probing by then), so nothing is waited for.
const PROBE_WAIT: Duration = Duration::from_secs(10);
const SETTLE: Duration = Duration::from_secs(2);
/// e2fsck gets this long before boot goes on without it.
const FSCK_TIMEOUT: Duration = Duration::from_secs(300);
pub const MKFS: &str = "/usr/sbin/mke2fs";
pub const FSCK: &str = "/usr/sbin/e2fsck";

/// How the data disk ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDisk {
    Mounted {
        device: PathBuf,
        formatted_now: bool,
    },
    /// Nothing found: VMs and settings live in RAM and vanish on reboot.
    RamOnly {
        reason: String,
    },
}

impl DataDisk {
    pub fn is_persistent(&self) -> bool {
        matches!(self, DataDisk::Mounted { .. })
    }

    pub fn describe(&self) -> String {
        match self {
            DataDisk::Mounted { device, formatted_now: false } => {
                format!("{} mounted at {MOUNT_POINT}", device.display())
            }
            DataDisk::Mounted { device, formatted_now: true } => {
                format!("{} formatted (it was blank) and mounted at {MOUNT_POINT}", device.display())
            }
            DataDisk::RamOnly { reason } => format!("RAM-ONLY: {reason}. Nothing will survive a reboot"),
        }
    }
}

/// What the first bytes of a block device hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Ext4 {
        label: String,
        clean: bool,
    },
    /// Every byte of the first 64 KiB is zero.
    Blank,
    /// Some other file system or data.
    Other,
}

const EXT4_MAGIC: u16 = 0xEF53;

/// Reads the ext4 superblock (at byte 1024) and the first 64 KiB.
pub fn probe(mut dev: impl Read + Seek) -> std::io::Result<Content> {
    let mut head = vec![0u8; 64 * 1024];
    dev.seek(SeekFrom::Start(0))?;
    let mut filled = 0;
    while filled < head.len() {
        let n = dev.read(&mut head[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    head.truncate(filled);
    if head.iter().all(|&b| b == 0) {
        return Ok(if filled >= 4096 { Content::Blank } else { Content::Other });
    }
    let sb = match head.get(1024..2048) {
        Some(sb) => sb,
        None => return Ok(Content::Other),
    };
    let magic = u16::from_le_bytes([sb[0x38], sb[0x39]]);
    if magic != EXT4_MAGIC {
        return Ok(Content::Other);
    }
    let state = u16::from_le_bytes([sb[0x3A], sb[0x3B]]);
    let label_bytes = &sb[0x78..0x88];
    let end = label_bytes.iter().position(|&b| b == 0).unwrap_or(label_bytes.len());
    Ok(Content::Ext4 { label: String::from_utf8_lossy(&label_bytes[..end]).into_owned(), clean: state & 1 == 1 })
}

/// A block device or partition the kernel knows.
#[derive(Debug, Clone)]
struct BlockDev {
    dev: PathBuf,
    gpt_name: Option<String>,
}

fn block_devices() -> Vec<BlockDev> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/class/block") else { return out };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("loop") || name.starts_with("ram") || name.starts_with("zram") {
            continue;
        }
        let uevent = std::fs::read_to_string(e.path().join("uevent")).unwrap_or_default();
        let gpt_name = uevent.lines().find_map(|l| l.strip_prefix("PARTNAME=")).map(str::to_string);
        out.push(BlockDev { dev: Path::new("/dev").join(&name), gpt_name });
    }
    out.sort_by(|a, b| a.dev.cmp(&b.dev));
    out
}

/// Finds the data partition; `named_in_gpt` tells whether the GPT name matched.
fn find(sel: &DataSelector) -> Option<(PathBuf, bool)> {
    match sel {
        DataSelector::Path(p) => Path::new(p).exists().then(|| (PathBuf::from(p), false)),
        DataSelector::Label(label) => {
            let devs = block_devices();
            if let Some(d) = devs.iter().find(|d| d.gpt_name.as_deref() == Some(label.as_str())) {
                return Some((d.dev.clone(), true));
            }
            devs.iter().find_map(|d| {
                let f = File::open(&d.dev).ok()?;
                match probe(f).ok()? {
                    Content::Ext4 { label: l, .. } if &l == label => Some((d.dev.clone(), false)),
                    _ => None,
                }
            })
        }
    }
}

/// PCI vendor ID of virtio devices, and the device IDs of virtio-blk
/// (transitional and modern), which probe synchronously.
const VIRTIO_VENDOR: u16 = 0x1af4;
const VIRTIO_BLK: [u16; 2] = [0x1001, 0x1042];

/// Whether a PCI function (`class` is the 24-bit class code) is a storage
/// or USB controller whose disks may appear after init starts: NVMe (the
/// namespaces are scanned in a work queue), USB (hubs enumerate in a
/// thread, and usb-storage waits before scanning), and SCSI, RAID and SAS
/// host adapters (their targets are scanned in the background). AHCI and
/// IDE disks are probed before init runs, and so is virtio-blk.
pub fn finds_disks_late(class: u32, vendor: u16, device: u16) -> bool {
    let (base, sub) = (class >> 16, (class >> 8) & 0xff);
    match (base, sub) {
        (0x0c, 0x03) => true,
        (0x01, 0x01 | 0x06) => false,
        (0x01, _) => !(vendor == VIRTIO_VENDOR && VIRTIO_BLK.contains(&device)),
        _ => false,
    }
}

/// The PCI functions (by address) that [`finds_disks_late`].
pub fn late_storage_controllers() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/sys/bus/pci/devices") else { return Vec::new() };
    let hex = |path: PathBuf| -> Option<u32> {
        let text = std::fs::read_to_string(path).ok()?;
        u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
    };
    let mut late: Vec<String> = dir
        .flatten()
        .filter(|e| {
            let p = e.path();
            match (hex(p.join("class")), hex(p.join("vendor")), hex(p.join("device"))) {
                (Some(c), Some(v), Some(d)) => finds_disks_late(c, v as u16, d as u16),
                _ => false,
            }
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    late.sort();
    late
}

/// Finds, checks, (on first boot) formats, and mounts the data disk.
pub fn bring_up(sel: &DataSelector, log: &dyn Fn(&str)) -> DataDisk {
    let deadline = Instant::now() + PROBE_WAIT;
    let mut seen = Vec::new();
    let mut stable_since = Instant::now();
    let late = late_storage_controllers();
    let found = loop {
        if let Some(f) = find(sel) {
            break Some(f);
        }
        if late.is_empty() {
            break None;
        }
        if seen.is_empty() {
            log(&format!("no data disk yet; waiting for the disks behind {} to settle", late.join(", ")));
        }
        let now_devs: Vec<PathBuf> = block_devices().into_iter().map(|d| d.dev).collect();
        if now_devs != seen {
            seen = now_devs;
            stable_since = Instant::now();
        }
        if Instant::now() >= deadline || stable_since.elapsed() >= SETTLE {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let what = match sel {
        DataSelector::Label(l) => format!("no partition labelled {l}"),
        DataSelector::Path(p) => format!("{p} does not exist"),
    };
    let Some((dev, named_in_gpt)) = found else {
        return DataDisk::RamOnly { reason: format!("{what} was found") };
    };
    let content = match File::open(&dev).and_then(probe) {
        Ok(c) => c,
        Err(e) => return DataDisk::RamOnly { reason: format!("cannot read {}: {e}", dev.display()) },
    };
    let label = match sel {
        DataSelector::Label(l) => l.clone(),
        DataSelector::Path(_) => crate::config::DEFAULT_DATA_LABEL.to_string(),
    };
    let mut formatted_now = false;
    match content {
        Content::Blank if named_in_gpt => {
            log(&format!("{} is a blank partition named {label}: formatting it as ext4 (first boot)", dev.display()));
            if let Err(e) = format_ext4(&dev, &label) {
                return DataDisk::RamOnly { reason: format!("cannot format the blank {}: {e}", dev.display()) };
            }
            formatted_now = true;
        }
        Content::Blank => {
            return DataDisk::RamOnly {
                reason: format!("{} is blank; kvmos formats only a partition named {label} in the GPT", dev.display()),
            }
        }
        Content::Other => {
            return DataDisk::RamOnly {
                reason: format!("{} does not hold ext4; it was left untouched (never formatted)", dev.display()),
            }
        }
        Content::Ext4 { clean, .. } => {
            if let Some(msg) = fsck(&dev, clean) {
                log(&msg);
            }
        }
    }
    let _ = std::fs::create_dir_all(MOUNT_POINT);
    match mount(Some(dev.as_path()), MOUNT_POINT, Some("ext4"), MsFlags::MS_NOATIME | MsFlags::MS_NODEV, None::<&str>) {
        Ok(()) => DataDisk::Mounted { device: dev, formatted_now },
        Err(e) => DataDisk::RamOnly {
            reason: format!("{} cannot be mounted ({e}); it was left untouched (never formatted)", dev.display()),
        },
    }
}

fn format_ext4(dev: &Path, label: &str) -> Result<(), String> {
    if !Path::new(MKFS).exists() {
        return Err(format!("{MKFS} is not in this image"));
    }
    let out = crate::supervisor::child_command(MKFS)
        .args(["-q", "-F", "-t", "ext4", "-L", label, "-E", "lazy_itable_init=1,lazy_journal_init=1"])
        .arg(dev)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Runs `e2fsck -p` with a time bound; returns what to log, if anything.
fn fsck(dev: &Path, clean: bool) -> Option<String> {
    if !Path::new(FSCK).exists() {
        return (!clean).then(|| format!("{} was not cleanly unmounted; the journal replays on mount", dev.display()));
    }
    let mut child = match crate::supervisor::child_command(FSCK).arg("-p").arg(dev).spawn() {
        Ok(c) => c,
        Err(e) => return Some(format!("cannot run e2fsck: {e}")),
    };
    let deadline = Instant::now() + FSCK_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                // e2fsck: 0 clean, 1 fixed, 2 fixed and wants a reboot, 4+ left errors.
                return match status.code() {
                    Some(0) => None,
                    Some(1 | 2) => Some(format!("e2fsck repaired {}", dev.display())),
                    _ => Some(format!(
                        "e2fsck found errors it could not fix on {} ({status}); mounting anyway",
                        dev.display()
                    )),
                };
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Some(format!("e2fsck took longer than {FSCK_TIMEOUT:?} on {}; skipped", dev.display()));
            }
        }
    }
}

/// Flushes and unmounts the data disk; falls back to read-only.
pub fn unmount() -> Result<(), String> {
    nix::unistd::sync();
    match nix::mount::umount2(MOUNT_POINT, nix::mount::MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => Ok(()), // not mounted
        Err(e) => {
            let ro =
                mount(None::<&str>, MOUNT_POINT, None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, None::<&str>);
            match ro {
                Ok(()) => Err(format!("busy ({e}); remounted read-only instead")),
                Err(e2) => Err(format!("cannot unmount ({e}) nor remount read-only ({e2})")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn ext4_image(label: &str, state: u16) -> Vec<u8> {
        let mut img = vec![0u8; 64 * 1024];
        img[1024 + 0x38..1024 + 0x3A].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        img[1024 + 0x3A..1024 + 0x3C].copy_from_slice(&state.to_le_bytes());
        img[1024 + 0x78..1024 + 0x78 + label.len()].copy_from_slice(label.as_bytes());
        img
    }

    #[test]
    fn probes_ext4_label_and_state() {
        assert_eq!(
            probe(Cursor::new(ext4_image("KVMOS_DATA", 1))).unwrap(),
            Content::Ext4 { label: "KVMOS_DATA".into(), clean: true }
        );
        assert_eq!(probe(Cursor::new(ext4_image("x", 0))).unwrap(), Content::Ext4 { label: "x".into(), clean: false });
    }

    #[test]
    fn only_controllers_that_find_disks_after_boot_are_waited_for() {
        let late = |class, vendor, device| finds_disks_late(class, vendor, device);
        assert!(late(0x01_08_02, 0x8086, 0x0953), "NVMe");
        assert!(late(0x0c_03_30, 0x8086, 0xa36d), "xHCI");
        assert!(late(0x0c_03_20, 0x8086, 0x293a), "EHCI");
        assert!(late(0x01_07_00, 0x1000, 0x0097), "SAS HBA (mpt3sas)");
        assert!(late(0x01_00_00, 0x1af4, 0x1048), "virtio-scsi");
        assert!(!late(0x01_06_01, 0x8086, 0x2922), "AHCI");
        assert!(!late(0x01_01_80, 0x8086, 0x7010), "IDE");
        assert!(!late(0x01_00_00, 0x1af4, 0x1001), "virtio-blk, transitional");
        assert!(!late(0x01_80_00, 0x1af4, 0x1042), "virtio-blk, modern");
        assert!(!late(0x02_00_00, 0x1af4, 0x1000), "a NIC");
        assert!(!late(0x06_00_00, 0x8086, 0x1237), "a host bridge");
    }

    #[test]
    fn only_all_zero_is_blank() {
        assert_eq!(probe(Cursor::new(vec![0u8; 1 << 20])).unwrap(), Content::Blank);
        let mut other = vec![0u8; 1 << 20];
        other[40_000] = 1;
        assert_eq!(probe(Cursor::new(other)).unwrap(), Content::Other);
        assert_eq!(probe(Cursor::new(vec![0u8; 100])).unwrap(), Content::Other, "too small to be a data disk");
    }

    #[test]
    fn probes_a_real_mkfs_ext4_image() {
        let dir = std::env::temp_dir().join(format!("kvmos-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("data.img");
        std::fs::write(&img, vec![0u8; 8 << 20]).unwrap();
        let st =
            std::process::Command::new("mkfs.ext4").args(["-q", "-F", "-L", "KVMOS_DATA"]).arg(&img).status().unwrap();
        assert!(st.success());
        let c = probe(File::open(&img).unwrap()).unwrap();
        assert_eq!(c, Content::Ext4 { label: "KVMOS_DATA".into(), clean: true });
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
