//! One IDE channel (primary at 0x1F0/0x3F6 on IRQ 14, secondary at
//! 0x170/0x376 on IRQ 15): the ATA task file, a master and a slave, PIO
//! data transfers and the interrupt line.
//!
//! A drive is an ATAPI CD-ROM ([`super::atapi::Cdrom`]) or an ATA hard disk
//! ([`super::ata::AtaDisk`]). A disk's data commands move 512-byte sectors
//! in DRQ blocks of one sector, or of the READ/WRITE MULTIPLE count, with
//! an interrupt for each block the host is to read or write next and, for
//! writes, one at the end; the address is 28-bit LBA, 48-bit LBA (from the
//! registers' previous contents, the HOB bytes) or CHS. A packet command
//! runs as ATA-8 ACS describes it: PACKET (0xA0) raises DRQ for the 12-byte
//! packet; data goes to the host in DRQ blocks no larger than the byte
//! count limit the host wrote into the cylinder registers, with an
//! interrupt at each block and at the status phase (interrupt reason in
//! the sector count register). There is no DMA: the controller has no
//! bus-master BAR, so SeaBIOS, OVMF, Linux and Windows all use PIO, which
//! KVM batches for `rep insw`, so a 2 KiB sector costs one exit.
//!
//! Registers are kept per drive, as QEMU keeps them: a write to the task
//! file reaches both drives, a read answers from the selected one, and a
//! position without a drive reads as status 0 with the signature 0xFF, so
//! that probes find nothing there.

use super::ata::{self, AtaDisk};
use super::atapi::{Cdrom, Outcome, SECTOR};
use crate::devices::bus::BusDevice;

/// Status register bits.
pub mod status {
    pub const BSY: u8 = 0x80;
    pub const DRDY: u8 = 0x40;
    pub const DSC: u8 = 0x10;
    pub const DRQ: u8 = 0x08;
    pub const ERR: u8 = 0x01;
}
/// The error register's "command aborted".
const ABRT: u8 = 0x04;
/// Device control: interrupts disabled, software reset, and reads of the
/// previous register contents (48-bit addresses).
const NIEN: u8 = 0x02;
const SRST: u8 = 0x04;
const HOB: u8 = 0x80;
/// The device register's drive select and LBA bits.
const DEV: u8 = 0x10;
const LBA: u8 = 0x40;
/// Interrupt reason (sector count register during a packet command).
const REASON_COD: u8 = 0x01;
const REASON_IO: u8 = 0x02;

/// ATA commands an ATAPI device takes.
mod cmd {
    pub const DEVICE_RESET: u8 = 0x08;
    pub const PACKET: u8 = 0xa0;
    pub const IDENTIFY_PACKET_DEVICE: u8 = 0xa1;
    pub const IDLE_IMMEDIATE: u8 = 0xe1;
    pub const STANDBY_IMMEDIATE: u8 = 0xe0;
    pub const CHECK_POWER_MODE: u8 = 0xe5;
    pub const IDENTIFY_DEVICE: u8 = 0xec;
    pub const SET_FEATURES: u8 = 0xef;
}

/// ATA commands a hard disk takes besides those.
mod disk_cmd {
    pub const READ_SECTORS: u8 = 0x20;
    pub const READ_SECTORS_NORETRY: u8 = 0x21;
    pub const READ_SECTORS_EXT: u8 = 0x24;
    pub const READ_MULTIPLE_EXT: u8 = 0x29;
    pub const WRITE_SECTORS: u8 = 0x30;
    pub const WRITE_SECTORS_NORETRY: u8 = 0x31;
    pub const WRITE_SECTORS_EXT: u8 = 0x34;
    pub const WRITE_MULTIPLE_EXT: u8 = 0x39;
    pub const READ_VERIFY: u8 = 0x40;
    pub const READ_VERIFY_NORETRY: u8 = 0x41;
    pub const READ_VERIFY_EXT: u8 = 0x42;
    pub const EXECUTE_DEVICE_DIAGNOSTIC: u8 = 0x90;
    pub const INITIALIZE_DEVICE_PARAMETERS: u8 = 0x91;
    pub const READ_MULTIPLE: u8 = 0xc4;
    pub const WRITE_MULTIPLE: u8 = 0xc5;
    pub const SET_MULTIPLE_MODE: u8 = 0xc6;
    pub const STANDBY: u8 = 0xe2;
    pub const IDLE: u8 = 0xe3;
    pub const FLUSH_CACHE: u8 = 0xe7;
    pub const FLUSH_CACHE_EXT: u8 = 0xea;
}

/// What sits in a drive position.
pub enum Drive {
    Cdrom(Cdrom),
    Disk(AtaDisk),
}

impl Drive {
    /// Its signature in the LBA mid and high registers after a reset.
    fn signature(&self) -> (u8, u8) {
        match self {
            Drive::Cdrom(_) => (0x14, 0xeb),
            Drive::Disk(_) => (0, 0),
        }
    }

    /// The status after a reset: an ATA disk is ready at once, an ATAPI
    /// drive shows DRDY from its first command on.
    fn reset_status(&self) -> u8 {
        match self {
            Drive::Cdrom(_) => 0,
            Drive::Disk(_) => status::DRDY | status::DSC,
        }
    }

    /// Reads block `lba` (a CD's 2 KiB sector, a disk's 512 bytes); the
    /// error is a sense key for a CD-ROM, the error register for a disk.
    fn read_block(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), u8> {
        match self {
            Drive::Cdrom(c) => c.read_sector(lba, buf),
            Drive::Disk(d) => d.read_sector(lba, buf),
        }
    }
}

/// The task file registers of one drive position.
#[derive(Debug, Clone, Copy, Default)]
struct TaskFile {
    error: u8,
    features: u8,
    sector_count: u8,
    lba_low: u8,
    lba_mid: u8,
    lba_high: u8,
    status: u8,
    /// The previous contents of sector count, LBA low, mid and high: the
    /// high halves of a 48-bit command's count and address.
    hob: [u8; 4],
}

