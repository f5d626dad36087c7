//! A PCI function's 256-byte configuration space (type 0 header): what
//! firmware and drivers read and write through 0xCF8/0xCFC.
//!
//! Each byte has a write mask, so read-only fields (IDs, class, the low bits
//! of a BAR that encode its size) stay what the device says whatever the
//! guest writes. BARs are sized the standard way: writing all-ones reads back
//! the size mask, because the mask keeps the bits below the size at zero.

use super::{BarKind, COMMAND, COMMAND_IO, COMMAND_MEMORY, STATUS, STATUS_CAP_LIST};

/// Offsets in the type 0 header.
pub const VENDOR_ID: usize = 0x00;
pub const DEVICE_ID: usize = 0x02;
pub const REVISION: usize = 0x08;
pub const CLASS_PROG: usize = 0x09;
pub const HEADER_TYPE: usize = 0x0e;
pub const BAR0: usize = 0x10;
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const SUBSYSTEM_ID: usize = 0x2e;
pub const CAPABILITIES: usize = 0x34;
pub const INTERRUPT_LINE: usize = 0x3c;
pub const INTERRUPT_PIN: usize = 0x3d;

/// Where capabilities start: right after the standard header.
const FIRST_CAP: usize = 0x40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    pub kind: BarKind,
    /// A power of two, at least 16 bytes for memory and 4 for I/O.
    pub size: u64,
}

/// The identity of a function: what `lspci -n` shows.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    /// Base class, subclass, programming interface.
    pub class: [u8; 3],
    pub subsystem_vendor: u16,
    pub subsystem: u16,
    /// Set on function 0 of a multi-function device.
    pub multifunction: bool,
    /// 0 for none, 1..=4 for INTA#..INTD#.
    pub interrupt_pin: u8,
}

pub struct ConfigSpace {
    bytes: [u8; 256],
    wmask: [u8; 256],
    bars: [Option<Bar>; 6],
    next_cap: usize,
    last_cap: Option<usize>,
}

impl ConfigSpace {
    pub fn new(id: Identity) -> Self {
        let mut c = Self { bytes: [0; 256], wmask: [0; 256], bars: [None; 6], next_cap: FIRST_CAP, last_cap: None };
        c.set_u16(VENDOR_ID, id.vendor);
        c.set_u16(DEVICE_ID, id.device);
        c.bytes[REVISION] = id.revision;
        c.bytes[CLASS_PROG] = id.class[2];
        c.bytes[CLASS_PROG + 1] = id.class[1];
        c.bytes[CLASS_PROG + 2] = id.class[0];
        c.bytes[HEADER_TYPE] = if id.multifunction { 0x80 } else { 0 };
        c.set_u16(SUBSYSTEM_VENDOR_ID, id.subsystem_vendor);
        c.set_u16(SUBSYSTEM_ID, id.subsystem);
        c.bytes[INTERRUPT_PIN] = id.interrupt_pin;
        // Command: I/O, memory, bus master, INTx disable are the guest's.
        c.wmask[COMMAND] = 0x07;
        c.wmask[COMMAND + 1] = 0x04;
        c.wmask[INTERRUPT_LINE] = 0xff;
        c
    }

    /// Declares BAR `index` (a 64-bit BAR takes `index + 1` as well).
    pub fn add_bar(&mut self, index: usize, kind: BarKind, size: u64) {
        debug_assert!(size.is_power_of_two() && index < 6);
        self.bars[index] = Some(Bar { kind, size });
        let reg = BAR0 + index * 4;
        let flags: u32 = match kind {
            BarKind::Io => 1,
            BarKind::Mem32 => 0,
            BarKind::Mem64 => 0b100,
        };
        let low_mask = match kind {
            BarKind::Io => !(size as u32 - 1) & !0x3,
            _ => !(size.min(1 << 31) as u32 - 1) & !0xf,
        };
        self.set_u32(reg, flags);
        self.wmask[reg..reg + 4].copy_from_slice(&low_mask.to_le_bytes());
        if kind == BarKind::Mem64 {
            let high_mask = !((size - 1) >> 32) as u32;
            self.wmask[reg + 4..reg + 8].copy_from_slice(&high_mask.to_le_bytes());
        }
    }

    pub fn bar(&self, index: usize) -> Option<Bar> {
        self.bars.get(index).copied().flatten()
    }

