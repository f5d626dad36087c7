//! The KVM VM: guest memory registered with KVM, the in-kernel interrupt
//! controllers (PIC, IOAPIC, local APICs) and PIT.

use super::memory::GuestMemory;
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use std::sync::Arc;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

/// Where KVM puts the TSS it needs for real-mode emulation on Intel: the
/// top of the 32-bit space, inside the MMIO hole, away from any device.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

#[derive(Debug, displaydoc::Display, thiserror::Error)]
pub enum VmError {
    /// cannot open /dev/kvm: {0}; is KVM enabled in the firmware and the kvm module loaded?
    OpenKvm(kvm_ioctls::Error),
    /// KVM cannot create a VM: {0}
    CreateVm(kvm_ioctls::Error),
    /// KVM refused the guest memory: {0}
    Memory(kvm_ioctls::Error),
    /// KVM cannot create the interrupt controllers or the PIT: {0}
    IrqChip(kvm_ioctls::Error),
    /// KVM cannot set up the TSS: {0}
    Tss(kvm_ioctls::Error),
}

pub struct Vm {
    pub kvm: Kvm,
    pub fd: Arc<VmFd>,
    pub memory: GuestMemory,
}

impl Vm {
    /// Creates the VM, registers `memory` and creates the in-kernel
    /// irqchip and PIT.
    pub fn new(memory: GuestMemory) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        fd.set_tss_address(KVM_TSS_ADDRESS).map_err(VmError::Tss)?;
        for (slot, region) in memory.iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping owned by `memory`, which
            // the Vm keeps for as long as the VM fd exists.
            unsafe { fd.set_user_memory_region(r) }.map_err(VmError::Memory)?;
        }
        fd.create_irq_chip().map_err(VmError::IrqChip)?;
        let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
        fd.create_pit2(pit).map_err(VmError::IrqChip)?;
        Ok(Self { kvm, fd: Arc::new(fd), memory })
    }
}
