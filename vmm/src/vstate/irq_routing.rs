//! KVM's GSI routing table: the in-kernel PIC and IOAPIC pins KVM sets up by
//! default, plus one MSI route per MSI-X vector a guest programs.
//!
//! KVM_SET_GSI_ROUTING replaces the whole table, so the pin routes are
//! rebuilt each time, laid out as QEMU lays them out for a PC: GSI 0-15 on
//! both the PIC and the IOAPIC, 16-23 on the IOAPIC only, except that the
//! PIT's IRQ 0 reaches IOAPIC pin 2 (the MADT says so with an interrupt
//! source override) and GSI 2, the PIC cascade, is not routed. MSI vectors
//! get GSIs from 24 up.

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The IOAPIC's pins; MSI GSIs start after them.
pub const IOAPIC_PINS: u32 = 24;

/// An MSI message: where the guest asked the interrupt to be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

pub struct IrqRouting {
    vm: Arc<VmFd>,
    state: Mutex<State>,
}

struct State {
    next_gsi: u32,
    msi: BTreeMap<u32, MsiMessage>,
}

impl IrqRouting {
    /// Takes over the VM's routing and installs the PC pin layout.
    pub fn new(vm: Arc<VmFd>) -> Result<Self, kvm_ioctls::Error> {
        vm.set_gsi_routing(&routing_table(&BTreeMap::new()))?;
        Ok(Self { vm, state: Mutex::new(State { next_gsi: IOAPIC_PINS, msi: BTreeMap::new() }) })
    }

    /// A fresh GSI for an MSI vector (not routed until [`Self::set_msi`]).
    pub fn allocate_gsi(&self) -> u32 {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let gsi = s.next_gsi;
        s.next_gsi += 1;
        gsi
    }

    /// Where `gsi` is routed, if it is an MSI route.
    pub fn msi_route(&self, gsi: u32) -> Option<MsiMessage> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).msi.get(&gsi).copied()
    }

    /// Routes `gsi` to `msg`, or takes its route away; a message that is
    /// already routed is not sent to KVM again.
    pub fn set_msi(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<(), kvm_ioctls::Error> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let changed = match msg {
            Some(m) => s.msi.insert(gsi, m) != Some(m),
            None => s.msi.remove(&gsi).is_some(),
        };
        if !changed {
            return Ok(());
        }
        let table = routing_table(&s.msi);
        self.vm.set_gsi_routing(&table)
    }
}

fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry { gsi, type_: KVM_IRQ_ROUTING_IRQCHIP, ..Default::default() };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

/// The default pins plus every MSI route.
fn routing_table(msi: &BTreeMap<u32, MsiMessage>) -> KvmIrqRouting {
    let mut entries = Vec::new();
    for gsi in (0..IOAPIC_PINS).filter(|&g| g != 2) {
        if gsi < 8 {
            entries.push(irqchip(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
        } else if gsi < 16 {
            entries.push(irqchip(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
        }
        entries.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, if gsi == 0 { 2 } else { gsi }));
    }
    for (&gsi, m) in msi {
        let mut e = kvm_irq_routing_entry { gsi, type_: KVM_IRQ_ROUTING_MSI, ..Default::default() };
        e.u.msi.address_lo = m.address as u32;
        e.u.msi.address_hi = (m.address >> 32) as u32;
        e.u.msi.data = m.data;
        entries.push(e);
    }
    // The table is far below KVM's 4096-entry limit for any VM we build.
    KvmIrqRouting::from_entries(&entries).unwrap_or_else(|_| KvmIrqRouting::new(0).expect("empty routing table"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_keeps_the_default_pins_and_adds_msi_routes() {
        let mut msi = BTreeMap::new();
        let t = routing_table(&msi);
        // 15 PIC routes and 23 IOAPIC routes: GSI 2 is the cascade.
        assert_eq!(t.as_slice().len(), 38);
        let pit = t.as_slice().iter().find(|e| e.gsi == 0 && e.type_ == KVM_IRQ_ROUTING_IRQCHIP).copied().unwrap();
        // SAFETY: reading the union member these entries are written with.
        assert_eq!(unsafe { pit.u.irqchip.pin }, 0, "PIC pin 0 first");
        msi.insert(24, MsiMessage { address: 0xfee0_0000, data: 0x4041 });
        let t = routing_table(&msi);
        let last = t.as_slice().last().copied().unwrap();
        assert_eq!((last.gsi, last.type_), (24, KVM_IRQ_ROUTING_MSI));
        // SAFETY: reading the union member this entry was written with.
        assert_eq!(unsafe { last.u.msi.data }, 0x4041);
    }
}
