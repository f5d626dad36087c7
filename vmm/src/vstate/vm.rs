//! The KVM VM: guest memory registered with KVM, the in-kernel interrupt
//! controllers (PIC, IOAPIC, local APICs) and PIT.

use super::memory::GuestMemory;
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use std::sync::Arc;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::layout::{KVM_IDENTITY_MAP_START, KVM_TSS_START};

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
    /// cannot map {0} bytes for the firmware: {1}
    RomMemory(usize, String),
    /// KVM refused the firmware's memory at {0:#x}: {1}
    RomSlot(u64, kvm_ioctls::Error),
}

pub struct Vm {
    pub kvm: Kvm,
    pub fd: Arc<VmFd>,
    pub memory: GuestMemory,
    /// Firmware images mapped read-only, kept alive with the VM.
    roms: Vec<Arc<vm_memory::mmap::MmapRegion<()>>>,
    next_slot: u32,
}

/// A read-only memory slot: where it is and what backs it, so a flash
/// device can change the bytes behind it and take it away while reads must
/// reach the device.
pub struct RomSlot {
    pub slot: u32,
    pub guest_addr: u64,
    pub memory: Arc<vm_memory::mmap::MmapRegion<()>>,
    pub read_only: bool,
}

impl RomSlot {
    /// Maps (`present`) or unmaps the slot in KVM.
    pub fn set_present(&self, vm: &VmFd, present: bool) -> Result<(), kvm_ioctls::Error> {
        let r = kvm_userspace_memory_region {
            slot: self.slot,
            guest_phys_addr: self.guest_addr,
            memory_size: if present { self.memory.size() as u64 } else { 0 },
            userspace_addr: self.memory.as_ptr() as u64,
            flags: if self.read_only { kvm_bindings::KVM_MEM_READONLY } else { 0 },
        };
        // SAFETY: the mapping is kept alive by `self.memory` (and the Vm).
        unsafe { vm.set_user_memory_region(r) }
    }
}

impl Vm {
    /// Creates the VM, registers `memory` and creates the in-kernel
    /// irqchip and PIT.
    pub fn new(memory: GuestMemory) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_START).map_err(VmError::Tss)?;
        fd.set_tss_address(KVM_TSS_START as usize).map_err(VmError::Tss)?;
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
        let next_slot = memory.num_regions() as u32;
        Ok(Self { kvm, fd: Arc::new(fd), memory, roms: Vec::new(), next_slot })
    }

    /// A memory slot number for a region the caller maps itself (the
    /// framebuffer, which moves with its BAR).
    pub fn new_slot(&mut self) -> u32 {
        self.next_slot += 1;
        self.next_slot - 1
    }

    /// Maps `image` at guest address `at`, read-only where KVM supports
    /// it (a guest write then exits to the VMM and changes nothing).
    pub fn map_rom(&mut self, at: u64, image: &[u8]) -> Result<RomSlot, VmError> {
        let len = image.len();
        let region = vm_memory::mmap::MmapRegion::<()>::new(len).map_err(|e| VmError::RomMemory(len, e.to_string()))?;
        // SAFETY: the region is a fresh private mapping of `len` bytes.
        unsafe { std::ptr::copy_nonoverlapping(image.as_ptr(), region.as_ptr(), len) };
        let read_only = self.kvm.check_extension(kvm_ioctls::Cap::ReadonlyMem);
        let rom = RomSlot { slot: self.next_slot, guest_addr: at, memory: Arc::new(region), read_only };
        rom.set_present(&self.fd, true).map_err(|e| VmError::RomSlot(at, e))?;
        if !read_only {
            tracing::warn!("KVM has no read-only memory here; the firmware at {at:#x} is writable by the guest");
        }
        self.next_slot += 1;
        self.roms.push(Arc::clone(&rom.memory));
        Ok(rom)
    }
}
