//! Virtio devices (virtio 1.x) and their two transports: MMIO (version 2,
//! for the direct-boot machine, [`mmio::MmioTransport`]) and modern PCI
//! (for the PC machine, [`pci::VirtioPci`]). Both program the same
//! [`state::VirtioState`]; each device implements [`VirtioDevice`] and
//! processes its queues when the guest notifies them.

pub mod block;
pub mod input;
pub mod mmio;
pub mod net;
pub mod pci;
pub mod rng;
pub mod state;
#[cfg(test)]
pub mod testing;

use crate::devices::pci::msix::{Msix, NO_VECTOR};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::vstate::memory::GuestMemory;

/// Feature bit: the device follows virtio 1.0 or later.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device types (virtio spec 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_INPUT: u32 = 18;

/// InterruptStatus bits.
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// A device's interrupt. On virtio-mmio, and on virtio-pci until the
/// driver enables MSI-X, it is a status word the guest reads and
/// acknowledges plus an irqfd on the device's IRQ line. With MSI-X enabled,
/// each queue raises the vector the driver chose for it.
pub struct Interrupt {
    pub status: AtomicU32,
    pub irqfd: EventFd,
    msix: Option<MsixVectors>,
}

/// The MSI-X side of a virtio-pci device's interrupt: the table, and the
/// vector the driver assigned to each queue and to config changes.
pub struct MsixVectors {
    pub table: Arc<Mutex<Msix>>,
    pub queue_vectors: Vec<AtomicU16>,
    pub config_vector: AtomicU16,
}

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Self {
        Self { status: AtomicU32::new(0), irqfd, msix: None }
    }

    /// An interrupt that uses `table` once the driver enables MSI-X.
    pub fn with_msix(irqfd: EventFd, table: Arc<Mutex<Msix>>, queues: usize) -> Self {
        let msix = MsixVectors {
            table,
            queue_vectors: (0..queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            config_vector: AtomicU16::new(NO_VECTOR),
        };
        Self { status: AtomicU32::new(0), irqfd, msix: Some(msix) }
    }

    pub fn msix(&self) -> Option<&MsixVectors> {
        self.msix.as_ref()
    }

    /// The device was reset: nothing is pending, and (on virtio-pci) the
    /// queues and config changes have no MSI-X vector until the driver
    /// assigns them again (virtio 1.2, 4.1.4.3, as QEMU does).
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        if let Some(m) = &self.msix {
            m.config_vector.store(NO_VECTOR, Ordering::SeqCst);
            for v in &m.queue_vectors {
                v.store(NO_VECTOR, Ordering::SeqCst);
            }
            m.table.lock().unwrap_or_else(|p| p.into_inner()).clear_pending();
        }
    }

    /// Tells the guest that queue `queue` has used buffers waiting.
    pub fn signal_used_queue(&self, queue: u16) {
        let vector =
            |m: &MsixVectors| m.queue_vectors.get(usize::from(queue)).map_or(NO_VECTOR, |v| v.load(Ordering::SeqCst));
        self.signal(INT_VRING, vector);
    }

    /// Tells the guest that the device's configuration or status changed.
    pub fn signal_config(&self) {
        self.signal(INT_CONFIG, |m| m.config_vector.load(Ordering::SeqCst));
    }

    /// Raises the MSI-X vector `vector` picks once the driver has enabled
    /// MSI-X (none if it assigned none), else the INTx line with `isr_bit`.
    fn signal(&self, isr_bit: u32, vector: impl Fn(&MsixVectors) -> u16) {
        if let Some(m) = &self.msix {
            let mut table = m.table.lock().unwrap_or_else(|p| p.into_inner());
            if table.enabled() {
                let vector = vector(m);
                if vector != NO_VECTOR {
                    table.trigger(vector);
                }
                return;
            }
        }
        self.status.fetch_or(isr_bit, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            tracing::warn!("cannot raise a virtio interrupt: {e}");
        }
    }
}

/// The driver's flag in the available ring: no interrupt wanted (it polls).
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Whether the driver wants an interrupt for the buffers the device has
/// just put in `queue`'s used ring (call after adding them): with
/// EVENT_IDX, the driver's used_event index says; without it, the
/// available ring's NO_INTERRUPT flag, which Linux sets while it polls a
/// queue (NAPI) (virtio 1.2, 2.7.7.2). virtio-queue reads only the former.
pub fn needs_interrupt(queue: &mut Queue, mem: &GuestMemory) -> bool {
    use virtio_queue::QueueT;
    if queue.event_idx_enabled() {
        return queue.needs_notification(mem).unwrap_or(true);
    }
    // The used entries are written; read the flag only after them, so a
    // driver that clears it and then looks at the used ring misses nothing.
    std::sync::atomic::fence(Ordering::SeqCst);
    let at = vm_memory::GuestAddress(queue.avail_ring());
    let flags = u16::from_le(vm_memory::Bytes::load::<u16>(mem, at, Ordering::Acquire).unwrap_or(0));
    flags & VRING_AVAIL_F_NO_INTERRUPT == 0
}

/// What the event loop needs of a transport, MMIO or PCI: both keep a
/// [`state::VirtioState`], which does the work.
pub trait VirtioTransport: Send {
    fn state(&self) -> &state::VirtioState;
    fn state_mut(&mut self) -> &mut state::VirtioState;
    /// The driver notified queue `index` (by register write or through
    /// the queue's ioeventfd).
    fn notify(&mut self, index: u16) {
        self.state_mut().notify(index);
    }
    /// The device's host file, if it has one (see [`VirtioDevice::io_fd`]).
    fn io_fd(&self) -> Option<RawFd> {
        self.state().device.io_fd()
    }
    /// The device's host file is readable.
    fn process_io(&mut self) {
        self.state_mut().process_io();
    }
    /// See [`VirtioDevice::own_thread`].
    fn own_thread(&self) -> Option<&'static str> {
        self.state().device.own_thread()
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
    /// Whether the device's queues are served by an I/O thread of its own
    /// rather than the event loop, and what the thread is called (a number
    /// follows): for devices whose requests block for a while (a disk's
    /// reads and writes), so that they hold up nothing else.
    fn own_thread(&self) -> Option<&'static str> {
        None
    }
    /// The driver reset the device: drop the queues.
    fn reset(&mut self);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::pci::msix::tests::{pending, table};

    #[test]
    fn a_reset_takes_the_vectors_away_and_forgets_what_was_pending() {
        let (_, msix) = table();
        let table = Arc::new(Mutex::new(msix));
        let interrupt = Interrupt::with_msix(EventFd::new(libc::EFD_NONBLOCK).unwrap(), Arc::clone(&table), 2);
        let m = interrupt.msix().unwrap();
        m.config_vector.store(1, Ordering::SeqCst);
        m.queue_vectors[0].store(1, Ordering::SeqCst);
        m.queue_vectors[1].store(0, Ordering::SeqCst);
        // Vector 1 is masked (as after reset): the queue's interrupt waits.
        interrupt.signal_used_queue(0);
        assert_eq!(pending(&table.lock().unwrap()), 0b10);
        interrupt.status.store(INT_VRING, Ordering::SeqCst);

        interrupt.reset();
        assert_eq!(m.config_vector.load(Ordering::SeqCst), NO_VECTOR);
        assert!(m.queue_vectors.iter().all(|v| v.load(Ordering::SeqCst) == NO_VECTOR));
        assert_eq!(pending(&table.lock().unwrap()), 0);
        assert_eq!(interrupt.status.load(Ordering::SeqCst), 0);
    }
}
