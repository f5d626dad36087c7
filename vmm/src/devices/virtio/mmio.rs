//! The virtio-mmio register block (virtio spec 4.2.2, version 2).

use super::state::VirtioState;
use super::{Interrupt, VirtioDevice, VirtioTransport};
use crate::devices::bus::BusDevice;
use crate::vstate::memory::GuestMemory;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use virtio_queue::{Queue, QueueT};

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4b56_4d4f; // "KVMO"

/// Register offsets.
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

pub struct MmioTransport {
    state: VirtioState,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
}

impl MmioTransport {
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemory, interrupt: Arc<Interrupt>) -> Self {
        Self {
            state: VirtioState::new(device, mem, interrupt),
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
        }
    }

    fn queue(&mut self) -> Option<&mut Queue> {
        self.state.queue(self.queue_sel as usize)
    }

    /// The device this transport carries.
    pub fn device_type(&self) -> u32 {
        self.state.device.device_type()
    }

    pub fn queue_count(&self) -> usize {
        self.state.queue_count()
    }
}

impl VirtioTransport for MmioTransport {
    fn state(&self) -> &VirtioState {
        &self.state
    }
    fn state_mut(&mut self) -> &mut VirtioState {
        &mut self.state
    }
}

fn u32_of(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.state.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        let v: u32 = match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.state.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => self.state.device_features(self.device_features_sel),
            reg::QUEUE_NUM_MAX => u32::from(self.state.queue_max(self.queue_sel as usize)),
            reg::QUEUE_READY => u32::from(self.state.queue_ready(self.queue_sel as usize)),
            reg::INTERRUPT_STATUS => self.state.interrupt.status.load(Ordering::SeqCst),
            reg::STATUS => self.state.status(),
            reg::CONFIG_GENERATION => 0,
            _ => 0,
        };
        let bytes = v.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.state.device.write_config(offset - reg::CONFIG, data);
            return;
        }
        let v = u32_of(data);
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => self.state.ack_features(self.driver_features_sel, v),
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM => {
                if let Some(q) = self.queue() {
                    q.set_size(v as u16);
                }
            }
            reg::QUEUE_READY => {
                if let Some(q) = self.queue() {
                    q.set_ready(v == 1);
                }
            }
            reg::QUEUE_DESC_LOW => self.queue().into_iter().for_each(|q| q.set_desc_table_address(Some(v), None)),
            reg::QUEUE_DESC_HIGH => self.queue().into_iter().for_each(|q| q.set_desc_table_address(None, Some(v))),
            reg::QUEUE_DRIVER_LOW => self.queue().into_iter().for_each(|q| q.set_avail_ring_address(Some(v), None)),
            reg::QUEUE_DRIVER_HIGH => self.queue().into_iter().for_each(|q| q.set_avail_ring_address(None, Some(v))),
            reg::QUEUE_DEVICE_LOW => self.queue().into_iter().for_each(|q| q.set_used_ring_address(Some(v), None)),
            reg::QUEUE_DEVICE_HIGH => self.queue().into_iter().for_each(|q| q.set_used_ring_address(None, Some(v))),
            reg::QUEUE_NOTIFY => self.notify(v as u16),
            reg::INTERRUPT_ACK => {
                self.state.interrupt.status.fetch_and(!v, Ordering::SeqCst);
            }
            reg::STATUS => self.state.set_status(v),
            _ => tracing::debug!("virtio-mmio: write to read-only or unknown register {offset:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::rng::Rng;
    use crate::devices::virtio::state::{STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK};
    use crate::devices::virtio::testing::{TestDriver, BUFFERS};
    use crate::devices::virtio::{INT_VRING, TYPE_RNG};
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    /// The test driver programs the registers the way Linux's virtio_mmio
    /// driver does; check what it sees and that the rng fills a buffer.
    #[test]
    fn a_driver_sets_up_a_queue_and_the_rng_fills_its_buffer() {
        let mut d = TestDriver::new(Box::new(Rng::default()));
        assert_eq!(d.r(reg::MAGIC), MAGIC);
        assert_eq!(d.r(reg::VERSION), 2);
        assert_eq!(d.r(reg::DEVICE_ID), TYPE_RNG);
        d.w(reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(d.r(reg::DEVICE_FEATURES) & 1, 1, "VIRTIO_F_VERSION_1 offered");
        let wanted = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        assert_eq!(d.r(reg::STATUS), wanted, "the device accepted the driver");
        assert!(d.r(reg::QUEUE_NUM_MAX) >= 16);

        assert_eq!(d.submit(&[(BUFFERS, 64, true)]), 64);
        let mut got = [0u8; 64];
        d.mem.read_slice(&mut got, GuestAddress(BUFFERS)).unwrap();
        assert!(got.iter().any(|&b| b != 0), "random bytes were written");
        assert_eq!(d.r(reg::INTERRUPT_STATUS), INT_VRING);
        assert_eq!(d.irq.read().unwrap(), 1, "the IRQ was raised");
        d.w(reg::INTERRUPT_ACK, INT_VRING);
        assert_eq!(d.r(reg::INTERRUPT_STATUS), 0);

        // A reset takes everything back to the start.
        d.w(reg::STATUS, 0);
        assert_eq!(d.r(reg::STATUS), 0);
        assert_eq!(d.r(reg::QUEUE_READY), 0);
    }

    #[test]
    fn legacy_drivers_cannot_reach_features_ok() {
        let mem = crate::vstate::memory::create(1 << 20).unwrap();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let mut t = MmioTransport::new(Box::new(Rng::default()), mem, interrupt);
        t.write(reg::STATUS, &(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK).to_le_bytes());
        let mut b = [0u8; 4];
        t.read(reg::STATUS, &mut b);
        assert_eq!(u32::from_le_bytes(b) & STATUS_FEATURES_OK, 0);
    }
}
