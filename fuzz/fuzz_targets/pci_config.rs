//! PCI configuration space through ports 0xCF8/0xCFC (and the reset
//! register at 0xCF9), on the PC machine's chipset (i440FX host bridge,
//! PIIX3 ISA bridge, PIIX4 power management) and the standard VGA: BAR
//! sizing and moves, the PM base, commands, capabilities, garbage.
#![no_main]

#[path = "port_ops.rs"]
mod port_ops;

use kvmos_vmm::devices::acpi_pm::AcpiPm;
use kvmos_vmm::devices::bus::Bus;
use kvmos_vmm::devices::chipset::{
    i440fx::HostBridge, piix3::IsaBridge, piix4_pm::PowerManagement, HOST_BRIDGE_SLOT, PIIX3_ISA_FUNCTION,
    PIIX4_PM_FUNCTION, PIIX_SLOT, VGA_SLOT,
};
use kvmos_vmm::devices::display::stdvga::StdVga;
use kvmos_vmm::devices::pci::root::{devfn, PciRoot, PORT_SPAN};
use kvmos_vmm::exit::ExitSignal;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, Mutex};

fuzz_target!(|data: &[u8]| {
    let exit = Arc::new(ExitSignal::new().expect("eventfd"));
    let (io, mmio) = (Arc::new(Bus::default()), Arc::new(Bus::default()));
    let mut root = PciRoot::new(Arc::clone(&io), Arc::clone(&mmio), Arc::clone(&exit));
    root.add(devfn(HOST_BRIDGE_SLOT, 0), Arc::new(Mutex::new(HostBridge::default())));
    root.add(devfn(PIIX_SLOT, PIIX3_ISA_FUNCTION), Arc::new(Mutex::new(IsaBridge::default())));
    let pm = Arc::new(Mutex::new(AcpiPm::new(Box::new(|_| {}), Arc::clone(&exit))));
    root.add(devfn(PIIX_SLOT, PIIX4_PM_FUNCTION), Arc::new(Mutex::new(PowerManagement::new(pm, Arc::clone(&io)))));
    if let Ok(vga) = StdVga::new(None, 1) {
        root.add(devfn(VGA_SLOT, 0), Arc::new(Mutex::new(vga)));
    }
    port_ops::drive(&mut root, data, PORT_SPAN);
});
