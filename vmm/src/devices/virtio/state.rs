//! What both virtio transports share: the device, its queues while the
//! driver sets them up, feature negotiation and the status byte (virtio
//! 1.x, 3.1). The MMIO and PCI register blocks are two views of this.

use super::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::vstate::memory::GuestMemory;
use std::sync::Arc;
use virtio_queue::{Queue, QueueT};

// Device status bits.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

pub struct VirtioState {
    pub device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    pub interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    acked_features: u64,
    status: u32,
    activated: bool,
    /// Whether the device may reach guest memory: always on virtio-mmio;
    /// on virtio-pci, the command register's bus-master bit.
    dma_allowed: bool,
}

impl VirtioState {
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemory, interrupt: Arc<Interrupt>) -> Self {
        let queues = fresh_queues(device.as_ref());
        Self { device, mem, interrupt, queues, acked_features: 0, status: 0, activated: false, dma_allowed: true }
    }

    /// A device behind a bus-master bit that is off until the driver sets
    /// it (virtio-pci).
    pub fn without_dma(mut self) -> Self {
        self.dma_allowed = false;
        self
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    pub fn activated(&self) -> bool {
        self.activated
    }

    pub fn queue_count(&self) -> usize {
        self.device.queue_max_sizes().len()
    }

    pub fn queue_max(&self, index: usize) -> u16 {
        self.device.queue_max_sizes().get(index).copied().unwrap_or(0)
    }

    /// Queue `index` while the driver may still set it up (before
    /// DRIVER_OK).
    pub fn queue(&mut self, index: usize) -> Option<&mut Queue> {
        if self.activated {
            return None;
        }
        self.queues.get_mut(index)
    }

    /// Queue `index` as the driver has set it up so far (None once active).
    pub fn queue_ref(&self, index: usize) -> Option<&Queue> {
        if self.activated {
            return None;
        }
        self.queues.get(index)
    }

    /// Whether queue `index` is enabled; once active, every queue belongs
    /// to the device and counts as ready.
    pub fn queue_ready(&self, index: usize) -> bool {
        if self.activated {
            return index < self.queue_count();
        }
        self.queues.get(index).is_some_and(|q| q.ready())
    }

    /// The queue's size as the driver set it (its maximum once active).
    pub fn queue_size(&self, index: usize) -> u16 {
        match self.queues.get(index) {
            Some(q) if !self.activated => q.size(),
            _ => self.queue_max(index),
        }
    }

    /// Half `select` (0 low, 1 high) of the offered features.
    pub fn device_features(&self, select: u32) -> u32 {
        let f = self.device.features();
        match select {
            0 => f as u32,
            1 => (f >> 32) as u32,
            _ => 0,
        }
    }

    pub fn driver_features(&self, select: u32) -> u32 {
        match select {
            0 => self.acked_features as u32,
            1 => (self.acked_features >> 32) as u32,
            _ => 0,
        }
    }

    /// The driver wrote half `select` of its features; a driver cannot
    /// take what was not offered, nor change them after FEATURES_OK.
    pub fn ack_features(&mut self, select: u32, value: u32) {
        if self.status & STATUS_FEATURES_OK != 0 {
            return;
        }
        let v = &mut self.acked_features;
        match select {
            0 => *v = (*v & !0xffff_ffff) | u64::from(value),
            1 => *v = (*v & 0xffff_ffff) | (u64::from(value) << 32),
            _ => {}
        }
        *v &= self.device.features();
    }

    pub fn reset(&mut self) {
        self.device.reset();
        self.queues = fresh_queues(self.device.as_ref());
        self.status = 0;
        self.acked_features = 0;
        self.activated = false;
        self.interrupt.reset();
    }

    /// The driver wrote the status byte: 0 resets; ACKNOWLEDGE, DRIVER,
    /// FEATURES_OK and DRIVER_OK together hand the queues to the device.
    pub fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // DEVICE_NEEDS_RESET is the device's to set, and stays until the
        // driver resets it.
        let own = self.status & STATUS_NEEDS_RESET;
        let v = v & !STATUS_NEEDS_RESET;
        if v & STATUS_FEATURES_OK != 0 && self.acked_features & VIRTIO_F_VERSION_1 == 0 {
            // A legacy driver: these devices are modern only.
            self.status = (v & !STATUS_FEATURES_OK) | own;
            return;
        }
        self.status = v | own;
        self.activate_if_ready();
    }

    /// The PCI command register's bus-master bit changed. Off, the device
    /// may not touch guest memory: a running device stops and drops its
    /// queues. QEMU clears DRIVER_OK and carries on where it was once the
    /// bit is back; this device is stricter: it also sets
    /// DEVICE_NEEDS_RESET and waits for a reset, as queues the driver may
    /// have abandoned are not worth resuming. Linux resets the device
    /// before it turns the bit off at unbind; a kexec may not. The driver
    /// hears of it (a configuration-change interrupt) once bus mastering
    /// is back, as an interrupt message is itself a write to memory.
    ///
    /// On, a device whose driver already set DRIVER_OK starts; returns
    /// true then, and the transport kicks its queues (kicks that came
    /// while it waited were dropped).
    pub fn set_dma_allowed(&mut self, allowed: bool) -> bool {
        if self.dma_allowed == allowed {
            return false;
        }
        self.dma_allowed = allowed;
        if !allowed && self.activated {
            tracing::info!("virtio: bus mastering turned off; the device stops until the driver resets it");
            self.device.reset();
            self.queues = fresh_queues(self.device.as_ref());
            self.activated = false;
            self.status = (self.status & !STATUS_DRIVER_OK) | STATUS_NEEDS_RESET;
        }
        if allowed && self.status & STATUS_NEEDS_RESET != 0 {
            self.interrupt.signal_config();
        }
        let was = self.activated;
        self.activate_if_ready();
        !was && self.activated
    }

    /// Hands the queues to the device once the driver has set DRIVER_OK
    /// (with the bits before it) and the device may reach guest memory.
    fn activate_if_ready(&mut self) {
        let wanted = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        let s = self.status;
        if self.activated || s & wanted != wanted || s & (STATUS_FAILED | STATUS_NEEDS_RESET) != 0 || !self.dma_allowed
        {
            return;
        }
        if !self.queues.iter().filter(|q| q.ready()).all(|q| q.is_valid(&self.mem)) {
            tracing::warn!("virtio: the driver set up an invalid queue; device marked failed");
            self.status |= STATUS_FAILED;
            return;
        }
        self.activated = true;
        let queues = std::mem::take(&mut self.queues);
        self.device.activate(self.mem.clone(), queues, Arc::clone(&self.interrupt), self.acked_features);
    }

    /// The driver notified queue `index`.
    pub fn notify(&mut self, index: u16) {
        if self.activated {
            self.device.queue_notify(index);
        }
    }

    /// The device's host file is readable.
    pub fn process_io(&mut self) {
        if self.activated {
            self.device.process_io();
        }
    }
}

fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
    device.queue_max_sizes().into_iter().filter_map(|max| Queue::new(max).ok()).collect()
}
