//! A minimal virtio driver for unit tests: it programs an
//! [`MmioTransport`] the way Linux does and submits descriptor chains, so
//! devices are tested through the same registers a guest uses.

use super::mmio::{reg, MmioTransport};
use super::{Interrupt, VirtioDevice};
use crate::devices::bus::BusDevice;
use crate::vstate::memory::GuestMemory;
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

/// Queue `q`'s rings sit at `DESC/AVAIL/USED + q * QUEUE_STRIDE`.
pub const DESC: u64 = 0x1000;
pub const AVAIL: u64 = 0x2000;
pub const USED: u64 = 0x3000;
const QUEUE_STRIDE: u64 = 0x4000;
/// Buffers are carved from here up.
pub const BUFFERS: u64 = 0x10000;
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const QUEUE_SIZE: u16 = 16;

#[derive(Default, Clone, Copy)]
struct DriverQueue {
    next_desc: u16,
    next_avail: u16,
    /// Used entries this driver has read.
    seen_used: u16,
}

pub struct TestDriver {
    pub mem: GuestMemory,
    pub transport: MmioTransport,
    pub irq: EventFd,
    rings: Rings,
}

/// The driver's side of the rings of `queues` queues in `mem`, at the
/// addresses above, whatever the transport.
pub struct Rings {
    mem: GuestMemory,
    queues: Vec<DriverQueue>,
}

/// Where queue `q`'s descriptor table, available ring and used ring are.
pub fn ring_addresses(q: usize) -> [u64; 3] {
    let base = q as u64 * QUEUE_STRIDE;
    [base + DESC, base + AVAIL, base + USED]
}

impl TestDriver {
    pub fn new(device: Box<dyn VirtioDevice>) -> Self {
        let mem = crate::vstate::memory::create(1 << 20).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        let transport = MmioTransport::new(device, mem.clone(), interrupt);
        let count = transport.queue_count();
        let rings = Rings::new(mem.clone(), count);
        let mut d = Self { mem, transport, irq, rings };
        d.w(reg::STATUS, 1 | 2);
        d.w(reg::DRIVER_FEATURES_SEL, 1);
        d.w(reg::DRIVER_FEATURES, 1);
        d.w(reg::DRIVER_FEATURES_SEL, 0);
        d.w(reg::DEVICE_FEATURES_SEL, 0);
        let low = d.r(reg::DEVICE_FEATURES);
        d.w(reg::DRIVER_FEATURES, low);
        d.w(reg::STATUS, 1 | 2 | 8);
        for q in 0..count {
            let [desc, avail, used] = ring_addresses(q);
            d.w(reg::QUEUE_SEL, q as u32);
            d.w(reg::QUEUE_NUM, u32::from(QUEUE_SIZE));
            d.w(reg::QUEUE_DESC_LOW, desc as u32);
            d.w(reg::QUEUE_DRIVER_LOW, avail as u32);
            d.w(reg::QUEUE_DEVICE_LOW, used as u32);
            d.w(reg::QUEUE_READY, 1);
        }
        d.w(reg::STATUS, 1 | 2 | 8 | 4);
        d
    }

    pub fn r(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.transport.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn w(&mut self, off: u64, v: u32) {
        self.transport.write(off, &v.to_le_bytes());
    }

    /// Submits a chain of (address, length, writable) buffers on queue 0,
    /// notifies, and returns the length the device reported as used.
    pub fn submit(&mut self, bufs: &[(u64, u32, bool)]) -> u32 {
        let head = self.offer(0, bufs);
        self.w(reg::QUEUE_NOTIFY, 0);
        let (id, len) = self.take_used(0).expect("the device consumed the chain");
        assert_eq!(id, head);
        len
    }

    /// See [`Rings::offer`].
    pub fn offer(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> u16 {
        self.rings.offer(q, bufs)
    }

    /// See [`Rings::take_used`].
    pub fn take_used(&mut self, q: usize) -> Option<(u16, u32)> {
        self.rings.take_used(q)
    }
}

impl Rings {
    pub fn new(mem: GuestMemory, queues: usize) -> Self {
        Self { mem, queues: vec![DriverQueue::default(); queues] }
    }

    /// Makes a chain available on queue `q` without notifying; returns its
    /// head.
    pub fn offer(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> u16 {
        let base = q as u64 * QUEUE_STRIDE;
        let dq = &mut self.queues[q];
        let head = dq.next_desc;
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let idx = dq.next_desc;
            dq.next_desc = (dq.next_desc + 1) % QUEUE_SIZE;
            let at = base + DESC + u64::from(idx) * 16;
            let mut flags = if writable { F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= F_NEXT;
            }
            self.mem.write_obj(addr, GuestAddress(at)).unwrap();
            self.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            self.mem.write_obj(dq.next_desc, GuestAddress(at + 14)).unwrap();
        }
        let slot = dq.next_avail % QUEUE_SIZE;
        self.mem.write_obj(head, GuestAddress(base + AVAIL + 4 + u64::from(slot) * 2)).unwrap();
        dq.next_avail = dq.next_avail.wrapping_add(1);
        self.mem.write_obj(dq.next_avail, GuestAddress(base + AVAIL + 2)).unwrap();
        head
    }

    /// The next used (head, length) on queue `q`, if the device returned one.
    pub fn take_used(&mut self, q: usize) -> Option<(u16, u32)> {
        let base = q as u64 * QUEUE_STRIDE;
        let dq = &mut self.queues[q];
        let used_idx: u16 = self.mem.read_obj(GuestAddress(base + USED + 2)).unwrap();
        if used_idx == dq.seen_used {
            return None;
        }
        let elem = base + USED + 4 + u64::from(dq.seen_used % QUEUE_SIZE) * 8;
        dq.seen_used = dq.seen_used.wrapping_add(1);
        let id: u32 = self.mem.read_obj(GuestAddress(elem)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(elem + 4)).unwrap();
        Some((id as u16, len))
    }
}