    /// Where BAR `index` decodes now: None while the guest has not placed
    /// it or has turned its kind of decoding off.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = self.bar(index)?;
        let reg = BAR0 + index * 4;
        let low = u64::from(self.u32(reg));
        let command = self.u16(COMMAND);
        let (addr, enabled) = match bar.kind {
            BarKind::Io => (low & !0x3, command & COMMAND_IO != 0),
            BarKind::Mem32 => (low & !0xf, command & COMMAND_MEMORY != 0),
            BarKind::Mem64 => ((low & !0xf) | (u64::from(self.u32(reg + 4)) << 32), command & COMMAND_MEMORY != 0),
        };
        let limit = match bar.kind {
            BarKind::Io => 0x1_0000,
            BarKind::Mem32 => 1 << 32,
            BarKind::Mem64 => u64::MAX,
        };
        // Zero means unassigned; the all-ones sizing probe is not a place.
        let fits = addr.checked_add(bar.size).is_some_and(|end| end <= limit);
        (enabled && addr != 0 && fits && addr != (!(bar.size - 1) & (limit - 1))).then_some(addr)
    }

    /// Appends a capability (`body` starts after the ID and next-pointer
    /// bytes); returns its offset. `wmask` marks the guest-writable bits of
    /// `body`.
    pub fn add_capability(&mut self, id: u8, body: &[u8], wmask: &[u8]) -> usize {
        let at = self.next_cap;
        debug_assert!(at + 2 + body.len() <= 256);
        self.bytes[at] = id;
        self.bytes[at + 1] = 0;
        self.bytes[at + 2..at + 2 + body.len()].copy_from_slice(body);
        for (i, m) in wmask.iter().enumerate().take(body.len()) {
            self.wmask[at + 2 + i] = *m;
        }
        match self.last_cap {
            Some(prev) => self.bytes[prev + 1] = at as u8,
            None => self.bytes[CAPABILITIES] = at as u8,
        }
        let status = self.u16(STATUS) | STATUS_CAP_LIST;
        self.set_u16(STATUS, status);
        self.last_cap = Some(at);
        self.next_cap = (at + 2 + body.len() + 3) & !3;
        at
    }

    /// Makes bytes `offset..offset + mask.len()` writable per `mask`.
    pub fn set_writable(&mut self, offset: usize, mask: &[u8]) {
        self.wmask[offset..offset + mask.len()].copy_from_slice(mask);
    }

    /// The guest's read: bytes past the end read as zero.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.bytes.get(offset + i).copied().unwrap_or(0);
        }
    }

    /// The guest's write, through the write mask.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let at = offset + i;
            if at < 256 {
                let m = self.wmask[at];
                self.bytes[at] = (self.bytes[at] & !m) | (b & m);
            }
        }
    }

    pub fn u8(&self, at: usize) -> u8 {
        self.bytes[at]
    }
    pub fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]])
    }
    pub fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes([self.bytes[at], self.bytes[at + 1], self.bytes[at + 2], self.bytes[at + 3]])
    }
    /// Device-side writes, past the write mask.
    pub fn set_u8(&mut self, at: usize, v: u8) {
        self.bytes[at] = v;
    }
    pub fn set_u16(&mut self, at: usize, v: u16) {
        self.bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
    pub fn set_u32(&mut self, at: usize, v: u32) {
        self.bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            vendor: 0x1af4,
            device: 0x1042,
            revision: 1,
            class: [0x01, 0x00, 0x00],
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
            multifunction: false,
            interrupt_pin: 1,
        }
    }

    #[test]
    fn ids_are_read_only_and_bars_size_the_standard_way() {
        let mut c = ConfigSpace::new(id());
        c.add_bar(0, BarKind::Io, 0x40);
        c.add_bar(1, BarKind::Mem32, 0x1000);
        c.add_bar(4, BarKind::Mem64, 0x4000);
        c.write(VENDOR_ID, &[0, 0, 0, 0]);
        assert_eq!(c.u32(VENDOR_ID), 0x1042_1af4);
        for (bar, want_low, want_high) in
            [(0, 0xffff_ffc1u32, None), (1, 0xffff_f000, None), (4, 0xffff_c004, Some(!0u32))]
        {
            let reg = BAR0 + bar * 4;
            c.write(reg, &[0xff; 4]);
            assert_eq!(c.u32(reg), want_low, "BAR{bar}");
            if let Some(h) = want_high {
                c.write(reg + 4, &[0xff; 4]);
                assert_eq!(c.u32(reg + 4), h);
            }
        }
        // Not decoding until the guest places a BAR and enables decoding.
        assert_eq!(c.bar_address(1), None);
        c.write(BAR0 + 4, &0xfebf_1000u32.to_le_bytes());
        assert_eq!(c.bar_address(1), None);
        c.write(COMMAND, &[COMMAND_MEMORY as u8]);
        assert_eq!(c.bar_address(1), Some(0xfebf_1000));
        c.write(BAR0 + 16, &0xfe00_0000u32.to_le_bytes());
        c.write(BAR0 + 20, &1u32.to_le_bytes());
        assert_eq!(c.bar_address(4), Some(0x1_fe00_0000));
        assert_eq!(c.bar_address(0), None, "I/O decoding is still off");
        c.write(BAR0, &0xc040u32.to_le_bytes());
        c.write(COMMAND, &[(COMMAND_MEMORY | COMMAND_IO) as u8]);
        assert_eq!(c.bar_address(0), Some(0xc040));
    }

    #[test]
    fn capabilities_chain_and_set_the_status_bit() {
        let mut c = ConfigSpace::new(id());
        let a = c.add_capability(0x09, &[1, 2, 3], &[0, 0xff, 0]);
        let b = c.add_capability(0x11, &[0; 10], &[]);
        assert_eq!(c.u8(CAPABILITIES) as usize, a);
        assert_eq!(c.u8(a + 1) as usize, b);
        assert_eq!(c.u8(b + 1), 0);
        assert_ne!(c.u16(STATUS) & STATUS_CAP_LIST, 0);
        c.write(a + 2, &[9, 9, 9]);
        assert_eq!([c.u8(a + 2), c.u8(a + 3), c.u8(a + 4)], [1, 9, 3]);
    }
}
