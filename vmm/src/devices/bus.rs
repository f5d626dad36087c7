//! The I/O-port and MMIO buses: which device answers an address a vCPU
//! touches. Devices take the offset within their own range.
//!
//! Ranges can move while the VM runs: PCI firmware assigns BARs, and the
//! PIIX4 moves its PM registers where the firmware programs PMBASE. So the
//! map sits behind a read-write lock that vCPUs only read.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// Something a vCPU can read and write.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, PartialEq, Eq)]
pub struct OverlapError {
    pub base: u64,
    pub len: u64,
}

impl std::fmt::Display for OverlapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "device range {:#x}+{:#x} overlaps another device", self.base, self.len)
    }
}

type Ranges = BTreeMap<u64, (u64, Arc<Mutex<dyn BusDevice>>)>;

/// A set of non-overlapping address ranges, each with its device.
#[derive(Default)]
pub struct Bus {
    devices: RwLock<Ranges>,
}

impl Bus {
    pub fn insert(&self, base: u64, len: u64, dev: Arc<Mutex<dyn BusDevice>>) -> Result<(), OverlapError> {
        let mut devices = self.devices.write().unwrap_or_else(|p| p.into_inner());
        let end = base.checked_add(len).ok_or(OverlapError { base, len })?;
        let clash = devices.range(..end).next_back().is_some_and(|(&b, &(l, _))| b + l > base);
        if len == 0 || clash {
            return Err(OverlapError { base, len });
        }
        devices.insert(base, (len, dev));
        Ok(())
    }

    /// Takes the range that starts at `base` off the bus; false if none did.
    pub fn remove(&self, base: u64) -> bool {
        self.devices.write().unwrap_or_else(|p| p.into_inner()).remove(&base).is_some()
    }

    fn find(&self, addr: u64) -> Option<(u64, Arc<Mutex<dyn BusDevice>>)> {
        let devices = self.devices.read().unwrap_or_else(|p| p.into_inner());
        let (&base, (len, dev)) = devices.range(..=addr).next_back()?;
        (addr - base < *len).then(|| (addr - base, Arc::clone(dev)))
    }

    /// Reads from the device at `addr`; false if there is none.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((off, dev)) => {
                dev.lock().unwrap_or_else(|p| p.into_inner()).read(off, data);
                true
            }
            None => false,
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((off, dev)) => {
                dev.lock().unwrap_or_else(|p| p.into_inner()).write(off, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn routes_by_range_with_offsets_and_refuses_overlap() {
        let bus = Bus::default();
        bus.insert(0x3f8, 8, Arc::new(Mutex::new(Echo(0x10)))).unwrap();
        assert!(bus.insert(0x3fc, 8, Arc::new(Mutex::new(Echo(0)))).is_err());
        assert!(bus.insert(0x3f0, 9, Arc::new(Mutex::new(Echo(0)))).is_err());
        bus.insert(0x400, 1, Arc::new(Mutex::new(Echo(0)))).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3f9, &mut b));
        assert_eq!(b[0], 0x11);
        assert!(!bus.read(0x3f7, &mut b));
        assert!(!bus.read(0x401, &mut b));
        assert!(bus.write(0x3f8, &[0x20]));
        bus.read(0x3f8, &mut b);
        assert_eq!(b[0], 0x20);
        assert!(bus.remove(0x3f8));
        assert!(!bus.read(0x3f8, &mut b));
        bus.insert(0x3f0, 9, Arc::new(Mutex::new(Echo(0)))).unwrap();
    }
}