/// Where the bytes of a data-in transfer come from.
enum Source {
    Bytes {
        data: Vec<u8>,
        at: usize,
    },
    /// Blocks read from the medium one at a time, as the host takes them
    /// (`buf` holds one block).
    Sectors {
        lba: u64,
        buf: Vec<u8>,
        at: usize,
    },
}

/// What the channel is doing.
enum Phase {
    Idle,
    /// Receiving a packet command's 12 bytes.
    Packet {
        packet: [u8; 12],
        got: usize,
    },
    /// Sending data to the host.
    DataIn(DataIn),
    /// Taking a disk write's sectors from the host.
    DataOut(DataOut),
}

struct DataOut {
    lba: u64,
    /// Bytes left in the whole transfer, and in this DRQ block.
    left: u64,
    block_left: u64,
    /// The DRQ block's size (one sector, or the MULTIPLE count's).
    limit: u64,
    /// The sector being filled.
    buf: Vec<u8>,
}

struct DataIn {
    source: Source,
    /// Bytes left in the whole transfer, and in this DRQ block.
    left: u64,
    block_left: u64,
    /// The largest block the host takes (ATAPI byte count limit); ATA
    /// commands send one 512-byte block.
    limit: u64,
    /// Packet commands end with an interrupt for the status phase.
    packet: bool,
}

/// One drive position.
#[derive(Default)]
struct Slot {
    drive: Option<Drive>,
    regs: TaskFile,
}

pub struct Channel {
    slots: [Slot; 2],
    /// The device register as last written (bit 4 selects the slave).
    device: u8,
    control: u8,
    phase: Phase,
    /// INTRQ, before nIEN masks it.
    pending: bool,
    line: bool,
    irq: Box<dyn FnMut(bool) + Send>,
}

impl Channel {
    /// A channel with a master and a slave (either may be absent); `irq`
    /// drives its interrupt line.
    pub fn new(master: Option<Drive>, slave: Option<Drive>, irq: Box<dyn FnMut(bool) + Send>) -> Self {
        let mut c = Self {
            slots: [Slot { drive: master, ..Default::default() }, Slot { drive: slave, ..Default::default() }],
            device: 0,
            control: 0,
            phase: Phase::Idle,
            pending: false,
            line: false,
            irq,
        };
        c.reset();
        c
    }

    /// The CD-ROM drive at `position` (0 master, 1 slave), if that is one.
    pub fn cdrom_mut(&mut self, position: usize) -> Option<&mut Cdrom> {
        match self.slots.get_mut(position)?.drive.as_mut()? {
            Drive::Cdrom(c) => Some(c),
            Drive::Disk(_) => None,
        }
    }

    fn selected(&self) -> usize {
        usize::from(self.device & DEV != 0)
    }

    fn slot(&mut self) -> &mut Slot {
        let i = self.selected();
        &mut self.slots[i]
    }

    /// Power-on or software reset: every drive shows its signature, an
    /// ATAPI drive with DRDY clear (it is set by its first command).
    fn reset(&mut self) {
        self.phase = Phase::Idle;
        self.device = 0;
        for slot in &mut self.slots {
            let (lba_mid, lba_high) = slot.drive.as_ref().map_or((0xff, 0xff), Drive::signature);
            slot.regs = TaskFile {
                error: 0x01, // diagnostics passed
                sector_count: 1,
                lba_low: 1,
                lba_mid,
                lba_high,
                status: slot.drive.as_ref().map_or(0, Drive::reset_status),
                ..Default::default()
            };
        }
        self.set_pending(false);
    }

    fn set_pending(&mut self, pending: bool) {
        self.pending = pending;
        let line = pending && self.control & NIEN == 0;
        if line != self.line {
            self.line = line;
            (self.irq)(line);
        }
    }

    fn read_register(&mut self, reg: u64) -> u8 {
        if reg == 6 {
            return self.device | 0xa0;
        }
        let present = self.slots.iter().any(|s| s.drive.is_some());
        let slot = self.slot();
        let r = slot.regs;
        if !present || (reg == 7 && slot.drive.is_none()) {
            return 0;
        }
        let hob = self.control & HOB != 0;
        match reg {
            1 => r.error,
            2..=5 if hob => r.hob[reg as usize - 2],
            2 => r.sector_count,
            3 => r.lba_low,
            4 => r.lba_mid,
            5 => r.lba_high,
            _ => {
                // The status register; reading it acknowledges the interrupt.
                self.set_pending(false);
                r.status
            }
        }
    }

    fn write_register(&mut self, reg: u64, value: u8) {
        if reg == 7 {
            self.command(value);
            return;
        }
        if reg == 6 {
            // Selecting the other drive in the middle of a command ends
            // the command: its data and status belong to the drive that
            // took it.
            if (value ^ self.device) & DEV != 0 && !matches!(self.phase, Phase::Idle) {
                self.phase = Phase::Idle;
                let r = &mut self.slot().regs;
                r.status = status::DRDY | status::DSC | status::ERR;
                r.error = ABRT;
            }
            self.device = value;
            return;
        }
        for slot in &mut self.slots {
            let r = &mut slot.regs;
            let current = match reg {
                1 => &mut r.features,
                2 => &mut r.sector_count,
                3 => &mut r.lba_low,
                4 => &mut r.lba_mid,
                _ => &mut r.lba_high,
            };
            let previous = std::mem::replace(current, value);
            if reg >= 2 {
                r.hob[reg as usize - 2] = previous;
            }
        }
    }

    fn write_control(&mut self, value: u8) {
        let was_reset = self.control & SRST != 0;
        self.control = value;
        if value & SRST != 0 {
            self.reset();
            for slot in &mut self.slots {
                slot.regs.status = status::BSY;
            }
        } else if was_reset {
            // The reset ends: the drives are idle, ATAPI ones with DRDY clear.
            for slot in &mut self.slots {
                slot.regs.status = slot.drive.as_ref().map_or(0, Drive::reset_status);
            }
        }
        let pending = self.pending;
        self.set_pending(pending);
    }

