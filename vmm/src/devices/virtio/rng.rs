//! virtio-rng: fills the guest's buffers from the host's getrandom(2), so
//! a guest never waits for entropy at boot.

use super::{Interrupt, VirtioDevice, TYPE_RNG, VIRTIO_F_VERSION_1};
use crate::vstate::memory::GuestMemory;
use std::sync::Arc;
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

const QUEUE_SIZE: u16 = 256;
/// At most this much entropy per request, so a guest cannot make the VMM
/// spend long on one notification.
const MAX_CHUNK: usize = 64 * 1024;

#[derive(Default)]
pub struct Rng {
    mem: Option<GuestMemory>,
    queue: Option<Queue>,
    interrupt: Option<Arc<Interrupt>>,
    /// Bytes handed to the guest so far.
    pub bytes_served: u64,
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, mem: GuestMemory, queues: Vec<Queue>, interrupt: Arc<Interrupt>, _features: u64) {
        self.mem = Some(mem);
        self.queue = queues.into_iter().next();
        self.interrupt = Some(interrupt);
    }
    fn queue_notify(&mut self, _index: u16) {
        let (Some(mem), Some(queue), Some(irq)) = (&self.mem, self.queue.as_mut(), &self.interrupt) else { return };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let mut written = 0u32;
            for desc in chain.writable() {
                let len = (desc.len() as usize).min(MAX_CHUNK);
                let mut buf = vec![0u8; len];
                if getrandom(&mut buf).is_err() || mem.write_slice(&buf, desc.addr()).is_err() {
                    break;
                }
                written += len as u32;
            }
            self.bytes_served += u64::from(written);
            if queue.add_used(mem, head, written).is_err() {
                tracing::warn!("virtio-rng: the guest's used ring is not writable");
                return;
            }
            used = true;
        }
        if used && super::needs_interrupt(queue, mem) {
            irq.signal_used_queue(0);
        }
    }
    fn reset(&mut self) {
        self.mem = None;
        self.queue = None;
        self.interrupt = None;
    }
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: writes at most the remaining length into the buffer.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testing::{TestDriver, AVAIL, BUFFERS};
    use vm_memory::GuestAddress;

    #[test]
    fn a_driver_that_polls_gets_no_interrupt_and_one_that_waits_does() {
        let mut d = TestDriver::new(Box::<Rng>::default());
        // NO_INTERRUPT in the available ring's flags, as Linux sets it
        // while it polls the queue.
        d.mem.write_obj(1u16, GuestAddress(AVAIL)).unwrap();
        assert_eq!(d.submit(&[(BUFFERS, 32, true)]), 32);
        assert!(d.irq.read().is_err(), "no interrupt while the driver polls");

        d.mem.write_obj(0u16, GuestAddress(AVAIL)).unwrap();
        assert_eq!(d.submit(&[(BUFFERS, 32, true)]), 32);
        assert_eq!(d.irq.read().unwrap(), 1, "an interrupt once the driver waits for one");
    }
}
