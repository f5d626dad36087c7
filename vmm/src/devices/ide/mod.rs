//! The PIIX3 IDE controller (00:01.1, 8086:7010) in legacy mode, with
//! ATAPI CD-ROM drives and ATA hard disks: what SeaBIOS and OVMF boot El
//! Torito ISOs and disks from, and what Linux (`ata_piix`, `sr`, `sd`) and
//! Windows drive without extra drivers.
//!
//! - [`atapi`]: the CD-ROM drive, its packet commands and its medium;
//! - [`ata`]: the hard disk;
//! - [`channel`]: an IDE channel's task file, PIO transfers and interrupt.
//!
//! The two channels sit at the legacy ports and ISA interrupts (primary
//! 0x1F0/0x3F6 on IRQ 14, secondary 0x170/0x376 on IRQ 15), where firmware
//! and operating systems look for them whatever the PCI function says. The
//! function has no BARs: no bus-master DMA, so every transfer is PIO.
//! CD-ROMs take the positions in [`POSITIONS`] order, the first where QEMU
//! puts its CD-ROM (secondary master), and hard disks the free ones in
//! [`DISK_POSITIONS`] order, from the primary master, so that firmware and
//! guests find them where they are used to.

pub mod ata;
pub mod atapi;
pub mod channel;

use crate::devices::pci::config_space::{ConfigSpace, Identity};
use crate::devices::pci::{PciDevice, SUBSYSTEM_QEMU, VENDOR_INTEL, VENDOR_REDHAT_QUMRANET};
use ata::AtaDisk;
use atapi::Cdrom;
use channel::{Channel, Drive};
use std::sync::{Arc, Mutex};

pub const DEVICE_ID: u16 = 0x7010;
/// The function on the PIIX device (slot 1).
pub const FUNCTION: u8 = 1;
/// Each channel's command block, control block and ISA interrupt.
pub const CHANNELS: [(u16, u16, u32); 2] = [(0x1f0, 0x3f6, 14), (0x170, 0x376, 15)];
pub const COMMAND_BLOCK_LEN: u64 = 8;
/// IDE timing registers (IDETIM, one 16-bit word per channel); bit 15 of
/// each enables the channel's decode, which Linux checks before probing.
const IDETIM: usize = 0x40;
const IDETIM_DECODE_ENABLE: u16 = 0x8000;

/// (channel, position) of the 1st, 2nd, ... CD-ROM drive.
pub const POSITIONS: [(usize, usize); 4] = [(1, 0), (1, 1), (0, 0), (0, 1)];
/// The positions hard disks take, in order, where no CD-ROM is.
pub const DISK_POSITIONS: [(usize, usize); 4] = [(0, 0), (0, 1), (1, 0), (1, 1)];

/// A drive position: (channel, master 0 or slave 1).
pub type Position = (usize, usize);

/// The positions of `disks` hard disks and `cdroms` CD-ROM drives (at
/// most four drives in all): CD-ROMs take theirs first, then the disks the
/// free ones.
pub fn placement(disks: usize, cdroms: usize) -> (Vec<Position>, Vec<Position>) {
    let cdroms: Vec<_> = POSITIONS.iter().take(cdroms).copied().collect();
    let disks = DISK_POSITIONS.iter().filter(|p| !cdroms.contains(p)).take(disks).copied().collect();
    (disks, cdroms)
}

/// The OpenFirmware path SeaBIOS and OVMF match in `bootorder` for the
/// drive at (channel, position).
pub fn boot_path(slot: u8, (channel, position): (usize, usize)) -> String {
    format!("/pci@i0cf8/ide@{slot:x},{FUNCTION}/drive@{channel}/disk@{position}")
}

/// The PCI function: identity and timing registers only.
pub struct IdeFunction {
    config: ConfigSpace,
}

impl Default for IdeFunction {
    fn default() -> Self {
        let mut config = ConfigSpace::new(Identity {
            vendor: VENDOR_INTEL,
            device: DEVICE_ID,
            revision: 0,
            // Mass storage, IDE, legacy mode on both channels, bus-master
            // capable as a PIIX3 is (its BAR 4 stays unassigned here).
            class: [0x01, 0x01, 0x80],
            subsystem_vendor: VENDOR_REDHAT_QUMRANET,
            subsystem: SUBSYSTEM_QEMU,
            multifunction: false,
            interrupt_pin: 0,
        });
        for channel in 0..2 {
            config.set_u16(IDETIM + 2 * channel, IDETIM_DECODE_ENABLE);
        }
        config.set_writable(IDETIM, &[0xff; 4]);
        Self { config }
    }
}

