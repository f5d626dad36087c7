//! MSI-X (PCI 3.0, 6.8.2): the capability, the vector table and the
//! pending-bit array a function keeps in one of its BARs.
//!
//! Each vector has an irqfd on a GSI of its own; while the guest has MSI-X
//! enabled, that GSI is routed in KVM to the message (address and data) the
//! guest last wrote into the table, so raising the interrupt is one eventfd
//! write. Masking is done here, not in KVM: a vector raised while masked is
//! remembered in the pending-bit array and raised when the guest unmasks
//! it. The route stays as it was while a vector is masked, so a message KVM
//! is still delivering when the guest masks (as Linux does around every
//! change of a vector's address) arrives, as it would from hardware, and
//! the new message is routed once, when the guest unmasks the vector.

use crate::vstate::irq_routing::{IrqRouting, MsiMessage};
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

/// Bytes per table entry: address low, address high, data, vector control.
pub const ENTRY_SIZE: u64 = 16;
/// No vector (virtio's `VIRTIO_MSI_NO_VECTOR`).
pub const NO_VECTOR: u16 = 0xffff;
/// Message control bits.
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const VECTOR_MASKED: u32 = 1;

#[derive(Clone, Copy, Default)]
struct Entry {
    address: u64,
    data: u32,
    control: u32,
}

impl Entry {
    fn masked(&self) -> bool {
        self.control & VECTOR_MASKED != 0
    }
}

pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    enabled: bool,
    function_masked: bool,
    gsis: Vec<u32>,
    irqfds: Vec<EventFd>,
    routing: Arc<IrqRouting>,
}

#[derive(Debug, displaydoc::Display, thiserror::Error)]
pub enum MsixError {
    /// cannot create an MSI-X event fd: {0}
    EventFd(std::io::Error),
    /// KVM refused an MSI-X irqfd: {0}
    Irqfd(kvm_ioctls::Error),
}

impl Msix {
    /// `vectors` vectors, all masked, as after reset.
    pub fn new(vectors: u16, vm: &kvm_ioctls::VmFd, routing: Arc<IrqRouting>) -> Result<Self, MsixError> {
        let mut gsis = Vec::new();
        let mut irqfds = Vec::new();
        for _ in 0..vectors {
            let gsi = routing.allocate_gsi();
            let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(MsixError::EventFd)?;
            vm.register_irqfd(&fd, gsi).map_err(MsixError::Irqfd)?;
            gsis.push(gsi);
            irqfds.push(fd);
        }
        let n = usize::from(vectors);
        Ok(Self {
            entries: vec![Entry { control: VECTOR_MASKED, ..Default::default() }; n],
            pending: vec![false; n],
            enabled: false,
            function_masked: false,
            gsis,
            irqfds,
            routing,
        })
    }

    pub fn vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    /// The capability body after ID and next pointer: message control,
    /// table offset/BIR, PBA offset/BIR; and its write mask (only the
    /// enable and function-mask bits).
    pub fn capability(&self, bar: u8, table_offset: u32, pba_offset: u32) -> ([u8; 10], [u8; 10]) {
        let mut body = [0u8; 10];
        body[0..2].copy_from_slice(&(self.vectors() - 1).to_le_bytes());
        body[2..6].copy_from_slice(&(table_offset | u32::from(bar)).to_le_bytes());
        body[6..10].copy_from_slice(&(pba_offset | u32::from(bar)).to_le_bytes());
        let mut mask = [0u8; 10];
        mask[1] = 0xc0;
        (body, mask)
    }

