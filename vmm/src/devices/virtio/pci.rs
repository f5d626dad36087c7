//! The modern virtio-pci transport (virtio 1.x, 4.1): a PCI function whose
//! capabilities point into one 32-bit memory BAR holding the common
//! configuration, the ISR byte, the device's own configuration, the queue
//! notification area, and the MSI-X table and pending bits.
//!
//! A 32-bit BAR keeps the device reachable for SeaBIOS's 32-bit drivers
//! without going through the PCI-configuration access window, which is
//! still offered (the spec requires it) for drivers that want it.
//!
//! Queue notifications are ioeventfds that follow the BAR wherever the
//! firmware puts it, so a notification costs no exit to this process.
//! Interrupts are MSI-X vectors once the driver enables MSI-X, and the
//! INTx line (level-triggered, through a resampling irqfd) before that.

use super::state::VirtioState;
use super::{Interrupt, VirtioDevice, VirtioTransport, TYPE_BLOCK, TYPE_INPUT, TYPE_NET};
use crate::devices::pci::config_space::{ConfigSpace, Identity};
use crate::devices::pci::msix::{Msix, NO_VECTOR};
use crate::devices::pci::{
    BarKind, PciDevice, CAP_MSIX, CAP_VENDOR, COMMAND, COMMAND_BUS_MASTER, SUBSYSTEM_QEMU, VENDOR_REDHAT_QUMRANET,
};
use crate::vstate::memory::GuestMemory;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

/// The one BAR and what is where inside it.
pub const BAR: usize = 0;
pub const BAR_SIZE: u64 = 0x8000;
const COMMON: u64 = 0x0000;
const COMMON_LEN: u64 = 0x38;
const ISR: u64 = 0x1000;
const DEVICE_CFG: u64 = 0x2000;
const DEVICE_CFG_LEN: u64 = 0x1000;
const NOTIFY: u64 = 0x3000;
/// Queue `q` is notified at NOTIFY + q * NOTIFY_MULTIPLIER.
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE: u64 = 0x4000;
const MSIX_PBA: u64 = 0x6000;

/// `cfg_type` of the virtio capabilities.
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const CAP_PCI_CFG: u8 = 5;

/// The common configuration's fields: offset and width.
mod common {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const MSIX_CONFIG: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
    /// Every field, for byte-wise access at any width.
    pub const FIELDS: [(u64, u64); 16] = [
        (DEVICE_FEATURE_SELECT, 4),
        (DEVICE_FEATURE, 4),
        (DRIVER_FEATURE_SELECT, 4),
        (DRIVER_FEATURE, 4),
        (MSIX_CONFIG, 2),
        (NUM_QUEUES, 2),
        (DEVICE_STATUS, 1),
        (CONFIG_GENERATION, 1),
        (QUEUE_SELECT, 2),
        (QUEUE_SIZE, 2),
        (QUEUE_MSIX_VECTOR, 2),
        (QUEUE_ENABLE, 2),
        (QUEUE_NOTIFY_OFF, 2),
        (QUEUE_DESC, 8),
        (QUEUE_DRIVER, 8),
        (QUEUE_DEVICE, 8),
    ];
}

pub struct VirtioPci {
    config: ConfigSpace,
    state: VirtioState,
    msix: Arc<Mutex<Msix>>,
    msix_cap: usize,
    pci_cfg_cap: usize,
    device_feature_select: u32,
    driver_feature_select: u32,
    queue_select: u16,
    vm: Arc<VmFd>,
    /// One per queue, registered at the queue's notify address while the
    /// BAR decodes.
    queue_evts: Vec<EventFd>,
    bar_addr: Option<u64>,
}

/// PCI identity of a modern virtio device of `device_type`.
fn identity(device_type: u32) -> Identity {
    let class = match device_type {
        TYPE_NET => [0x02, 0x00, 0x00],
        TYPE_BLOCK => [0x01, 0x00, 0x00],
        // Input device, other (as QEMU's virtio-input-pci).
        TYPE_INPUT => [0x09, 0x80, 0x00],
        _ => [0xff, 0x00, 0x00],
    };
    Identity {
        vendor: VENDOR_REDHAT_QUMRANET,
        device: 0x1040 + device_type as u16,
        revision: 1,
        class,
        subsystem_vendor: VENDOR_REDHAT_QUMRANET,
        subsystem: SUBSYSTEM_QEMU,
        multifunction: false,
        interrupt_pin: 1,
    }
}

