//! Virtio devices over MMIO (virtio 1.x, the "modern" MMIO transport,
//! version 2). [`mmio::MmioTransport`] is the register block a guest
//! driver programs; each device implements [`VirtioDevice`] and processes
//! its queues when the guest notifies them.

pub mod block;
pub mod mmio;
pub mod net;
pub mod rng;
#[cfg(test)]
pub mod testing;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::vstate::memory::GuestMemory;

/// Feature bit: the device follows virtio 1.0 or later.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device types (virtio spec 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;

/// InterruptStatus bits.
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// A device's interrupt: a status word the guest reads and acknowledges,
/// and an irqfd that raises its IRQ line.
pub struct Interrupt {
    pub status: AtomicU32,
    pub irqfd: EventFd,
}

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Self {
        Self { status: AtomicU32::new(0), irqfd }
    }

    /// Tells the guest that used buffers are waiting.
    pub fn signal_used_queue(&self) {
        self.status.fetch_or(INT_VRING, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            tracing::warn!("cannot raise a virtio interrupt: {e}");
        }
    }
}

/// What a virtio device does; the transport does the rest.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Offered feature bits (VIRTIO_F_VERSION_1 included).
    fn features(&self) -> u64;
    fn queue_max_sizes(&self) -> Vec<u16>;
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK: the device gets its queues.
    fn activate(&mut self, mem: GuestMemory, queues: Vec<Queue>, interrupt: Arc<Interrupt>, acked_features: u64);
    /// The driver notified queue `index`.
    fn queue_notify(&mut self, index: u16);
    /// A host file (a tap) the event loop watches, edge-triggered, for
    /// input; [`VirtioDevice::process_io`] runs when it becomes readable.
    fn io_fd(&self) -> Option<RawFd> {
        None
    }
    fn process_io(&mut self) {}
    /// The driver reset the device: drop the queues.
    fn reset(&mut self);
}
