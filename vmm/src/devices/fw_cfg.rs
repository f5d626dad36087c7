//! QEMU's firmware configuration device (fw_cfg), the channel through which
//! SeaBIOS and OVMF learn about the machine: the CPU count, the memory map
//! (`etc/e820`), the boot order, the ACPI tables, and more.
//!
//! Ports: the selector at 0x510 (16 bits), the data byte at 0x511, and the
//! DMA address at 0x514 (high half, big-endian) and 0x518 (low half; writing
//! it starts the transfer). Items below 0x20 are the fixed ones QEMU
//! defines; files get selectors from 0x20 up and are listed, sorted by name,
//! in the file directory (item 0x19). Layouts follow QEMU's
//! `docs/specs/fw_cfg.rst`.
//!
//! An item may be generated when the firmware selects it: the ACPI tables
//! are, because they must describe where the firmware has put the PM
//! registers by then. A generated item keeps the size it had when the
//! directory was first read.

use crate::devices::bus::BusDevice;
use crate::vstate::memory::GuestMemory;
use std::collections::BTreeMap;
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestMemory as _, Permissions};

pub const PORT: u16 = 0x510;
pub const PORT_LEN: u64 = 12;
const DATA_OFFSET: u64 = 1;
const DMA_HIGH_OFFSET: u64 = 4;
const DMA_LOW_OFFSET: u64 = 8;

/// Fixed items.
pub mod item {
    pub const SIGNATURE: u16 = 0x00;
    pub const ID: u16 = 0x01;
    pub const UUID: u16 = 0x02;
    pub const RAM_SIZE: u16 = 0x03;
    pub const NOGRAPHIC: u16 = 0x04;
    pub const NB_CPUS: u16 = 0x05;
    pub const BOOT_MENU: u16 = 0x0e;
    pub const MAX_CPUS: u16 = 0x0f;
    pub const FILE_DIR: u16 = 0x19;
    pub const FILE_FIRST: u16 = 0x20;
    /// x86: "etc/irq0-override" in SeaBIOS: IRQ 0 is on IOAPIC pin 2.
    pub const IRQ0_OVERRIDE: u16 = 0x8002;
    /// x86: the legacy e820 reservation table (empty: `etc/e820` has it all).
    pub const E820_TABLE: u16 = 0x8003;
}

/// ID bits: the traditional interface and DMA.
const ID_TRADITIONAL: u32 = 1;
const ID_DMA: u32 = 2;
/// DMA control bits.
const DMA_ERROR: u32 = 1;
const DMA_READ: u32 = 2;
const DMA_SKIP: u32 = 4;
const DMA_SELECT: u32 = 8;
const DMA_WRITE: u32 = 16;
/// What the DMA address port reads: "QEMU CFG".
const DMA_SIGNATURE: u64 = 0x5145_4d55_2043_4647;
/// A file name's room in a directory entry, NUL included.
pub const FILE_NAME_LEN: usize = 56;

/// Builds an item's bytes when the firmware selects it.
pub type Generator = Arc<dyn Fn() -> Vec<u8> + Send + Sync>;

enum Content {
    Fixed(Vec<u8>),
    Generated { make: Generator, len: usize },
}

pub struct FwCfg {
    items: BTreeMap<u16, Content>,
    files: BTreeMap<String, u16>,
    selected: u16,
    /// The selected item's bytes, taken when it was selected.
    current: Vec<u8>,
    offset: usize,
    dma_high: u32,
    mem: GuestMemory,
}

#[derive(Debug, displaydoc::Display, thiserror::Error, PartialEq, Eq)]
pub enum FwCfgError {
    /// fw_cfg file name {0:?} is longer than 55 bytes
    NameTooLong(String),
    /// fw_cfg file {0:?} is added twice
    Duplicate(String),
}

impl FwCfg {
    /// The fixed items for a machine with `cpus` CPUs and `ram` bytes.
    pub fn new(mem: GuestMemory, cpus: u16, ram: u64, uuid: [u8; 16]) -> Self {
        let mut f = Self {
            items: BTreeMap::new(),
            files: BTreeMap::new(),
            selected: 0,
            current: Vec::new(),
            offset: 0,
            dma_high: 0,
            mem,
        };
        f.set(item::SIGNATURE, b"QEMU".to_vec());
        f.set(item::ID, (ID_TRADITIONAL | ID_DMA).to_le_bytes().to_vec());
        f.set(item::UUID, uuid.to_vec());
        f.set(item::RAM_SIZE, ram.to_le_bytes().to_vec());
        f.set(item::NOGRAPHIC, 0u16.to_le_bytes().to_vec());
        f.set(item::NB_CPUS, cpus.to_le_bytes().to_vec());
        f.set(item::MAX_CPUS, cpus.to_le_bytes().to_vec());
        f.set(item::BOOT_MENU, 0u16.to_le_bytes().to_vec());
        f.set(item::IRQ0_OVERRIDE, 1u32.to_le_bytes().to_vec());
        f.set(item::E820_TABLE, 0u32.to_le_bytes().to_vec());
        f.rebuild_directory();
        f
    }