    /// An ATA command for the selected drive. Commands for a position
    /// without a drive are ignored, as on a real bus.
    fn command(&mut self, command: u8) {
        let is_disk = match self.slot().drive {
            None => return,
            Some(Drive::Disk(_)) => true,
            Some(Drive::Cdrom(_)) => false,
        };
        self.phase = Phase::Idle;
        self.set_pending(false);
        if is_disk {
            return self.disk_command(command);
        }
        match command {
            cmd::PACKET => {
                if self.slot().regs.features & 1 != 0 {
                    // DMA was asked for; there is none.
                    return self.abort();
                }
                let r = &mut self.slot().regs;
                r.sector_count = REASON_COD;
                r.status = status::DRDY | status::DSC | status::DRQ;
                self.phase = Phase::Packet { packet: [0; 12], got: 0 };
            }
            cmd::IDENTIFY_PACKET_DEVICE => {
                let serial = match &self.slot().drive {
                    Some(Drive::Cdrom(c)) => c.serial.clone(),
                    _ => String::new(),
                };
                let data = identify_packet_device(&serial);
                self.start_data_in(Source::Bytes { data, at: 0 }, 512, 512, false);
            }
            cmd::IDENTIFY_DEVICE => {
                // Not an ATA disk: abort with the ATAPI signature showing.
                let r = &mut self.slot().regs;
                (r.sector_count, r.lba_low, r.lba_mid, r.lba_high) = (1, 1, 0x14, 0xeb);
                self.abort();
            }
            cmd::DEVICE_RESET => {
                let r = &mut self.slot().regs;
                (r.error, r.sector_count, r.lba_low, r.lba_mid, r.lba_high) = (1, 1, 1, 0x14, 0xeb);
                r.status = 0;
            }
            cmd::SET_FEATURES | cmd::IDLE_IMMEDIATE | cmd::STANDBY_IMMEDIATE => self.complete(status::DRDY, 0),
            cmd::CHECK_POWER_MODE => {
                self.slot().regs.sector_count = 0xff; // active
                self.complete(status::DRDY, 0);
            }
            _ => self.abort(),
        }
    }

    /// An ATA command for the hard disk selected.
    fn disk_command(&mut self, command: u8) {
        use disk_cmd::*;
        let Some(Drive::Disk(disk)) = &mut self.slot().drive else { return };
        match command {
            cmd::IDENTIFY_DEVICE => {
                let data = disk.identify();
                self.start_data_in(Source::Bytes { data, at: 0 }, 512, 512, false);
            }
            READ_SECTORS | READ_SECTORS_NORETRY | READ_SECTORS_EXT | READ_MULTIPLE | READ_MULTIPLE_EXT => {
                let multiple = matches!(command, READ_MULTIPLE | READ_MULTIPLE_EXT);
                let Some((lba, count, block)) = self.disk_transfer(command == READ_SECTORS_EXT || command == READ_MULTIPLE_EXT, multiple) else {
                    return;
                };
                let source = Source::Sectors { lba, buf: vec![0; ata::SECTOR as usize], at: ata::SECTOR as usize };
                self.start_data_in(source, count * ata::SECTOR, block, false);
            }
            WRITE_SECTORS | WRITE_SECTORS_NORETRY | WRITE_SECTORS_EXT | WRITE_MULTIPLE | WRITE_MULTIPLE_EXT => {
                let multiple = matches!(command, WRITE_MULTIPLE | WRITE_MULTIPLE_EXT);
                let ext = command == WRITE_SECTORS_EXT || command == WRITE_MULTIPLE_EXT;
                let Some((lba, count, block)) = self.disk_transfer(ext, multiple) else { return };
                let left = count * ata::SECTOR;
                // The host writes the first block when it sees DRQ, without
                // an interrupt.
                self.phase = Phase::DataOut(DataOut {
                    lba,
                    left,
                    block_left: left.min(block),
                    limit: block,
                    buf: Vec::with_capacity(ata::SECTOR as usize),
                });
                self.slot().regs.status = status::DRDY | status::DSC | status::DRQ;
            }
            READ_VERIFY | READ_VERIFY_NORETRY | READ_VERIFY_EXT => {
                if self.disk_transfer(command == READ_VERIFY_EXT, false).is_some() {
                    self.complete(status::DRDY, 0);
                }
            }
            SET_MULTIPLE_MODE => {
                let n = self.slot().regs.sector_count;
                let Some(Drive::Disk(disk)) = &mut self.slot().drive else { return };
                if n == 0 || (n.is_power_of_two() && n <= ata::MAX_MULTIPLE) {
                    disk.multiple = n;
                    self.complete(status::DRDY, 0);
                } else {
                    self.abort();
                }
            }
            FLUSH_CACHE | FLUSH_CACHE_EXT => match disk.flush() {
                Ok(()) => self.complete(status::DRDY, 0),
                Err(e) => self.complete(status::DRDY | status::ERR, e),
            },
            EXECUTE_DEVICE_DIAGNOSTIC => {
                let r = &mut self.slot().regs;
                (r.sector_count, r.lba_low, r.lba_mid, r.lba_high) = (1, 1, 0, 0);
                self.complete(status::DRDY, 0x01);
            }
            cmd::CHECK_POWER_MODE => {
                self.slot().regs.sector_count = 0xff; // active
                self.complete(status::DRDY, 0);
            }
            // Geometry, seeks, power and features: nothing to do on a file.
            INITIALIZE_DEVICE_PARAMETERS
            | 0x10..=0x1f // RECALIBRATE
            | 0x70..=0x7f // SEEK
            | STANDBY
            | IDLE
            | cmd::SET_FEATURES
            | cmd::IDLE_IMMEDIATE
            | cmd::STANDBY_IMMEDIATE => self.complete(status::DRDY, 0),
            _ => self.abort(),
        }
    }