/// A virtio capability body (after ID and next): cap_len, cfg_type, bar,
/// padding, offset, length, then `extra`.
fn virtio_cap(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    let mut b = vec![(16 + extra.len()) as u8, cfg_type, BAR as u8, 0, 0, 0];
    b.extend_from_slice(&(offset as u32).to_le_bytes());
    b.extend_from_slice(&(length as u32).to_le_bytes());
    b.extend_from_slice(extra);
    b
}

impl VirtioPci {
    /// `queue_evts` must be as many as the device has queues; the event
    /// loop waits on clones of them.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        irqfd: EventFd,
        msix: Msix,
        vm: Arc<VmFd>,
        queue_evts: Vec<EventFd>,
    ) -> Self {
        let queues = device.queue_max_sizes().len();
        let mut config = ConfigSpace::new(identity(device.device_type()));
        config.add_bar(BAR, BarKind::Mem32, BAR_SIZE);
        config.add_capability(CAP_VENDOR, &virtio_cap(CAP_COMMON, COMMON, COMMON_LEN, &[]), &[]);
        config.add_capability(CAP_VENDOR, &virtio_cap(CAP_ISR, ISR, 1, &[]), &[]);
        config.add_capability(CAP_VENDOR, &virtio_cap(CAP_DEVICE, DEVICE_CFG, DEVICE_CFG_LEN, &[]), &[]);
        let notify_len = (queues as u64).max(1) * u64::from(NOTIFY_MULTIPLIER);
        config.add_capability(
            CAP_VENDOR,
            &virtio_cap(CAP_NOTIFY, NOTIFY, notify_len, &NOTIFY_MULTIPLIER.to_le_bytes()),
            &[],
        );
        // The access window: bar, offset and length are the driver's, and
        // so are the four data bytes after them.
        let mut window_mask = vec![0u8; 20];
        window_mask[2] = 0xff;
        window_mask[6..18].fill(0xff);
        let pci_cfg_cap = config.add_capability(CAP_VENDOR, &virtio_cap(CAP_PCI_CFG, 0, 0, &[0; 4]), &window_mask);
        let (body, mask) = msix.capability(BAR as u8, MSIX_TABLE as u32, MSIX_PBA as u32);
        let msix_cap = config.add_capability(CAP_MSIX, &body, &mask);
        let msix = Arc::new(Mutex::new(msix));
        let interrupt = Arc::new(Interrupt::with_msix(irqfd, Arc::clone(&msix), queues));
        Self {
            config,
            state: VirtioState::new(device, mem, interrupt).without_dma(),
            msix,
            msix_cap,
            pci_cfg_cap,
            device_feature_select: 0,
            driver_feature_select: 0,
            queue_select: 0,
            vm,
            queue_evts,
            bar_addr: None,
        }
    }

    pub fn device_type(&self) -> u32 {
        self.state.device.device_type()
    }

    pub fn interrupt(&self) -> Arc<Interrupt> {
        Arc::clone(&self.state.interrupt)
    }

    fn selected(&self) -> usize {
        usize::from(self.queue_select)
    }

    fn read_common_field(&self, field: u64) -> u64 {
        let q = self.selected();
        let msix = self.state.interrupt.msix();
        let queue_addr = |f: fn(&virtio_queue::Queue) -> u64| -> u64 {
            // After activation the queue belongs to the device; drivers do
            // not read the addresses back then.
            self.state.queue_ref(q).map(f).unwrap_or(0)
        };
        match field {
            common::DEVICE_FEATURE_SELECT => u64::from(self.device_feature_select),
            common::DEVICE_FEATURE => u64::from(self.state.device_features(self.device_feature_select)),
            common::DRIVER_FEATURE_SELECT => u64::from(self.driver_feature_select),
            common::DRIVER_FEATURE => u64::from(self.state.driver_features(self.driver_feature_select)),
            common::MSIX_CONFIG => u64::from(msix.map_or(NO_VECTOR, |m| m.config_vector.load(Ordering::SeqCst))),
            common::NUM_QUEUES => self.state.queue_count() as u64,
            common::DEVICE_STATUS => u64::from(self.state.status()),
            common::CONFIG_GENERATION => 0,
            common::QUEUE_SELECT => u64::from(self.queue_select),
            common::QUEUE_SIZE => u64::from(self.state.queue_size(q)),
            common::QUEUE_MSIX_VECTOR => {
                u64::from(msix.and_then(|m| m.queue_vectors.get(q)).map_or(NO_VECTOR, |v| v.load(Ordering::SeqCst)))
            }
            common::QUEUE_ENABLE => u64::from(self.state.queue_ready(q)),
            common::QUEUE_NOTIFY_OFF => q as u64,
            common::QUEUE_DESC => queue_addr(|q| q.desc_table()),
            common::QUEUE_DRIVER => queue_addr(|q| q.avail_ring()),
            common::QUEUE_DEVICE => queue_addr(|q| q.used_ring()),
            _ => 0,
        }
    }

    fn write_common_field(&mut self, field: u64, v: u64) {
        let q = self.selected();
        match field {
            common::DEVICE_FEATURE_SELECT => self.device_feature_select = v as u32,
            common::DRIVER_FEATURE_SELECT => self.driver_feature_select = v as u32,
            common::DRIVER_FEATURE => self.state.ack_features(self.driver_feature_select, v as u32),
            common::MSIX_CONFIG => {
                if let Some(m) = self.state.interrupt.msix() {
                    m.config_vector.store(self.valid_vector(v as u16), Ordering::SeqCst);
                }
            }
            common::DEVICE_STATUS => self.state.set_status(v as u32),
            common::QUEUE_SELECT => self.queue_select = v as u16,
            common::QUEUE_SIZE => {
                if let Some(queue) = self.state.queue(q) {
                    queue.set_size(v as u16);
                }
            }
            common::QUEUE_MSIX_VECTOR => {
                let vector = self.valid_vector(v as u16);
                if let Some(slot) = self.state.interrupt.msix().and_then(|m| m.queue_vectors.get(q)) {
                    slot.store(vector, Ordering::SeqCst);
                }
            }
            common::QUEUE_ENABLE => {
                if let Some(queue) = self.state.queue(q) {
                    queue.set_ready(v == 1);
                }
            }
            common::QUEUE_DESC => {
                if let Some(queue) = self.state.queue(q) {
                    queue.set_desc_table_address(Some(v as u32), Some((v >> 32) as u32));
                }
            }
            common::QUEUE_DRIVER => {
                if let Some(queue) = self.state.queue(q) {
                    queue.set_avail_ring_address(Some(v as u32), Some((v >> 32) as u32));
                }
            }
            common::QUEUE_DEVICE => {
                if let Some(queue) = self.state.queue(q) {
                    queue.set_used_ring_address(Some(v as u32), Some((v >> 32) as u32));
                }
            }
            _ => {}
        }
    }

    /// A vector the table has, or NO_VECTOR (the driver reads back
    /// NO_VECTOR when it asked for one that does not exist).
    fn valid_vector(&self, v: u16) -> u16 {
        let count = self.msix.lock().unwrap_or_else(|p| p.into_inner()).vectors();
        if v < count {
            v
        } else {
            NO_VECTOR
        }
    }

    /// Byte-wise access to the common configuration at any width: each
    /// byte goes to the field it belongs to (64-bit fields are written in
    /// 32-bit halves by most drivers).
    fn read_common(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            *b = match common::FIELDS.iter().find(|(o, len)| (*o..o + len).contains(&at)) {
                Some(&(o, _)) => (self.read_common_field(o) >> ((at - o) * 8)) as u8,
                None => 0,
            };
        }
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        for &(o, len) in common::FIELDS.iter().filter(|(o, len)| *o < end && offset < o + len) {
            let mut v = self.read_common_field(o).to_le_bytes();
            for at in offset.max(o)..end.min(o + len) {
                v[(at - o) as usize] = data[(at - offset) as usize];
            }
            self.write_common_field(o, u64::from_le_bytes(v));
        }
    }

    fn notify_address(&self, queue: usize) -> Option<u64> {
        self.bar_addr.map(|b| b + NOTIFY + queue as u64 * u64::from(NOTIFY_MULTIPLIER))
    }

    /// The BAR access window of the VIRTIO_PCI_CAP_PCI_CFG capability:
    /// (offset in the BAR, length) as the driver set them.
    fn window(&self) -> (u64, usize) {
        let c = self.pci_cfg_cap;
        (u64::from(self.config.u32(c + 8)), self.config.u32(c + 12).min(4) as usize)
    }
}

