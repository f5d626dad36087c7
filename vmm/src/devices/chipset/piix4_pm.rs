//! The PIIX4 power-management function (00:01.3, 8086:7113).
//!
//! Firmware writes PMBASE (config 0x40) and sets PMIOSE (config 0x80 bit 0);
//! the ACPI registers ([`crate::devices::acpi_pm::AcpiPm`]: PM1a event and
//! control, PM timer) then appear at PMBASE on the I/O bus and follow it
//! when it moves. The FADT is built when the firmware reads it, from the
//! PMBASE in force then ([`Self::pm_base`]).
//!
//! Config byte 0x5B reads 0x02 (APMC_EN in DEVACTB), which tells SeaBIOS
//! that SMM is already set up: there is no SMM on this platform.

use crate::devices::acpi_pm::AcpiPm;
use crate::devices::bus::Bus;
use crate::devices::pci::config_space::{ConfigSpace, Identity};
use crate::devices::pci::{PciDevice, SUBSYSTEM_QEMU, VENDOR_INTEL, VENDOR_REDHAT_QUMRANET};
use std::sync::{Arc, Mutex};

pub const DEVICE_ID: u16 = 0x7113;
const PMBASE: usize = 0x40;
const DEVACTB: usize = 0x58;
const PMREGMISC: usize = 0x80;
const SMBHSTBASE: usize = 0x90;
/// The PIIX4's PM I/O space.
pub const IO_LEN: u64 = 64;

pub struct PowerManagement {
    config: ConfigSpace,
    pm: Arc<Mutex<AcpiPm>>,
    io_bus: Arc<Bus>,
    mapped: Option<u16>,
}

impl PowerManagement {
    pub fn new(pm: Arc<Mutex<AcpiPm>>, io_bus: Arc<Bus>) -> Self {
        let mut config = ConfigSpace::new(Identity {
            vendor: VENDOR_INTEL,
            device: DEVICE_ID,
            revision: 0x03,
            class: [0x06, 0x80, 0x00],
            subsystem_vendor: VENDOR_REDHAT_QUMRANET,
            subsystem: SUBSYSTEM_QEMU,
            multifunction: false,
            interrupt_pin: 1,
        });
        // Bit 0 says "I/O space"; bits 15:6 are the 64-byte aligned base.
        config.set_u32(PMBASE, 1);
        config.set_writable(PMBASE, &[0xc0, 0xff]);
        config.set_writable(PMREGMISC, &[0x01]);
        config.set_u8(DEVACTB + 3, 0x02);
        config.set_u32(SMBHSTBASE, 1);
        config.set_writable(SMBHSTBASE, &[0xf0, 0xff]);
        Self { config, pm, io_bus, mapped: None }
    }

    /// Where the ACPI registers decode now, if the firmware enabled them.
    pub fn pm_base(&self) -> Option<u16> {
        let base = (self.config.u32(PMBASE) & 0xffc0) as u16;
        (self.config.u8(PMREGMISC) & 1 != 0 && base != 0).then_some(base)
    }
}

impl PciDevice for PowerManagement {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_written(&mut self, _offset: usize, _len: usize) {
        let want = self.pm_base();
        if want == self.mapped {
            return;
        }
        if let Some(old) = self.mapped.take() {
            self.io_bus.remove(u64::from(old));
        }
        if let Some(base) = want {
            match self.io_bus.insert(u64::from(base), IO_LEN, self.pm.clone()) {
                Ok(()) => self.mapped = Some(base),
                Err(e) => tracing::warn!("PIIX4 PM: PMBASE {base:#x} not mapped: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::ExitSignal;

    #[test]
    fn the_acpi_registers_follow_pmbase() {
        let io = Arc::new(Bus::default());
        let exit = Arc::new(ExitSignal::new().unwrap());
        let pm = Arc::new(Mutex::new(AcpiPm::new(Box::new(|_| {}), exit)));
        let mut dev = PowerManagement::new(pm, Arc::clone(&io));
        let mut b = [0u8; 4];
        dev.config().read(DEVACTB, &mut b);
        assert_ne!(u32::from_le_bytes(b) & (1 << 25), 0, "SMM reported as set up");
        dev.config_mut().write(PMBASE, &0x0601u32.to_le_bytes());
        dev.config_written(PMBASE, 4);
        assert_eq!(dev.pm_base(), None, "not until PMIOSE");
        dev.config_mut().write(PMREGMISC, &[1]);
        dev.config_written(PMREGMISC, 1);
        assert_eq!(dev.pm_base(), Some(0x600));
        assert!(io.read(0x608, &mut b), "the PM timer at PMBASE+8");
        dev.config_mut().write(PMBASE, &0xb001u32.to_le_bytes());
        dev.config_written(PMBASE, 4);
        assert!(!io.read(0x608, &mut b));
        assert!(io.read(0xb008, &mut b));
        dev.config().read(PMBASE, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0xb001);
    }
}
