//! The i440FX chipset as QEMU's "pc" machine presents it, so that SeaBIOS,
//! OVMF and operating systems find the platform they were built for:
//!
//! - 00:00.0 [`i440fx::HostBridge`]: the host bridge (PAM and SMRAM
//!   registers, QEMU's subsystem ID, which firmware looks for);
//! - 00:01.0 [`piix3::IsaBridge`]: the PIIX3 PCI-to-ISA bridge with its
//!   PIRQ routing registers;
//! - 00:01.3 [`piix4_pm::PowerManagement`]: the PIIX4 power-management
//!   function, whose PMBASE places the ACPI registers and PM timer.
//!
//! The PIIX3's reset control register at 0xCF9 lives in
//! [`crate::devices::pci::root`], since it shares the port range of
//! CONFIG_ADDRESS.

pub mod i440fx;
pub mod piix3;
pub mod piix4_pm;

/// Where the chipset's functions sit on bus 0.
pub const HOST_BRIDGE_SLOT: u8 = 0;
pub const PIIX_SLOT: u8 = 1;
pub const PIIX3_ISA_FUNCTION: u8 = 0;
pub const PIIX4_PM_FUNCTION: u8 = 3;
/// The standard VGA, where QEMU puts it.
pub const VGA_SLOT: u8 = 2;
/// The first slot free for the other devices.
pub const FIRST_DEVICE_SLOT: u8 = 3;