impl PciDevice for IdeFunction {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
}

/// The two channels, with the drives in their positions.
pub struct Ide {
    pub channels: [Arc<Mutex<Channel>>; 2],
    /// Where the 1st, 2nd, ... CD-ROM drive is.
    cdroms: Vec<(usize, usize)>,
}

impl Ide {
    /// Places `disks` and `cdroms` (at most four in all) as [`placement`]
    /// says; `irq(line, level)` drives ISA interrupt `line`.
    pub fn new(
        disks: Vec<AtaDisk>,
        cdroms: Vec<Cdrom>,
        irq: impl Fn(u32, bool) + Send + Sync + Clone + 'static,
    ) -> Self {
        let (disk_at, cdrom_at) = placement(disks.len(), cdroms.len());
        let mut drives: [[Option<Drive>; 2]; 2] = Default::default();
        let all =
            disks.into_iter().map(Drive::Disk).zip(&disk_at).chain(cdroms.into_iter().map(Drive::Cdrom).zip(&cdrom_at));
        for (drive, &(channel, position)) in all {
            drives[channel][position] = Some(drive);
        }
        let [[m0, s0], [m1, s1]] = drives;
        let channel = |master, slave, line: u32| {
            let irq = irq.clone();
            Arc::new(Mutex::new(Channel::new(master, slave, Box::new(move |level| irq(line, level)))))
        };
        Self { channels: [channel(m0, s0, CHANNELS[0].2), channel(m1, s1, CHANNELS[1].2)], cdroms: cdrom_at }
    }

    /// Runs `f` on the `index`th CD-ROM drive.
    pub fn with_cdrom<T>(&self, index: usize, f: impl FnOnce(&mut Cdrom) -> T) -> Option<T> {
        let &(channel, position) = self.cdroms.get(index)?;
        let mut c = self.channels[channel].lock().unwrap_or_else(|p| p.into_inner());
        c.cdrom_mut(position).map(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_cdrom_is_the_secondary_master_as_in_qemu() {
        assert_eq!(boot_path(1, POSITIONS[0]), "/pci@i0cf8/ide@1,1/drive@1/disk@0");
        let ide = Ide::new(Vec::new(), vec![Cdrom::new(None, "a".into()), Cdrom::new(None, "b".into())], |_, _| {});
        assert_eq!(ide.with_cdrom(0, |d| d.serial.clone()).as_deref(), Some("a"));
        assert_eq!(ide.with_cdrom(1, |d| d.serial.clone()).as_deref(), Some("b"));
        assert!(ide.with_cdrom(2, |_| ()).is_none());
        let f = IdeFunction::default();
        assert_eq!((f.config().u16(0), f.config().u16(2)), (0x8086, 0x7010));
        assert_eq!(f.config().u32(8) >> 8, 0x01_01_80, "IDE, legacy mode");
        assert_eq!(f.config().u16(IDETIM + 2), 0x8000, "the secondary channel decodes");
    }

    #[test]
    fn disks_start_at_the_primary_master_and_leave_cdroms_their_places() {
        assert_eq!(placement(1, 1), (vec![(0, 0)], vec![(1, 0)]));
        assert_eq!(placement(3, 1), (vec![(0, 0), (0, 1), (1, 1)], vec![(1, 0)]));
        assert_eq!(placement(1, 3), (vec![(0, 1)], vec![(1, 0), (1, 1), (0, 0)]));
        assert_eq!(placement(2, 0), (vec![(0, 0), (0, 1)], vec![]));
        let disk = AtaDisk::new(tempfile::tempfile().unwrap(), false, "d".into()).unwrap();
        let ide = Ide::new(vec![disk], vec![Cdrom::new(None, "cd".into())], |_, _| {});
        assert_eq!(ide.with_cdrom(0, |d| d.serial.clone()).as_deref(), Some("cd"));
        assert!(ide.channels[0].lock().unwrap().cdrom_mut(0).is_none(), "a disk is not a CD-ROM");
    }
}