impl VirtioTransport for VirtioPci {
    fn state(&self) -> &VirtioState {
        &self.state
    }
    fn state_mut(&mut self) -> &mut VirtioState {
        &mut self.state
    }
}

impl PciDevice for VirtioPci {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        let window_data = self.pci_cfg_cap + 16;
        if (window_data..window_data + 4).contains(&offset) {
            let (at, len) = self.window();
            let mut buf = [0u8; 4];
            self.bar_read(BAR, at, &mut buf[..len]);
            self.config.set_u32(window_data, u32::from_le_bytes(buf));
        }
        self.config.read(offset, data);
    }

    fn config_written(&mut self, offset: usize, len: usize) {
        if offset <= COMMAND
            && COMMAND < offset + len
            && self.state.set_dma_allowed(self.config.u16(COMMAND) & COMMAND_BUS_MASTER != 0)
        {
            // Started now: the queues' threads look at them once.
            for evt in &self.queue_evts {
                let _ = evt.write(1);
            }
        }
        let control = self.msix_cap + 2;
        if offset < control + 2 && control < offset + len {
            let v = self.config.u16(control);
            self.msix.lock().unwrap_or_else(|p| p.into_inner()).set_control(v);
        }
        let window_data = self.pci_cfg_cap + 16;
        if offset < window_data + 4 && window_data < offset + len {
            let (at, n) = self.window();
            let bytes = self.config.u32(window_data).to_le_bytes();
            self.bar_write(BAR, at, &bytes[..n]);
        }
    }

    fn bar_read(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
        match offset {
            COMMON..=0x0fff => self.read_common(offset, data),
            ISR => {
                // Reading the ISR acknowledges it.
                data.fill(0);
                data[0] = self.state.interrupt.status.swap(0, Ordering::SeqCst) as u8;
            }
            DEVICE_CFG..=0x2fff => self.state.device.read_config(offset - DEVICE_CFG, data),
            MSIX_TABLE..=0x5fff => {
                self.msix.lock().unwrap_or_else(|p| p.into_inner()).read_table(offset - MSIX_TABLE, data)
            }
            MSIX_PBA..=0x7fff => self.msix.lock().unwrap_or_else(|p| p.into_inner()).read_pba(offset - MSIX_PBA, data),
            _ => data.fill(0),
        }
    }

    fn bar_write(&mut self, _bar: usize, offset: u64, data: &[u8]) {
        match offset {
            COMMON..=0x0fff => self.write_common(offset, data),
            DEVICE_CFG..=0x2fff => self.state.device.write_config(offset - DEVICE_CFG, data),
            // Only reached when the ioeventfds are not registered.
            NOTIFY..=0x3fff => self.notify(((offset - NOTIFY) / u64::from(NOTIFY_MULTIPLIER)) as u16),
            MSIX_TABLE..=0x5fff => {
                self.msix.lock().unwrap_or_else(|p| p.into_inner()).write_table(offset - MSIX_TABLE, data)
            }
            _ => {}
        }
    }

    fn bar_moved(&mut self, _bar: usize, addr: Option<u64>) {
        for q in 0..self.queue_evts.len() {
            if let Some(old) = self.notify_address(q) {
                let _ = self.vm.unregister_ioevent(&self.queue_evts[q], &IoEventAddress::Mmio(old), NoDatamatch);
            }
        }
        self.bar_addr = addr;
        for q in 0..self.queue_evts.len() {
            if let Some(new) = self.notify_address(q) {
                if let Err(e) = self.vm.register_ioevent(&self.queue_evts[q], &IoEventAddress::Mmio(new), NoDatamatch) {
                    tracing::warn!("virtio-pci: queue {q} notifications at {new:#x} go through exits: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::pci::COMMAND_MEMORY;
    use crate::devices::virtio::rng::Rng;
    use crate::devices::virtio::state::{STATUS_DRIVER_OK, STATUS_NEEDS_RESET};
    use crate::devices::virtio::testing::{ring_addresses, Rings, BUFFERS, QUEUE_SIZE};
    use crate::vstate::irq_routing::IrqRouting;

    /// A virtio-rng function on this host's KVM, its guest memory, and
    /// clones of its INTx irqfd and its queue's notification eventfd.
    fn rng() -> (VirtioPci, GuestMemory, EventFd, EventFd) {
        let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm");
        let vm = Arc::new(kvm.create_vm().expect("a VM"));
        vm.create_irq_chip().expect("the in-kernel irqchip");
        let routing = Arc::new(IrqRouting::new(Arc::clone(&vm)).expect("routing"));
        let msix = Msix::new(2, &vm, routing).expect("MSI-X");
        let mem = crate::vstate::memory::create(1 << 20).unwrap();
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let queue_evts = vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()];
        let (irq, kick) = (irqfd.try_clone().unwrap(), queue_evts[0].try_clone().unwrap());
        let dev = VirtioPci::new(Box::<Rng>::default(), mem.clone(), irqfd, msix, vm, queue_evts);
        (dev, mem, irq, kick)
    }

    fn common_write(dev: &mut VirtioPci, field: u64, v: u64, len: usize) {
        dev.bar_write(BAR, COMMON + field, &v.to_le_bytes()[..len]);
    }

    fn status(dev: &mut VirtioPci) -> u32 {
        let mut b = [0u8];
        dev.bar_read(BAR, COMMON + common::DEVICE_STATUS, &mut b);
        u32::from(b[0])
    }

    /// What Linux's virtio_pci_modern does up to DRIVER_OK, for queue 0.
    fn bring_up(dev: &mut VirtioPci) {
        common_write(dev, common::DEVICE_STATUS, 1 | 2, 1);
        common_write(dev, common::DRIVER_FEATURE_SELECT, 1, 4);
        common_write(dev, common::DRIVER_FEATURE, 1, 4);
        common_write(dev, common::DEVICE_STATUS, 1 | 2 | 8, 1);
        let [desc, avail, used] = ring_addresses(0);
        common_write(dev, common::QUEUE_SELECT, 0, 2);
        common_write(dev, common::QUEUE_SIZE, u64::from(QUEUE_SIZE), 2);
        common_write(dev, common::QUEUE_DESC, desc, 8);
        common_write(dev, common::QUEUE_DRIVER, avail, 8);
        common_write(dev, common::QUEUE_DEVICE, used, 8);
        common_write(dev, common::QUEUE_ENABLE, 1, 2);
        common_write(dev, common::DEVICE_STATUS, 1 | 2 | 8 | 4, 1);
    }

    fn command(dev: &mut VirtioPci, bits: u16) {
        dev.config_mut().write(COMMAND, &bits.to_le_bytes());
        dev.config_written(COMMAND, 2);
    }

    fn notify(dev: &mut VirtioPci) {
        dev.bar_write(BAR, NOTIFY, &0u16.to_le_bytes());
    }

    #[test]
    fn the_device_touches_guest_memory_only_while_bus_mastering_is_on() {
        let (mut dev, mem, irq, kick) = rng();
        let mut rings = Rings::new(mem.clone(), 1);
        bring_up(&mut dev);
        rings.offer(0, &[(BUFFERS, 16, true)]);
        notify(&mut dev);
        assert!(!dev.state().activated(), "DRIVER_OK before bus mastering: the device waits");
        assert_eq!(rings.take_used(0), None);

        command(&mut dev, COMMAND_MEMORY | COMMAND_BUS_MASTER);
        assert!(dev.state().activated(), "bus mastering on: the device starts");
        assert_eq!(kick.read().unwrap(), 1, "and its queue is kicked once, for the kick it dropped");
        notify(&mut dev);
        assert_eq!(rings.take_used(0), Some((0, 16)));
        assert_eq!(irq.read().unwrap(), 1, "the used buffer's interrupt (INTx: MSI-X is off)");

        // As Linux does at unbind or kexec, without a reset first.
        command(&mut dev, COMMAND_MEMORY);
        let s = status(&mut dev);
        assert_eq!(s & STATUS_DRIVER_OK, 0, "DRIVER_OK is cleared");
        assert_ne!(s & STATUS_NEEDS_RESET, 0, "the driver is told to reset the device");
        rings.offer(0, &[(BUFFERS, 16, true)]);
        notify(&mut dev);
        assert_eq!(rings.take_used(0), None, "a stopped device uses no buffers");
        // The driver cannot clear DEVICE_NEEDS_RESET but by a reset.
        common_write(&mut dev, common::DEVICE_STATUS, u64::from(s & !STATUS_NEEDS_RESET), 1);
        assert_ne!(status(&mut dev) & STATUS_NEEDS_RESET, 0);
        assert!(irq.read().is_err(), "no interrupt while bus mastering is off");
        command(&mut dev, COMMAND_MEMORY | COMMAND_BUS_MASTER);
        assert!(!dev.state().activated(), "bus mastering back on does not restart it without a reset");
        assert_eq!(irq.read().unwrap(), 1, "a configuration-change interrupt tells the driver");
        let mut isr = [0u8];
        dev.bar_read(BAR, ISR, &mut isr);
        assert_ne!(u32::from(isr[0]) & crate::devices::virtio::INT_CONFIG, 0, "the ISR says why");

        common_write(&mut dev, common::DEVICE_STATUS, 0, 1);
        assert_eq!(status(&mut dev), 0, "a reset clears NEEDS_RESET");
        // A driver starts over with clean rings.
        let [desc, _, used] = ring_addresses(0);
        vm_memory::Bytes::write_slice(&mem, &vec![0; (used - desc + 0x1000) as usize], vm_memory::GuestAddress(desc))
            .unwrap();
        let mut rings = Rings::new(mem, 1);
        bring_up(&mut dev);
        rings.offer(0, &[(BUFFERS, 16, true)]);
        notify(&mut dev);
        assert_eq!(rings.take_used(0), Some((0, 16)), "after a reset the driver can use it again");
    }
}
