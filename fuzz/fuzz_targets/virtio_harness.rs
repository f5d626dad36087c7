//! What the virtio targets share: a guest whose memory is the fuzz input
//! (descriptor tables, rings, request headers and buffers alike), and a
//! virtio device whose queues sit in it, activated as a driver would and
//! notified a few times.
//!
//! Input: a byte of feature choices, a byte of notification rounds, then
//! the memory image from guest address 0. Queue `q` has its descriptor
//! table at `q * 0x4000`, its available ring 0x1000 and its used ring
//! 0x2000 further, 16 entries each.

use kvmos_vmm::devices::virtio::{Interrupt, VirtioDevice};
use kvmos_vmm::vstate::memory::{self, GuestMemory};
use std::sync::Arc;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

pub const MEMORY: u64 = 1 << 20;
const QUEUE_SIZE: u16 = 16;
const QUEUE_STRIDE: u64 = 0x4000;
const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// The guest memory from `image`.
pub fn guest_memory(image: &[u8]) -> GuestMemory {
    let mem = memory::create(MEMORY).expect("guest memory");
    let n = image.len().min(MEMORY as usize);
    mem.write_slice(&image[..n], GuestAddress(0)).expect("fits");
    mem
}

fn queue(mem: &GuestMemory, index: u64) -> Option<Queue> {
    let mut q = Queue::new(QUEUE_SIZE).ok()?;
    let base = index * QUEUE_STRIDE;
    q.set_size(QUEUE_SIZE);
    q.set_desc_table_address(Some(base as u32), Some(0));
    q.set_avail_ring_address(Some((base + 0x1000) as u32), Some(0));
    q.set_used_ring_address(Some((base + 0x2000) as u32), Some(0));
    q.set_ready(true);
    q.is_valid(mem).then_some(q)
}

/// Activates `device` over the input's memory and notifies its queues;
/// `between` runs after each round (a NIC's host side, say). Returns
/// false when the input is too short to say anything.
pub fn run(device: &mut dyn VirtioDevice, data: &[u8], mut between: impl FnMut(&mut dyn VirtioDevice)) -> bool {
    let [choices, rounds, image @ ..] = data else { return false };
    let mem = guest_memory(image);
    let queues: Option<Vec<Queue>> =
        (0..device.queue_max_sizes().len() as u64).map(|i| queue(&mem, i)).collect();
    let Some(queues) = queues else { return true };
    let mut features = device.features();
    if choices & 1 == 0 {
        features &= !VIRTIO_RING_F_EVENT_IDX;
    }
    if choices & 2 == 0 {
        features &= !VIRTIO_RING_F_INDIRECT_DESC;
    }
    let count = queues.len() as u16;
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    device.activate(mem, queues, Arc::new(Interrupt::new(irq)), features);
    for _ in 0..=(rounds % 4) {
        for q in 0..count {
            device.queue_notify(q);
        }
        between(device);
    }
    device.reset();
    true
}
