//! One IDE channel (primary at 0x1F0/0x3F6 on IRQ 14, secondary at
//! 0x170/0x376 on IRQ 15): the ATA task file, a master and a slave, PIO
//! data transfers and the interrupt line.
//!
//! The drives are ATAPI CD-ROMs ([`super::atapi::Cdrom`]). A packet command
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
/// Device control: interrupts disabled, software reset.
const NIEN: u8 = 0x02;
const SRST: u8 = 0x04;
/// The device register's drive select bit.
const DEV: u8 = 0x10;
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
}

/// Where the bytes of a data-in transfer come from.
enum Source {
    Bytes {
        data: Vec<u8>,
        at: usize,
    },
    /// Sectors read from the medium one at a time, as the host takes them.
    Sectors {
        lba: u64,
        buf: Box<[u8; SECTOR as usize]>,
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
    drive: Option<Cdrom>,
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
    pub fn new(master: Option<Cdrom>, slave: Option<Cdrom>, irq: Box<dyn FnMut(bool) + Send>) -> Self {
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

    /// The drive at `position` (0 master, 1 slave).
    pub fn drive_mut(&mut self, position: usize) -> Option<&mut Cdrom> {
        self.slots.get_mut(position)?.drive.as_mut()
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
            let present = slot.drive.is_some();
            slot.regs = TaskFile {
                error: 0x01, // diagnostics passed
                sector_count: 1,
                lba_low: 1,
                lba_mid: if present { 0x14 } else { 0xff },
                lba_high: if present { 0xeb } else { 0xff },
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
        match reg {
            1 => r.error,
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
            match reg {
                1 => r.features = value,
                2 => r.sector_count = value,
                3 => r.lba_low = value,
                4 => r.lba_mid = value,
                _ => r.lba_high = value,
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
                slot.regs.status = 0;
            }
        }
        let pending = self.pending;
        self.set_pending(pending);
    }

    /// An ATA command for the selected drive. Commands for a position
    /// without a drive are ignored, as on a real bus.
    fn command(&mut self, command: u8) {
        if self.slot().drive.is_none() {
            return;
        }
        self.phase = Phase::Idle;
        self.set_pending(false);
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
                let serial = self.slot().drive.as_ref().map(|d| d.serial.clone()).unwrap_or_default();
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

    /// The next DRQ block of a data-in transfer, or its end.
    fn next_block(&mut self) {
        let Phase::DataIn(t) = &mut self.phase else { return };
        if t.left == 0 {
            return if t.packet { self.complete_packet(status::DRDY, 0) } else { self.complete(status::DRDY, 0) };
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
                            Some(drive) => drive.read_sector(*lba, &mut buf[..]),
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
        if let Some(key) = failed {
            return self.complete_packet(status::DRDY | status::ERR, key << 4);
        }
        if t.block_left == 0 {
            self.next_block();
        }
    }

    /// The host writes the data register: a packet command's bytes.
    fn write_data(&mut self, data: &[u8]) {
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

    fn run_packet(&mut self, packet: &[u8; 12]) {
        let limit = match u64::from(u16::from_le_bytes([self.slot().regs.lba_mid, self.slot().regs.lba_high])) {
            0 | 0xffff => 0xfffe,
            l => l,
        };
        let Some(drive) = self.slot().drive.as_mut() else { return };
        match drive.execute(packet) {
            Outcome::Done => self.complete_packet(status::DRDY, 0),
            Outcome::Error { key } => self.complete_packet(status::DRDY | status::ERR, key << 4),
            Outcome::Data(data) => {
                let len = data.len() as u64;
                self.start_data_in(Source::Bytes { data, at: 0 }, len, limit, true);
            }
            Outcome::Read { lba, count } => {
                let source = Source::Sectors { lba, buf: Box::new([0; SECTOR as usize]), at: SECTOR as usize };
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
fn put_string(words: &mut [u16], text: &str) {
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
}
