//! The PIIX3 PCI-to-ISA bridge (00:01.0, 8086:7000), function 0 of the
//! multi-function PIIX device.
//!
//! Firmware programs the PIRQ route registers (0x60-0x63) and the ELCR
//! (ports 0x4D0/0x4D1, which KVM's in-kernel PIC handles). Interrupts of
//! PCI devices reach the guest in APIC mode through the DSDT's `_PRT`,
//! which names fixed IOAPIC pins ([`intx_gsi`]), so the route registers
//! only hold what firmware wrote. Guests that run the PCI interrupts
//! through the 8259 PIC alone (no APIC) are not supported.

use crate::devices::pci::config_space::{ConfigSpace, Identity};
use crate::devices::pci::{PciDevice, SUBSYSTEM_QEMU, VENDOR_INTEL, VENDOR_REDHAT_QUMRANET};

pub const DEVICE_ID: u16 = 0x7000;
const PIRQ_ROUTE: usize = 0x60;
/// The IOAPIC pin of PIRQA; PIRQB-D follow.
pub const PIRQ_GSI_BASE: u32 = 16;

/// The IOAPIC pin INTx `pin` (1 = INTA#) of a device in `slot` is wired
/// to: the PIIX swizzle (`(pin - 1 + slot - 1) mod 4` picks PIRQA-D), each
/// PIRQ on its own pin from [`PIRQ_GSI_BASE`].
pub fn intx_gsi(slot: u8, pin: u8) -> u32 {
    let pirq = (u32::from(pin.max(1)) - 1 + u32::from(slot) + 3) % 4;
    PIRQ_GSI_BASE + pirq
}

pub struct IsaBridge {
    config: ConfigSpace,
}

impl Default for IsaBridge {
    fn default() -> Self {
        let mut config = ConfigSpace::new(Identity {
            vendor: VENDOR_INTEL,
            device: DEVICE_ID,
            revision: 0,
            class: [0x06, 0x01, 0x00],
            subsystem_vendor: VENDOR_REDHAT_QUMRANET,
            subsystem: SUBSYSTEM_QEMU,
            multifunction: true,
            interrupt_pin: 0,
        });
        // PIRQA-D start disabled (bit 7), as after a reset.
        for i in 0..4 {
            config.set_u8(PIRQ_ROUTE + i, 0x80);
        }
        config.set_writable(PIRQ_ROUTE, &[0x8f; 4]);
        Self { config }
    }
}

impl PciDevice for IsaBridge {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_swizzle_matches_qemu_and_seabios() {
        // Slot 1 INTA is PIRQA; each slot and each pin moves one PIRQ on.
        assert_eq!(intx_gsi(1, 1), 16);
        assert_eq!(intx_gsi(2, 1), 17);
        assert_eq!(intx_gsi(3, 1), 18);
        assert_eq!(intx_gsi(4, 1), 19);
        assert_eq!(intx_gsi(5, 1), 16);
        assert_eq!(intx_gsi(2, 2), 18);
    }
}
