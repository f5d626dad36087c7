//! PCI: configuration space, the root bus behind ports 0xCF8/0xCFC, and
//! MSI-X. Devices implement [`PciDevice`]; the [`root::PciRoot`] routes
//! configuration cycles to them and maps their BARs on the I/O and MMIO
//! buses wherever the firmware or the OS places them.

pub mod config_space;
pub mod msix;
pub mod root;

pub use config_space::{ConfigSpace, Identity};

/// The command register and the bits the root cares about.
pub const COMMAND: usize = 0x04;
pub const COMMAND_IO: u16 = 1;
pub const COMMAND_MEMORY: u16 = 2;
pub const COMMAND_BUS_MASTER: u16 = 4;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
pub const STATUS: usize = 0x06;
pub const STATUS_CAP_LIST: u16 = 1 << 4;
pub const STATUS_INTERRUPT: u16 = 1 << 3;

/// Capability IDs.
pub const CAP_VENDOR: u8 = 0x09;
pub const CAP_MSIX: u8 = 0x11;

/// Vendor IDs.
pub const VENDOR_INTEL: u16 = 0x8086;
pub const VENDOR_REDHAT_QUMRANET: u16 = 0x1af4;
/// The subsystem QEMU gives its platform devices; SeaBIOS takes it on the
/// host bridge as the sign that it runs on a QEMU-like machine.
pub const SUBSYSTEM_QEMU: u16 = 0x1100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32,
    Mem64,
}

/// A PCI function as the root bus sees it.
pub trait PciDevice: Send {
    fn config(&self) -> &ConfigSpace;
    fn config_mut(&mut self) -> &mut ConfigSpace;
    /// A guest read of configuration space; devices whose registers change
    /// on their own override it.
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data);
    }
    /// Side effects of a guest write that already landed in config space.
    fn config_written(&mut self, _offset: usize, _len: usize) {}
    /// A guest access inside BAR `bar`.
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
    /// BAR `bar` now decodes at `addr` (None: nowhere). Devices with
    /// ioeventfds inside a BAR move them here.
    fn bar_moved(&mut self, _bar: usize, _addr: Option<u64>) {}
}