    /// A disk data command's first sector, sector count and DRQ block size
    /// in bytes, from the task file; or the command ends with the error
    /// (an address beyond the disk, MULTIPLE without SET MULTIPLE MODE).
    fn disk_transfer(&mut self, ext: bool, multiple: bool) -> Option<(u64, u64, u64)> {
        let device = self.device;
        let r = self.slot().regs;
        let low = u64::from(r.lba_low) | u64::from(r.lba_mid) << 8 | u64::from(r.lba_high) << 16;
        let (lba, count) = if ext {
            let high = u64::from(r.hob[1]) | u64::from(r.hob[2]) << 8 | u64::from(r.hob[3]) << 16;
            let count = u64::from(r.sector_count) | u64::from(r.hob[0]) << 8;
            (Some(high << 24 | low), if count == 0 { 65536 } else { count })
        } else {
            let count = if r.sector_count == 0 { 256 } else { u64::from(r.sector_count) };
            let lba = if device & LBA != 0 {
                Some(u64::from(device & 0x0f) << 24 | low)
            } else {
                let cylinder = u64::from(r.lba_mid) | u64::from(r.lba_high) << 8;
                AtaDisk::chs_to_lba(cylinder, u64::from(device & 0x0f), u64::from(r.lba_low))
            };
            (lba, count)
        };
        let Some(Drive::Disk(disk)) = &self.slot().drive else { return None };
        let per_block = if multiple { u64::from(disk.multiple) } else { 1 };
        let checked = match lba {
            _ if per_block == 0 => Err(ABRT),
            Some(lba) => disk.check_range(lba, count).map(|()| lba),
            None => Err(ata::error::IDNF),
        };
        match checked {
            Ok(lba) => Some((lba, count, per_block * ata::SECTOR)),
            Err(e) => {
                self.complete(status::DRDY | status::ERR, e);
                None
            }
        }
    }

    fn abort(&mut self) {
        self.complete(status::DRDY | status::ERR, ABRT);
    }

    /// The command ends: its status and error, and an interrupt.
    fn complete(&mut self, status: u8, error: u8) {
        self.phase = Phase::Idle;
        let r = &mut self.slot().regs;
        r.status = status | status::DSC;
        r.error = error;
        self.set_pending(true);
    }

    /// A packet command ends: the status phase.
    fn complete_packet(&mut self, status: u8, error: u8) {
        self.slot().regs.sector_count = REASON_IO | REASON_COD;
        self.complete(status, error);
    }

    fn start_data_in(&mut self, source: Source, len: u64, limit: u64, packet: bool) {
        self.phase = Phase::DataIn(DataIn { source, left: len, block_left: 0, limit, packet });
        self.next_block();
    }

    /// The next DRQ block of a data-in transfer, or its end: a packet
    /// command's status phase interrupts; an ATA read just ends, as the
    /// host reads the status after its last block without waiting.
    fn next_block(&mut self) {
        let Phase::DataIn(t) = &mut self.phase else { return };
        if t.left == 0 {
            if t.packet {
                return self.complete_packet(status::DRDY, 0);
            }
            self.phase = Phase::Idle;
            let r = &mut self.slot().regs;
            (r.status, r.error) = (status::DRDY | status::DSC, 0);
            return;
        }
        let mut block = t.left.min(t.limit);
        if block < t.left {
            block &= !1;
        }
        t.block_left = block;
        let packet = t.packet;
        let r = &mut self.slot().regs;
        if packet {
            r.sector_count = REASON_IO;
            r.lba_mid = block as u8;
            r.lba_high = (block >> 8) as u8;
        }
        r.status = status::DRDY | status::DSC | status::DRQ;
        self.set_pending(true);
    }

    /// The host reads the data register.
    fn read_data(&mut self, out: &mut [u8]) {
        let i = self.selected();
        let Phase::DataIn(t) = &mut self.phase else {
            out.fill(0);
            return;
        };
        let mut done = 0;
        let mut failed = None;
        while done < out.len() && t.block_left > 0 {
            let chunk = match &mut t.source {
                Source::Bytes { data, at } => {
                    let n = (out.len() - done).min(t.block_left as usize).min(data.len() - *at);
                    out[done..done + n].copy_from_slice(&data[*at..*at + n]);
                    *at += n;
                    n
                }
                Source::Sectors { lba, buf, at } => {
                    if *at == buf.len() {
                        let read = match self.slots[i].drive.as_mut() {
                            Some(drive) => drive.read_block(*lba, &mut buf[..]),
                            None => Err(super::atapi::sense::NOT_READY),
                        };
                        if let Err(key) = read {
                            failed = Some(key);
                            break;
                        }
                        *lba += 1;
                        *at = 0;
                    }
                    let n = (out.len() - done).min(t.block_left as usize).min(buf.len() - *at);
                    out[done..done + n].copy_from_slice(&buf[*at..*at + n]);
                    *at += n;
                    n
                }
            };
            done += chunk;
            t.block_left -= chunk as u64;
            t.left -= chunk as u64;
        }
        out[done..].fill(0);
        let packet = t.packet;
        match failed {
            Some(key) if packet => return self.complete_packet(status::DRDY | status::ERR, key << 4),
            Some(error) => return self.complete(status::DRDY | status::ERR, error),
            None => {}
        }
        if t.block_left == 0 {
            self.next_block();
        }
    }

    /// The host writes the data register: a packet command's bytes, or a
    /// disk write's sectors.
    fn write_data(&mut self, data: &[u8]) {
        if matches!(self.phase, Phase::DataOut(_)) {
            return self.write_sectors(data);
        }
        let Phase::Packet { packet, got } = &mut self.phase else { return };
        let n = data.len().min(12 - *got);
        packet[*got..*got + n].copy_from_slice(&data[..n]);
        *got += n;
        if *got < 12 {
            return;
        }
        let packet = *packet;
        self.phase = Phase::Idle;
        self.run_packet(&packet);
    }

