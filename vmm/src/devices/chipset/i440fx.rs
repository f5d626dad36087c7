//! The i440FX host bridge (00:00.0, 8086:1237).
//!
//! SeaBIOS recognises QEMU's platform by this device and its subsystem ID
//! (1af4:1100); OVMF asserts on any other host bridge ID. The PAM registers
//! (0x59-0x5F) that shadow the BIOS area are kept so firmware reads back
//! what it wrote; guest RAM always backs 0xC0000-0xFFFFF here, with the
//! firmware's last 128 KiB copied there at reset (see
//! [`crate::arch::firmware`]), so the shadowing needs no remapping.

use crate::devices::pci::config_space::{ConfigSpace, Identity};
use crate::devices::pci::{PciDevice, SUBSYSTEM_QEMU, VENDOR_INTEL, VENDOR_REDHAT_QUMRANET};

pub const DEVICE_ID: u16 = 0x1237;
const PAM0: usize = 0x59;
const PAM_COUNT: usize = 7;
const SMRAM: usize = 0x72;

pub struct HostBridge {
    config: ConfigSpace,
}

impl Default for HostBridge {
    fn default() -> Self {
        let mut config = ConfigSpace::new(Identity {
            vendor: VENDOR_INTEL,
            device: DEVICE_ID,
            revision: 0x02,
            class: [0x06, 0x00, 0x00],
            subsystem_vendor: VENDOR_REDHAT_QUMRANET,
            subsystem: SUBSYSTEM_QEMU,
            multifunction: false,
            interrupt_pin: 0,
        });
        config.set_writable(PAM0, &[0x33; PAM_COUNT]);
        // SMRAM: firmware may write it; there is no SMM behind it.
        config.set_writable(SMRAM, &[0x78]);
        config.set_u8(SMRAM, 0x02);
        Self { config }
    }
}

impl PciDevice for HostBridge {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
}