    fn set(&mut self, key: u16, data: Vec<u8>) {
        self.items.insert(key, Content::Fixed(data));
    }

    fn check_name(&self, name: &str) -> Result<(), FwCfgError> {
        if name.len() >= FILE_NAME_LEN {
            return Err(FwCfgError::NameTooLong(name.into()));
        }
        if self.files.contains_key(name) {
            return Err(FwCfgError::Duplicate(name.into()));
        }
        Ok(())
    }

    fn next_selector(&self) -> u16 {
        item::FILE_FIRST + self.files.len() as u16
    }

    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<(), FwCfgError> {
        self.check_name(name)?;
        let key = self.next_selector();
        self.items.insert(key, Content::Fixed(data));
        self.files.insert(name.into(), key);
        self.rebuild_directory();
        Ok(())
    }

    /// A file built by `make` each time it is selected; its size is what
    /// `make` gives now.
    pub fn add_generated_file(&mut self, name: &str, make: Generator) -> Result<(), FwCfgError> {
        self.check_name(name)?;
        let key = self.next_selector();
        let len = make().len();
        self.items.insert(key, Content::Generated { make, len });
        self.files.insert(name.into(), key);
        self.rebuild_directory();
        Ok(())
    }

    /// The directory: a big-endian count, then per file its size, selector,
    /// two reserved bytes and its NUL-padded name, sorted by name.
    fn rebuild_directory(&mut self) {
        let mut dir = (self.files.len() as u32).to_be_bytes().to_vec();
        for (name, key) in &self.files {
            let len = match self.items.get(key) {
                Some(Content::Fixed(d)) => d.len(),
                Some(Content::Generated { len, .. }) => *len,
                None => 0,
            };
            dir.extend_from_slice(&(len as u32).to_be_bytes());
            dir.extend_from_slice(&key.to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut n = [0u8; FILE_NAME_LEN];
            n[..name.len()].copy_from_slice(name.as_bytes());
            dir.extend_from_slice(&n);
        }
        self.set(item::FILE_DIR, dir);
    }

    fn select(&mut self, key: u16) {
        self.selected = key;
        self.offset = 0;
        self.current = match self.items.get(&key) {
            Some(Content::Fixed(d)) => d.clone(),
            Some(Content::Generated { make, len }) => {
                let mut d = make();
                d.resize(*len, 0);
                d
            }
            None => Vec::new(),
        };
    }

    fn read_byte(&mut self) -> u8 {
        let b = self.current.get(self.offset).copied().unwrap_or(0);
        if self.offset < self.current.len() {
            self.offset += 1;
        }
        b
    }

    /// Runs the DMA request whose descriptor is at `at`; the descriptor's
    /// control word is then 0, or has the error bit set.
    fn dma(&mut self, at: u64) {
        let control = self.dma_transfer(at).map_or(DMA_ERROR, |_| 0);
        if self.mem.write_obj(control.to_be(), GuestAddress(at)).is_err() {
            tracing::debug!("fw_cfg: DMA descriptor at {at:#x} is not in guest memory");
        }
    }

    fn dma_transfer(&mut self, at: u64) -> Result<(), ()> {
        let control = u32::from_be(self.mem.read_obj::<u32>(GuestAddress(at)).map_err(|_| ())?);
        let length = u32::from_be(self.mem.read_obj::<u32>(GuestAddress(at + 4)).map_err(|_| ())?) as usize;
        let address = u64::from_be(self.mem.read_obj::<u64>(GuestAddress(at + 8)).map_err(|_| ())?);
        if control & DMA_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        if control & DMA_READ != 0 {
            // The length is the guest's (up to 4 GiB): the item's bytes go
            // straight into guest memory and the zeros past its end are
            // written a page at a time, so nothing of that size is
            // allocated here. A destination outside memory is refused whole.
            if !self.mem.check_range(GuestAddress(address), length, Permissions::Write) {
                return Err(());
            }
            let start = self.offset.min(self.current.len());
            let end = start.saturating_add(length).min(self.current.len());
            self.mem.write_slice(&self.current[start..end], GuestAddress(address)).map_err(|_| ())?;
            const ZEROS: [u8; 4096] = [0; 4096];
            let mut at = address + (end - start) as u64;
            let mut left = length - (end - start);
            while left > 0 {
                let n = left.min(ZEROS.len());
                self.mem.write_slice(&ZEROS[..n], GuestAddress(at)).map_err(|_| ())?;
                at += n as u64;
                left -= n;
            }
            self.offset = end;
        } else if control & DMA_SKIP != 0 {
            self.offset = (self.offset + length).min(self.current.len());
        } else if control & DMA_WRITE != 0 {
            // No item here is writable.
            return Err(());
        }
        Ok(())
    }
}

impl BusDevice for FwCfg {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0 => {
                let v = self.selected.to_le_bytes();
                for (i, b) in data.iter_mut().enumerate() {
                    *b = v.get(i).copied().unwrap_or(0);
                }
            }
            DATA_OFFSET => data.iter_mut().for_each(|b| *b = self.read_byte()),
            DMA_HIGH_OFFSET..=11 => {
                let sig = DMA_SIGNATURE.to_be_bytes();
                for (i, b) in data.iter_mut().enumerate() {
                    *b = sig.get((offset - DMA_HIGH_OFFSET) as usize + i).copied().unwrap_or(0);
                }
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 2) => self.select(u16::from_le_bytes([data[0], data[1]])),
            (0, 1) => self.select(u16::from(data[0])),
            (DMA_HIGH_OFFSET, 4) => self.dma_high = u32::from_be_bytes([data[0], data[1], data[2], data[3]]),
            (DMA_HIGH_OFFSET, 8) => {
                let at = u64::from_be_bytes(data.try_into().unwrap_or_default());
                self.dma(at);
            }
            (DMA_LOW_OFFSET, 4) => {
                let low = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                let at = (u64::from(self.dma_high) << 32) | u64::from(low);
                self.dma_high = 0;
                self.dma(at);
            }
            _ => tracing::debug!("fw_cfg: ignored write of {} bytes at +{offset}", data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fw() -> FwCfg {
        let mem = crate::vstate::memory::create(1 << 20).unwrap();
        FwCfg::new(mem, 2, 1 << 30, [7; 16])
    }

    fn read_item(f: &mut FwCfg, key: u16, len: usize) -> Vec<u8> {
        f.write(0, &key.to_le_bytes());
        let mut out = vec![0u8; len];
        for b in out.iter_mut() {
            let mut one = [0u8];
            f.read(DATA_OFFSET, &mut one);
            *b = one[0];
        }
        out
    }

    #[test]
    fn signature_id_and_cpu_count_read_through_the_data_port() {
        let mut f = fw();
        assert_eq!(read_item(&mut f, item::SIGNATURE, 4), b"QEMU");
        assert_eq!(read_item(&mut f, item::ID, 4), 3u32.to_le_bytes());
        assert_eq!(read_item(&mut f, item::NB_CPUS, 2), 2u16.to_le_bytes());
        // Past the end: zeros.
        assert_eq!(read_item(&mut f, item::NB_CPUS, 4)[2..], [0, 0]);
        // An unknown item reads as zeros.
        assert_eq!(read_item(&mut f, 0x1234, 2), [0, 0]);
        let mut sig = [0u8; 8];
        f.read(DMA_HIGH_OFFSET, &mut sig[..4]);
        f.read(DMA_LOW_OFFSET, &mut sig[4..]);
        assert_eq!(&sig, b"QEMU CFG");
    }

    #[test]
    fn the_directory_lists_files_sorted_and_dma_reads_them() {
        let mut f = fw();
        f.add_file("etc/e820", vec![1; 40]).unwrap();
        f.add_file("bootorder", b"/pci@i0cf8/scsi@3/disk@0,0\n\0".to_vec()).unwrap();
        assert_eq!(f.add_file("bootorder", vec![]), Err(FwCfgError::Duplicate("bootorder".into())));
        assert!(f.add_file(&"x".repeat(56), vec![]).is_err());
        let dir = read_item(&mut f, item::FILE_DIR, 4 + 2 * 64);
        assert_eq!(u32::from_be_bytes(dir[0..4].try_into().unwrap()), 2);
        assert_eq!(&dir[12..21], b"bootorder");
        assert_eq!(u32::from_be_bytes(dir[68..72].try_into().unwrap()), 40);
        let e820_key = u16::from_be_bytes(dir[72..74].try_into().unwrap());
        assert_eq!(&dir[76..84], b"etc/e820");

        // DMA: select + read 8 bytes into 0x9000, descriptor at 0x8000.
        let control = (u32::from(e820_key) << 16) | DMA_SELECT | DMA_READ;
        f.mem.write_obj(control.to_be(), GuestAddress(0x8000)).unwrap();
        f.mem.write_obj(8u32.to_be(), GuestAddress(0x8004)).unwrap();
        f.mem.write_obj(0x9000u64.to_be(), GuestAddress(0x8008)).unwrap();
        f.write(DMA_HIGH_OFFSET, &0u32.to_be_bytes());
        f.write(DMA_LOW_OFFSET, &0x8000u32.to_be_bytes());
        assert_eq!(f.mem.read_obj::<u32>(GuestAddress(0x8000)).unwrap(), 0, "done, no error");
        assert_eq!(f.mem.read_obj::<[u8; 8]>(GuestAddress(0x9000)).unwrap(), [1; 8]);

        // A write is refused with the error bit; a descriptor outside
        // memory is ignored without harm.
        f.mem.write_obj(DMA_WRITE.to_be(), GuestAddress(0x8000)).unwrap();
        f.write(DMA_LOW_OFFSET, &0x8000u32.to_be_bytes());
        assert_eq!(u32::from_be(f.mem.read_obj::<u32>(GuestAddress(0x8000)).unwrap()), DMA_ERROR);
        f.write(DMA_HIGH_OFFSET, &0xffffu32.to_be_bytes());
        f.write(DMA_LOW_OFFSET, &0xffff_0000u32.to_be_bytes());
    }

    /// Found by the fw_cfg fuzzer: the guest's DMA length sized a buffer
    /// here, so one request could make the VMM allocate 4 GiB.
    #[test]
    fn a_dma_read_longer_than_memory_is_refused_and_a_long_one_reads_zeros() {
        let mut f = fw();
        f.add_file("etc/e820", vec![1; 40]).unwrap();
        let key = u16::from_be_bytes(read_item(&mut f, item::FILE_DIR, 4 + 64)[8..10].try_into().unwrap());
        let request = |f: &mut FwCfg, length: u32, address: u64| {
            let control = (u32::from(key) << 16) | DMA_SELECT | DMA_READ;
            f.mem.write_obj(control.to_be(), GuestAddress(0x8000)).unwrap();
            f.mem.write_obj(length.to_be(), GuestAddress(0x8004)).unwrap();
            f.mem.write_obj(address.to_be(), GuestAddress(0x8008)).unwrap();
            f.write(DMA_HIGH_OFFSET, &0u32.to_be_bytes());
            f.write(DMA_LOW_OFFSET, &0x8000u32.to_be_bytes());
            u32::from_be(f.mem.read_obj::<u32>(GuestAddress(0x8000)).unwrap())
        };
        use crate::test_util::peak_rss_kib;
        let peak_before = peak_rss_kib();
        assert_eq!(request(&mut f, u32::MAX, 0x9000), DMA_ERROR, "4 GiB into 1 MiB of memory");
        assert!(peak_rss_kib() < peak_before + 64 * 1024, "no buffer of the guest's size");
        // Past the item's 40 bytes the destination is filled with zeros.
        f.mem.write_slice(&[0xaa; 3 * 4096], GuestAddress(0x10000)).unwrap();
        assert_eq!(request(&mut f, 2 * 4096 + 100, 0x10000), 0);
        let mut got = vec![0u8; 2 * 4096 + 100];
        f.mem.read_slice(&mut got, GuestAddress(0x10000)).unwrap();
        assert_eq!(got[..40], [1; 40]);
        assert!(got[40..].iter().all(|&b| b == 0));
        assert_eq!(f.mem.read_obj::<u8>(GuestAddress(0x10000 + 2 * 4096 + 100)).unwrap(), 0xaa, "and no further");
    }

    #[test]
    fn generated_files_are_built_at_select_with_a_stable_size() {
        let mut f = fw();
        let n = Arc::new(std::sync::atomic::AtomicU8::new(1));
        let n2 = Arc::clone(&n);
        f.add_generated_file(
            "etc/acpi/tables",
            Arc::new(move || vec![n2.load(std::sync::atomic::Ordering::SeqCst); 4]),
        )
        .unwrap();
        n.store(9, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(read_item(&mut f, item::FILE_FIRST, 4), [9; 4]);
    }
}