    /// A disk write's bytes: each whole sector goes to the file; each DRQ
    /// block taken interrupts, for the next block or the command's end.
    fn write_sectors(&mut self, mut data: &[u8]) {
        enum Next {
            More,
            Failed(u8),
            Block,
            Done,
        }
        let i = self.selected();
        while !data.is_empty() {
            let next = {
                let Phase::DataOut(t) = &mut self.phase else { return };
                if t.block_left == 0 {
                    return;
                }
                let n = data.len().min(ata::SECTOR as usize - t.buf.len()).min(t.block_left as usize);
                t.buf.extend_from_slice(&data[..n]);
                data = &data[n..];
                t.block_left -= n as u64;
                t.left -= n as u64;
                let mut next = Next::More;
                if t.buf.len() == ata::SECTOR as usize {
                    let written = match &self.slots[i].drive {
                        Some(Drive::Disk(disk)) => disk.write_sector(t.lba, &t.buf),
                        _ => Err(ABRT),
                    };
                    match written {
                        Ok(()) => {
                            t.lba += 1;
                            t.buf.clear();
                        }
                        Err(e) => next = Next::Failed(e),
                    }
                }
                if matches!(next, Next::More) && t.block_left == 0 {
                    next = if t.left == 0 {
                        Next::Done
                    } else {
                        t.block_left = t.left.min(t.limit);
                        Next::Block
                    };
                }
                next
            };
            match next {
                Next::More => {}
                Next::Failed(e) => return self.complete(status::DRDY | status::ERR, e),
                Next::Done => return self.complete(status::DRDY, 0),
                Next::Block => {
                    self.slot().regs.status = status::DRDY | status::DSC | status::DRQ;
                    self.set_pending(true);
                }
            }
        }
    }

    fn run_packet(&mut self, packet: &[u8; 12]) {
        let limit = match u64::from(u16::from_le_bytes([self.slot().regs.lba_mid, self.slot().regs.lba_high])) {
            0 | 0xffff => 0xfffe,
            l => l,
        };
        let Some(Drive::Cdrom(drive)) = self.slot().drive.as_mut() else { return };
        match drive.execute(packet) {
            Outcome::Done => self.complete_packet(status::DRDY, 0),
            Outcome::Error { key } => self.complete_packet(status::DRDY | status::ERR, key << 4),
            Outcome::Data(data) => {
                let len = data.len() as u64;
                self.start_data_in(Source::Bytes { data, at: 0 }, len, limit, true);
            }
            Outcome::Read { lba, count } => {
                let source = Source::Sectors { lba, buf: vec![0; SECTOR as usize], at: SECTOR as usize };
                self.start_data_in(source, count * SECTOR, limit, true);
            }
        }
    }
}

