//! The devices a guest sees, and the buses that route its accesses.
pub mod acpi_pm;
pub mod bus;
pub mod chipset;
pub mod display;
pub mod flash;
pub mod fw_cfg;
pub mod ide;
pub mod legacy;
pub mod pci;
pub mod virtio;