    /// Bytes the table and the pending bits take in the BAR.
    pub fn table_len(&self) -> u64 {
        u64::from(self.vectors()) * ENTRY_SIZE
    }
    pub fn pba_len(&self) -> u64 {
        u64::from(self.vectors()).div_ceil(64) * 8
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The guest wrote the message control word.
    pub fn set_control(&mut self, control: u16) {
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        for v in 0..self.entries.len() {
            self.update_route(v);
            self.deliver_pending(v);
        }
    }

    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        let mut bytes = [0u8; 16];
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            let v = (at / ENTRY_SIZE) as usize;
            *b = match self.entries.get(v) {
                Some(e) => {
                    bytes[0..8].copy_from_slice(&e.address.to_le_bytes());
                    bytes[8..12].copy_from_slice(&e.data.to_le_bytes());
                    bytes[12..16].copy_from_slice(&e.control.to_le_bytes());
                    bytes[(at % ENTRY_SIZE) as usize]
                }
                None => 0,
            };
        }
    }

    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let v = (offset / ENTRY_SIZE) as usize;
        let Some(e) = self.entries.get_mut(v) else { return };
        let mut bytes = [0u8; 16];
        bytes[0..8].copy_from_slice(&e.address.to_le_bytes());
        bytes[8..12].copy_from_slice(&e.data.to_le_bytes());
        bytes[12..16].copy_from_slice(&e.control.to_le_bytes());
        let start = (offset % ENTRY_SIZE) as usize;
        let end = (start + data.len()).min(16);
        bytes[start..end].copy_from_slice(&data[..end - start]);
        e.address = u64::from_le_bytes(bytes[0..8].try_into().unwrap_or_default());
        e.data = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
        e.control = u32::from_le_bytes(bytes[12..16].try_into().unwrap_or_default()) & VECTOR_MASKED;
        self.update_route(v);
        self.deliver_pending(v);
    }

    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let first = ((offset + i as u64) * 8) as usize;
            *b = (0..8)
                .filter(|bit| self.pending.get(first + bit).copied().unwrap_or(false))
                .fold(0, |a, bit| a | 1 << bit);
        }
    }

    fn deliverable(&self, v: usize) -> bool {
        self.enabled && !self.function_masked && self.entries.get(v).is_some_and(|e| !e.masked())
    }

    /// Routes vector `v` to its message while it is unmasked, takes the
    /// route away while MSI-X is off, and keeps the last route while the
    /// vector is masked: the guest rewrites a masked entry a field at a
    /// time, and KVM never sees a half-written message.
    fn update_route(&self, v: usize) {
        let (Some(e), Some(&gsi)) = (self.entries.get(v), self.gsis.get(v)) else { return };
        let msg = match (self.enabled, e.masked() || self.function_masked) {
            (false, _) => None,
            (true, true) => return,
            (true, false) => Some(MsiMessage { address: e.address, data: e.data }),
        };
        if let Err(err) = self.routing.set_msi(gsi, msg) {
            tracing::warn!("MSI-X vector {v}: KVM refused the route: {err}");
        }
    }

    fn deliver_pending(&mut self, v: usize) {
        if self.pending.get(v).copied().unwrap_or(false) && self.deliverable(v) {
            self.pending[v] = false;
            self.fire(v);
        }
    }

    fn fire(&self, v: usize) {
        if let Some(fd) = self.irqfds.get(v) {
            if let Err(e) = fd.write(1) {
                tracing::warn!("cannot raise MSI-X vector {v}: {e}");
            }
        }
    }

    /// Forgets every pending vector (the device was reset).
    pub fn clear_pending(&mut self) {
        self.pending.fill(false);
    }

    /// Raises `vector`, or marks it pending while it is masked.
    pub fn trigger(&mut self, vector: u16) {
        let v = usize::from(vector);
        if v >= self.entries.len() {
            return;
        }
        if self.deliverable(v) {
            self.fire(v);
        } else {
            self.pending[v] = true;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A VM with the in-kernel irqchip (MSI routes need it) and a table of
    /// two vectors; vector 0 is programmed and unmasked, MSI-X enabled.
    pub(crate) fn table() -> (Arc<IrqRouting>, Msix) {
        let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm");
        let vm = Arc::new(kvm.create_vm().expect("a VM"));
        vm.create_irq_chip().expect("the in-kernel irqchip");
        let routing = Arc::new(IrqRouting::new(Arc::clone(&vm)).expect("routing"));
        let mut msix = Msix::new(2, &vm, Arc::clone(&routing)).expect("MSI-X");
        msix.write_table(0, &0xfee0_0000u64.to_le_bytes());
        msix.write_table(8, &0x4041u32.to_le_bytes());
        msix.write_table(12, &0u32.to_le_bytes());
        msix.set_control(CONTROL_ENABLE);
        (routing, msix)
    }

    pub(crate) fn pending(msix: &Msix) -> u8 {
        let mut b = [0u8];
        msix.read_pba(0, &mut b);
        b[0]
    }

    #[test]
    fn a_vector_raised_while_masked_is_pending_until_unmasked_and_keeps_its_route() {
        let (routing, mut msix) = table();
        let gsi = msix.gsis[0];
        let msg = MsiMessage { address: 0xfee0_0000, data: 0x4041 };
        assert_eq!(routing.msi_route(gsi), Some(msg));
        msix.trigger(0);
        assert_eq!(pending(&msix), 0, "an unmasked vector is raised at once");

        msix.write_table(12, &VECTOR_MASKED.to_le_bytes());
        assert_eq!(routing.msi_route(gsi), Some(msg), "a message KVM is still delivering keeps its route");
        msix.trigger(0);
        assert_eq!(pending(&msix), 1, "raised while masked: pending");
        // As Linux changes a vector's address: masked, new message, unmasked.
        msix.write_table(0, &0xfee0_1000u64.to_le_bytes());
        msix.write_table(8, &0x4042u32.to_le_bytes());
        assert_eq!(routing.msi_route(gsi), Some(msg), "no half-written message reaches KVM");
        msix.write_table(12, &0u32.to_le_bytes());
        assert_eq!(routing.msi_route(gsi), Some(MsiMessage { address: 0xfee0_1000, data: 0x4042 }));
        assert_eq!(pending(&msix), 0, "unmasking raised it");

        msix.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        msix.trigger(0);
        assert_eq!(pending(&msix), 1, "the function mask holds it too");
        msix.clear_pending();
        msix.set_control(CONTROL_ENABLE);
        assert_eq!(pending(&msix), 0, "a reset forgets it");

        msix.set_control(0);
        assert_eq!(routing.msi_route(gsi), None, "MSI-X disabled: no route");
    }

    #[test]
    fn vectors_the_table_does_not_have_are_ignored() {
        let (_, mut msix) = table();
        msix.trigger(7);
        msix.write_table(5 * ENTRY_SIZE, &[0xff; 4]);
        let mut b = [0xaau8; 4];
        msix.read_table(9 * ENTRY_SIZE, &mut b);
        assert_eq!(b, [0; 4]);
        assert_eq!(pending(&msix), 0);
    }
}