/// IDENTIFY PACKET DEVICE: a removable CD-ROM that takes 12-byte packets,
/// PIO modes up to 4 and no DMA, LBA.
fn identify_packet_device(serial: &str) -> Vec<u8> {
    let mut w = [0u16; 256];
    // ATAPI, CD-ROM, removable, DRQ within 50 µs of PACKET, 12-byte packets.
    w[0] = (2 << 14) | (5 << 8) | (1 << 7) | (2 << 5);
    put_string(&mut w[10..20], serial);
    put_string(&mut w[23..27], "1.0");
    put_string(&mut w[27..47], "KVMOS DVD-ROM");
    w[49] = 1 << 9; // LBA; no DMA
    w[53] = 1 << 1; // words 64-70 are valid
    w[64] = 0x3; // PIO modes 3 and 4
    w[65..69].copy_from_slice(&[0xb4; 4]); // 120 ns cycle times
    w[71] = 30;
    w[72] = 30;
    w[80] = 0x1e; // ATA/ATAPI-1 to 4
    w[82] = 1 << 14 | 1 << 4; // the PACKET feature set
    w[83] = 1 << 14;
    w[84] = 1 << 14;
    w[85] = 1 << 14 | 1 << 4;
    w[87] = 1 << 14;
    w[93] = 1 | 1 << 14 | 0x2000;
    w.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// An ATA string: space-padded, two characters to a word, the first in
/// the high byte.
pub(super) fn put_string(words: &mut [u16], text: &str) {
    let mut bytes = text.bytes().chain(std::iter::repeat(b' '));
    for w in words {
        let (hi, lo) = (bytes.next().unwrap_or(b' '), bytes.next().unwrap_or(b' '));
        *w = u16::from_be_bytes([hi, lo]);
    }
}

/// The channel's command block (8 ports: data, error/features, sector
/// count, LBA low/mid/high, device, status/command).
pub struct CommandBlock(pub std::sync::Arc<std::sync::Mutex<Channel>>);
/// The channel's control block (1 port: alternate status/device control).
pub struct ControlBlock(pub std::sync::Arc<std::sync::Mutex<Channel>>);

fn lock(c: &std::sync::Mutex<Channel>) -> std::sync::MutexGuard<'_, Channel> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

impl BusDevice for CommandBlock {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut c = lock(&self.0);
        if offset == 0 {
            c.read_data(data);
        } else {
            let v = c.read_register(offset);
            data.fill(v);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut c = lock(&self.0);
        match (offset, data.first()) {
            (0, _) => c.write_data(data),
            (reg, Some(&v)) => c.write_register(reg, v),
            _ => {}
        }
    }
}

impl BusDevice for ControlBlock {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        let c = lock(&self.0);
        // The alternate status: the status without acknowledging anything.
        let slot = &c.slots[c.selected()];
        data.fill(if slot.drive.is_some() { slot.regs.status } else { 0 });
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&v) = data.first() {
            lock(&self.0).write_control(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::atapi::{op, Medium};
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    struct Rig {
        cmd: CommandBlock,
        ctl: ControlBlock,
        irq: Arc<Mutex<Vec<bool>>>,
    }

    fn rig(master: Option<Cdrom>, slave: Option<Cdrom>) -> Rig {
        rig_drives(master.map(Drive::Cdrom), slave.map(Drive::Cdrom))
    }

    fn rig_drives(master: Option<Drive>, slave: Option<Drive>) -> Rig {
        let irq = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&irq);
        let channel = Channel::new(master, slave, Box::new(move |l| log.lock().unwrap().push(l)));
        let channel = Arc::new(Mutex::new(channel));
        Rig { cmd: CommandBlock(Arc::clone(&channel)), ctl: ControlBlock(channel), irq }
    }

    fn cdrom(sectors: u64) -> Cdrom {
        let mut f = tempfile::tempfile().unwrap();
        for s in 0..sectors {
            f.write_all(&[s as u8 + 1; SECTOR as usize]).unwrap();
        }
        Cdrom::new(Some(Medium::new(f, "test.iso".into()).unwrap()), "QM00003".into())
    }

    impl Rig {
        fn inb(&mut self, reg: u64) -> u8 {
            let mut b = [0u8];
            self.cmd.read(reg, &mut b);
            b[0]
        }
        fn outb(&mut self, reg: u64, v: u8) {
            self.cmd.write(reg, &[v]);
        }
        fn alt_status(&mut self) -> u8 {
            let mut b = [0u8];
            self.ctl.read(0, &mut b);
            b[0]
        }
        fn insw(&mut self, bytes: usize) -> Vec<u8> {
            let mut v = vec![0u8; bytes];
            self.cmd.read(0, &mut v);
            v
        }
        /// Sends a packet command as SeaBIOS does, with a byte count limit.
        fn packet(&mut self, bytes: &[u8], limit: u16) {
            self.outb(1, 0);
            self.outb(4, limit as u8);
            self.outb(5, (limit >> 8) as u8);
            self.outb(7, cmd::PACKET);
            assert_eq!(self.alt_status() & (status::BSY | status::DRQ), status::DRQ, "DRQ for the packet");
            assert_eq!(self.inb(2), REASON_COD);
            let mut p = [0u8; 12];
            p[..bytes.len()].copy_from_slice(bytes);
            for pair in p.chunks(2) {
                self.cmd.write(0, pair);
            }
        }
        /// The sector count's previous contents, read with HOB set.
        fn ctl_hob_count(&mut self) -> u8 {
            self.ctl.write(0, &[HOB]);
            let v = self.inb(2);
            self.ctl.write(0, &[0]);
            v
        }
        fn byte_count(&mut self) -> usize {
            usize::from(self.inb(4)) | usize::from(self.inb(5)) << 8
        }
    }

    #[test]
    fn after_reset_a_cdrom_shows_the_atapi_signature_and_an_empty_slot_shows_none() {
        let mut r = rig(Some(cdrom(1)), None);
        r.ctl.write(0, &[NIEN | SRST]);
        assert_eq!(r.alt_status() & status::BSY, status::BSY);
        r.ctl.write(0, &[NIEN]);
        assert_eq!((r.inb(2), r.inb(3), r.inb(4), r.inb(5), r.inb(1)), (1, 1, 0x14, 0xeb, 1));
        assert_eq!(r.inb(7), 0, "ATAPI: DRDY clear after reset");
        // The register test that probes use sees registers that hold.
        r.outb(2, 0x55);
        r.outb(3, 0xaa);
        assert_eq!((r.inb(2), r.inb(3)), (0x55, 0xaa));
        r.outb(6, 0xb0);
        assert_eq!(r.inb(6), 0xb0, "the device register reads back");
        assert_eq!(r.inb(7), 0, "no slave: status 0");
        r.outb(7, cmd::IDENTIFY_PACKET_DEVICE);
        assert_eq!(r.inb(7), 0, "a command for an absent drive is ignored");
        // A channel with no drive at all reads as zeros.
        let mut empty = rig(None, None);
        assert_eq!((empty.inb(7), empty.inb(2), empty.inb(4)), (0, 0, 0));
    }

    #[test]
    fn identify_device_aborts_and_identify_packet_device_describes_a_cdrom() {
        let mut r = rig(Some(cdrom(1)), None);
        r.outb(6, 0xa0);
        r.outb(7, cmd::IDENTIFY_DEVICE);
        assert_eq!(r.inb(7) & status::ERR, status::ERR);
        assert_eq!((r.inb(1), r.inb(4), r.inb(5)), (ABRT, 0x14, 0xeb));
        r.outb(7, cmd::IDENTIFY_PACKET_DEVICE);
        assert_eq!(r.irq.lock().unwrap().last(), Some(&true), "an interrupt for the data");
        assert_eq!(r.inb(7) & status::DRQ, status::DRQ);
        assert_eq!(r.irq.lock().unwrap().last(), Some(&false), "reading status acknowledges it");
        let id = r.insw(512);
        assert_eq!(u16::from_le_bytes([id[0], id[1]]), 0x85c0);
        let model: Vec<u8> = id[54..94].chunks(2).flat_map(|c| [c[1], c[0]]).collect();
        assert!(model.starts_with(b"KVMOS DVD-ROM "), "{:?}", String::from_utf8_lossy(&model));
        let serial: Vec<u8> = id[20..40].chunks(2).flat_map(|c| [c[1], c[0]]).collect();
        assert!(serial.starts_with(b"QM00003 "));
        assert_eq!(r.inb(7) & (status::DRQ | status::BSY | status::ERR), 0, "done");
        assert_eq!(r.inb(7) & status::DRDY, status::DRDY);
    }

    #[test]
    fn a_read_goes_out_in_blocks_of_the_byte_count_limit_with_an_interrupt_each() {
        let mut r = rig(None, Some(cdrom(3)));
        r.outb(6, 0xb0);
        // READ(10) of sectors 1 and 2, 1000 bytes per DRQ block.
        r.packet(&[op::READ_10, 0, 0, 0, 0, 1, 0, 0, 2], 1000);
        let mut got = Vec::new();
        let mut blocks = 0;
        loop {
            let s = r.inb(7);
            assert_eq!(s & status::ERR, 0);
            if s & status::DRQ == 0 {
                assert_eq!(r.inb(2), REASON_IO | REASON_COD, "the status phase");
                break;
            }
            assert_eq!(r.inb(2), REASON_IO);
            let n = r.byte_count();
            assert!(n <= 1000 && n.is_multiple_of(2), "{n}");
            got.extend(r.insw(n));
            blocks += 1;
        }
        assert_eq!(got.len(), 4096);
        assert!(got[..2048].iter().all(|&b| b == 2) && got[2048..].iter().all(|&b| b == 3));
        assert_eq!(blocks, 5, "1000 + 1000 + 1000 + 1000 + 96");
        let raised = r.irq.lock().unwrap().iter().filter(|&&l| l).count();
        assert_eq!(raised, 6, "one per block and one for the status");
    }

    #[test]
    fn errors_set_the_sense_key_and_interrupts_obey_nien() {
        let mut r = rig(Some(Cdrom::new(None, "x".into())), None);
        r.ctl.write(0, &[NIEN]);
        r.packet(&[op::TEST_UNIT_READY], 0);
        assert!(r.irq.lock().unwrap().is_empty(), "nIEN masks the line");
        assert_eq!(r.alt_status() & status::ERR, status::ERR);
        assert_eq!(r.inb(1) >> 4, 2, "NOT READY");
        // REQUEST SENSE in one 18-byte block.
        r.packet(&[op::REQUEST_SENSE, 0, 0, 0, 18], 18);
        assert_eq!(r.byte_count(), 18);
        let sense = r.insw(18);
        assert_eq!((sense[2], sense[12]), (2, 0x3a));
        assert_eq!(r.inb(7) & (status::DRQ | status::ERR), 0);
        // A DMA packet command is refused: there is no DMA.
        r.outb(1, 1);
        r.outb(7, cmd::PACKET);
        assert_eq!((r.inb(7) & status::ERR, r.inb(1)), (status::ERR, ABRT));
        r.ctl.write(0, &[0]);
        r.outb(1, 0);
        r.outb(7, cmd::SET_FEATURES);
        assert_eq!(r.irq.lock().unwrap().last(), Some(&true));
    }

    /// Found by the fuzzer: a guest started a READ on the master, selected
    /// the (absent) slave and read the data register; the VMM panicked.
    #[test]
    fn selecting_the_other_drive_ends_a_transfer() {
        let mut r = rig(Some(cdrom(2)), None);
        r.packet(&[op::READ_10, 0, 0, 0, 0, 0, 0, 0, 2], 0xfffe);
        assert_eq!(r.byte_count(), 4096);
        r.outb(6, 0xb0);
        assert!(r.insw(4096).iter().all(|&b| b == 0), "nothing is transferred");
        r.outb(6, 0xa0);
        assert_eq!(r.alt_status() & status::DRQ, 0, "the command is over");
        r.packet(&[op::TEST_UNIT_READY], 0);
        assert_eq!(r.inb(7) & status::ERR, 0, "the drive takes the next command");
    }

    #[test]
    fn a_read_error_ends_the_transfer_with_a_medium_error() {
        // The file is cut under the guest, after READ's range check.
        let f = tempfile::tempfile().unwrap();
        f.set_len(2 * SECTOR).unwrap();
        let medium = Medium::new(f.try_clone().unwrap(), "cut.iso".into()).unwrap();
        let mut r = rig(Some(Cdrom::new(Some(medium), "x".into())), None);
        r.packet(&[op::READ_10, 0, 0, 0, 0, 0, 0, 0, 2], 0xfffe);
        f.set_len(SECTOR).unwrap();
        assert_eq!(r.byte_count(), 4096);
        let data = r.insw(4096);
        assert!(data.iter().all(|&b| b == 0));
        assert_eq!(r.inb(7) & status::ERR, status::ERR);
        assert_eq!(r.inb(1) >> 4, 3, "MEDIUM ERROR");
    }

    /// A disk of `sectors` sectors, sector n filled with n + 1.
    fn disk(sectors: u64, read_only: bool) -> (Drive, std::path::PathBuf, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let data: Vec<u8> = (0..sectors).flat_map(|s| [s as u8 + 1; 512]).collect();
        std::fs::write(&path, data).unwrap();
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        (Drive::Disk(AtaDisk::new(f, read_only, "QM00001".into()).unwrap()), path, dir)
    }

    impl Rig {
        fn irqs(&self) -> usize {
            self.irq.lock().unwrap().iter().filter(|&&l| l).count()
        }
        /// A 28-bit LBA command for the master.
        fn lba28(&mut self, command: u8, lba: u32, count: u8) {
            self.outb(6, 0xe0 | (lba >> 24) as u8);
            self.outb(2, count);
            self.outb(3, lba as u8);
            self.outb(4, (lba >> 8) as u8);
            self.outb(5, (lba >> 16) as u8);
            self.outb(7, command);
        }
        /// A 48-bit LBA command: each register written twice, high half first.
        fn lba48(&mut self, command: u8, lba: u64, count: u16) {
            self.outb(6, 0x40);
            let high = [(count >> 8) as u8, (lba >> 24) as u8, (lba >> 32) as u8, (lba >> 40) as u8];
            let low = [count as u8, lba as u8, (lba >> 8) as u8, (lba >> 16) as u8];
            for bytes in [high, low] {
                (2..6).zip(bytes).for_each(|(reg, v)| self.outb(reg, v));
            }
            self.outb(7, command);
        }
    }

    #[test]
    fn a_disk_shows_the_ata_signature_is_ready_and_identifies_itself() {
        let (d, _, _dir) = disk(8, false);
        let mut r = rig_drives(Some(d), None);
        assert_eq!((r.inb(2), r.inb(3), r.inb(4), r.inb(5)), (1, 1, 0, 0), "the ATA signature");
        assert_eq!(r.inb(7) & status::DRDY, status::DRDY, "an ATA disk is ready after reset");
        r.ctl.write(0, &[SRST]);
        r.ctl.write(0, &[0]);
        assert_eq!(r.alt_status(), status::DRDY | status::DSC);
        r.outb(6, 0xa0);
        r.outb(7, cmd::IDENTIFY_DEVICE);
        assert_eq!((r.alt_status() & status::DRQ, r.irqs()), (status::DRQ, 1), "DRQ and an interrupt for the block");
        let id = r.insw(512);
        assert_eq!(u16::from_le_bytes([id[0], id[1]]), 0x40, "a fixed disk");
        assert_eq!(u32::from_le_bytes([id[120], id[121], id[122], id[123]]), 8, "8 sectors");
        assert_eq!(r.inb(7), status::DRDY | status::DSC, "done, without DRQ");
        assert_eq!(r.irqs(), 1, "a PIO read ends without an interrupt");
        r.outb(7, cmd::IDENTIFY_PACKET_DEVICE);
        assert_eq!((r.inb(7) & status::ERR, r.inb(1)), (status::ERR, ABRT), "a disk is not ATAPI");
    }

    #[test]
    fn disk_reads_come_in_sector_blocks_by_lba_chs_and_multiple() {
        let (d, _, _dir) = disk(64, false);
        let mut r = rig_drives(Some(d), None);
        r.lba28(disk_cmd::READ_SECTORS, 5, 2);
        for sector in [5u8, 6] {
            assert_eq!(r.inb(7), status::DRDY | status::DSC | status::DRQ);
            assert_eq!(r.insw(512), vec![sector + 1; 512]);
        }
        assert_eq!(r.inb(7), status::DRDY | status::DSC);
        assert_eq!(r.irqs(), 2, "one interrupt per block");
        // CHS: cylinder 0, head 0, sector 3 is LBA 2.
        r.outb(6, 0xa0);
        r.outb(2, 1);
        (3..6).zip([3u8, 0, 0]).for_each(|(reg, v)| r.outb(reg, v));
        r.outb(7, disk_cmd::READ_SECTORS);
        assert_eq!(r.insw(512), vec![3; 512]);
        // READ MULTIPLE needs SET MULTIPLE MODE first; then blocks of 4.
        r.lba28(disk_cmd::READ_MULTIPLE, 0, 6);
        assert_eq!((r.inb(7) & status::ERR, r.inb(1)), (status::ERR, ABRT));
        r.lba28(disk_cmd::SET_MULTIPLE_MODE, 0, 3);
        assert_eq!(r.inb(7) & status::ERR, status::ERR, "3 is not a power of two");
        r.lba28(disk_cmd::SET_MULTIPLE_MODE, 0, 4);
        assert_eq!(r.inb(7), status::DRDY | status::DSC);
        let before = r.irqs();
        r.lba28(disk_cmd::READ_MULTIPLE, 10, 6);
        // As a driver does: the status (acknowledging the interrupt), then the block.
        assert_eq!(r.inb(7) & status::DRQ, status::DRQ);
        let first = r.insw(4 * 512);
        assert_eq!((first[0], first[4 * 512 - 1]), (11, 14));
        assert_eq!(r.inb(7) & status::DRQ, status::DRQ, "a second, shorter block");
        assert_eq!(r.insw(2 * 512)[512], 16);
        assert_eq!((r.inb(7), r.irqs() - before), (status::DRDY | status::DSC, 2));
        // Past the end: IDNF, and nothing to read.
        r.lba28(disk_cmd::READ_SECTORS, 63, 2);
        assert_eq!((r.inb(7), r.inb(1)), (status::DRDY | status::DSC | status::ERR, ata::error::IDNF));
        r.lba28(disk_cmd::READ_VERIFY, 60, 4);
        assert_eq!(r.inb(7), status::DRDY | status::DSC);
    }

    #[test]
    fn disk_writes_take_sector_blocks_with_48_bit_addresses_and_flush() {
        let (d, path, _dir) = disk(16, false);
        let mut r = rig_drives(Some(d), None);
        r.lba48(disk_cmd::WRITE_SECTORS_EXT, 9, 2);
        assert_eq!(r.ctl_hob_count(), 0, "the count's high byte reads back with HOB");
        assert_eq!((r.inb(7) & status::DRQ, r.irqs()), (status::DRQ, 0), "the first block without an interrupt");
        r.cmd.write(0, &[0xaa; 512]);
        assert_eq!((r.inb(7) & status::DRQ, r.irqs()), (status::DRQ, 1), "the next block, with an interrupt");
        for _ in 0..128 {
            r.cmd.write(0, &[0xbb; 4]); // as `rep outsl` in pieces
        }
        assert_eq!((r.inb(7), r.irqs()), (status::DRDY | status::DSC, 2), "the end, with an interrupt");
        r.outb(7, disk_cmd::FLUSH_CACHE_EXT);
        assert_eq!(r.inb(7), status::DRDY | status::DSC);
        let file = std::fs::read(&path).unwrap();
        assert_eq!((file[9 * 512], file[10 * 512 + 511], file[11 * 512]), (0xaa, 0xbb, 12));
        r.lba48(disk_cmd::READ_SECTORS_EXT, 10, 1);
        assert_eq!(r.insw(512), vec![0xbb; 512]);
        // A read-only disk refuses the write, at its first sector.
        let (ro, path, _dir) = disk(4, true);
        let mut r = rig_drives(Some(ro), None);
        r.lba28(disk_cmd::WRITE_SECTORS, 0, 1);
        r.cmd.write(0, &[0xcc; 512]);
        assert_eq!((r.inb(7) & status::ERR, r.inb(1)), (status::ERR, ABRT));
        assert_eq!(std::fs::read(&path).unwrap()[0], 1);
    }
}
