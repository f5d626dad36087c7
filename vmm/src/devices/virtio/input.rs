//! virtio-input as a tablet (virtio 1.x, 5.8): an absolute pointer, so the
//! guest's cursor sits where the admin's is instead of following relative
//! PS/2 motion with the guest's own acceleration. It reports `ABS_X` and
//! `ABS_Y` in 0..=32767, the left, middle and right buttons and the
//! wheel, as QEMU's `virtio-tablet-pci` does; Linux binds it with
//! `virtio_input` and Windows with the virtio-win `vioinput` driver.
//!
//! The device describes itself through its configuration space: the
//! driver writes `select` and `subsel` and reads `size` and the answer
//! (name, IDs, the event types and codes it sends, each axis's range).
//! Events go to the guest on queue 0 (`eventq`), one 8-byte
//! `virtio_input_event` per buffer; queue 1 (`statusq`) brings LED and
//! similar events from the guest, which a tablet has no use for.
//!
//! The VNC server runs on its own thread: it posts events through a
//! [`TabletHandle`], which shares the queues with the device, so an event
//! reaches the guest without a trip through the event loop.

use super::{Interrupt, VirtioDevice, TYPE_INPUT, VIRTIO_F_VERSION_1};
use crate::vstate::memory::GuestMemory;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

const QUEUE_SIZE: u16 = 64;
const EVENTQ: usize = 0;
const STATUSQ: usize = 1;
/// Events the guest has not taken yet are kept up to this many; older
/// motion is dropped first, as a real device's FIFO would.
const MAX_PENDING: usize = 256;

/// The largest coordinate on either axis.
pub const ABS_MAX: u32 = 0x7fff;

// Configuration selectors (virtio spec 5.8.4).
const CFG_UNSET: u8 = 0x00;
const CFG_ID_NAME: u8 = 0x01;
const CFG_ID_SERIAL: u8 = 0x02;
const CFG_ID_DEVIDS: u8 = 0x03;
const CFG_PROP_BITS: u8 = 0x10;
const CFG_EV_BITS: u8 = 0x11;
const CFG_ABS_INFO: u8 = 0x12;
/// `select`, `subsel`, `size` and five reserved bytes come before the
/// answer.
const CFG_DATA: usize = 8;
const CFG_DATA_LEN: usize = 128;

// Linux input event types and codes (include/uapi/linux/input-event-codes.h).
pub const EV_SYN: u16 = 0x00;
pub const EV_KEY: u16 = 0x01;
pub const EV_REL: u16 = 0x02;
pub const EV_ABS: u16 = 0x03;
pub const SYN_REPORT: u16 = 0;
pub const BTN_LEFT: u16 = 0x110;
pub const BTN_RIGHT: u16 = 0x111;
pub const BTN_MIDDLE: u16 = 0x112;
pub const REL_WHEEL: u16 = 0x08;
pub const ABS_X: u16 = 0x00;
pub const ABS_Y: u16 = 0x01;
const BUS_VIRTUAL: u16 = 0x06;

pub const NAME: &str = "kvmos Virtio Tablet";

/// The tablet's buttons, as bits of [`TabletHandle::pointer`]'s `buttons`.
pub const LEFT: u8 = 1;
pub const MIDDLE: u8 = 2;
pub const RIGHT: u8 = 4;
const BUTTONS: [(u8, u16); 3] = [(LEFT, BTN_LEFT), (MIDDLE, BTN_MIDDLE), (RIGHT, BTN_RIGHT)];

/// One `struct virtio_input_event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEvent {
    pub kind: u16,
    pub code: u16,
    pub value: u32,
}

impl InputEvent {
    fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0..2].copy_from_slice(&self.kind.to_le_bytes());
        b[2..4].copy_from_slice(&self.code.to_le_bytes());
        b[4..8].copy_from_slice(&self.value.to_le_bytes());
        b
    }
}

/// What the device and its handle share.
#[derive(Default)]
struct Queues {
    mem: Option<GuestMemory>,
    queues: Vec<Queue>,
    interrupt: Option<Arc<Interrupt>>,
    pending: VecDeque<InputEvent>,
    /// The buttons last reported, so only changes are sent.
    buttons: u8,
}

impl Queues {
    /// Moves pending events into the guest's buffers while both last.
    fn deliver(&mut self) {
        let (Some(mem), Some(irq)) = (self.mem.clone(), self.interrupt.clone()) else { return };
        let Some(queue) = self.queues.get_mut(EVENTQ) else { return };
        let mut used = false;
        while let Some(event) = self.pending.front().copied() {
            let Some(chain) = queue.pop_descriptor_chain(&mem) else { break };
            let head = chain.head_index();
            let written = match chain.writable().next() {
                Some(desc) if desc.len() >= 8 && mem.write_slice(&event.to_bytes(), desc.addr()).is_ok() => 8,
                _ => 0,
            };
            self.pending.pop_front();
            if queue.add_used(&mem, head, written).is_err() {
                tracing::warn!("virtio-input: the guest's used ring is not writable");
                return;
            }
            used = true;
        }
        if used && super::needs_interrupt(queue, &mem) {
            irq.signal_used_queue(EVENTQ as u16);
        }
    }

    /// Returns the guest's status buffers (LEDs and the like) unread.
    fn drain_status(&mut self) {
        let (Some(mem), Some(irq)) = (self.mem.clone(), self.interrupt.clone()) else { return };
        let Some(queue) = self.queues.get_mut(STATUSQ) else { return };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(&mem) {
            if queue.add_used(&mem, chain.head_index(), 0).is_err() {
                return;
            }
            used = true;
        }
        if used && super::needs_interrupt(queue, &mem) {
            irq.signal_used_queue(STATUSQ as u16);
        }
    }

    fn push(&mut self, events: &[InputEvent]) {
        self.pending.extend(events);
        while self.pending.len() > MAX_PENDING {
            self.pending.pop_front();
        }
        self.deliver();
    }
}

fn lock(m: &Mutex<Queues>) -> MutexGuard<'_, Queues> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The device, owned by its transport.
pub struct Tablet {
    shared: Arc<Mutex<Queues>>,
    select: u8,
    subsel: u8,
}

/// Where the VNC server posts pointer events.
#[derive(Clone)]
pub struct TabletHandle(Arc<Mutex<Queues>>);

impl Tablet {
    pub fn new() -> (Self, TabletHandle) {
        let shared = Arc::new(Mutex::new(Queues::default()));
        (Self { shared: Arc::clone(&shared), select: CFG_UNSET, subsel: 0 }, TabletHandle(shared))
    }

    /// The answer to the current `select`/`subsel`, at most 128 bytes;
    /// empty (size 0) for what the device does not have.
    fn answer(&self) -> Vec<u8> {
        match (self.select, self.subsel) {
            (CFG_ID_NAME, 0) => NAME.as_bytes().to_vec(),
            (CFG_ID_SERIAL, 0) => b"0".to_vec(),
            (CFG_ID_DEVIDS, 0) => {
                // bustype, vendor, product, version; QEMU's tablet IDs.
                [BUS_VIRTUAL, 0x0627, 0x0003, 1].iter().flat_map(|v| v.to_le_bytes()).collect()
            }
            (CFG_PROP_BITS, _) => Vec::new(),
            (CFG_EV_BITS, kind) => match u16::from(kind) {
                EV_KEY => bitmap(&[BTN_LEFT, BTN_RIGHT, BTN_MIDDLE]),
                EV_REL => bitmap(&[REL_WHEEL]),
                EV_ABS => bitmap(&[ABS_X, ABS_Y]),
                _ => Vec::new(),
            },
            (CFG_ABS_INFO, axis) if u16::from(axis) == ABS_X || u16::from(axis) == ABS_Y => {
                // min, max, fuzz, flat, res
                [0, ABS_MAX, 0, 0, 0].iter().flat_map(|v: &u32| v.to_le_bytes()).collect()
            }
            _ => Vec::new(),
        }
    }
}

/// A little-endian bitmap with `codes` set, as long as the highest needs.
fn bitmap(codes: &[u16]) -> Vec<u8> {
    let len = codes.iter().map(|&c| usize::from(c) / 8 + 1).max().unwrap_or(0);
    let mut map = vec![0u8; len];
    for &c in codes {
        map[usize::from(c) / 8] |= 1 << (c % 8);
    }
    map
}

impl TabletHandle {
    /// Whether the guest's driver has the tablet running: only then do
    /// pointer events go here rather than to the PS/2 mouse.
    pub fn driven(&self) -> bool {
        lock(&self.0).mem.is_some()
    }

    /// The pointer is at (`x`, `y`) on a `width`×`height` screen with
    /// `buttons` ([`LEFT`], [`MIDDLE`], [`RIGHT`]) held; `wheel` counts
    /// notches, away from the user positive.
    pub fn pointer(&self, x: u32, y: u32, width: u32, height: u32, buttons: u8, wheel: i32) {
        let scale = |v: u32, size: u32| {
            let v = u64::from(v.min(size.saturating_sub(1)));
            (v * u64::from(ABS_MAX) / u64::from(size.saturating_sub(1).max(1))) as u32
        };
        let mut q = lock(&self.0);
        let mut events = vec![
            InputEvent { kind: EV_ABS, code: ABS_X, value: scale(x, width) },
            InputEvent { kind: EV_ABS, code: ABS_Y, value: scale(y, height) },
        ];
        let changed = q.buttons ^ buttons;
        for (bit, code) in BUTTONS {
            if changed & bit != 0 {
                events.push(InputEvent { kind: EV_KEY, code, value: u32::from(buttons & bit != 0) });
            }
        }
        q.buttons = buttons;
        if wheel != 0 {
            events.push(InputEvent { kind: EV_REL, code: REL_WHEEL, value: wheel as u32 });
        }
        events.push(InputEvent { kind: EV_SYN, code: SYN_REPORT, value: 0 });
        q.push(&events);
    }
}

impl VirtioDevice for Tablet {
    fn device_type(&self) -> u32 {
        TYPE_INPUT
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let answer = self.answer();
        let mut space = [0u8; CFG_DATA + CFG_DATA_LEN];
        space[0] = self.select;
        space[1] = self.subsel;
        space[2] = answer.len().min(CFG_DATA_LEN) as u8;
        let n = answer.len().min(CFG_DATA_LEN);
        space[CFG_DATA..CFG_DATA + n].copy_from_slice(&answer[..n]);
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset).ok().and_then(|o| space.get(o + i)).copied().unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            match offset + i as u64 {
                0 => self.select = b,
                1 => self.subsel = b,
                _ => {}
            }
        }
    }
    fn activate(&mut self, mem: GuestMemory, queues: Vec<Queue>, interrupt: Arc<Interrupt>, _features: u64) {
        let mut q = lock(&self.shared);
        q.mem = Some(mem);
        q.queues = queues;
        q.interrupt = Some(interrupt);
        // Motion from before the driver was ready is stale.
        q.pending.clear();
    }
    fn queue_notify(&mut self, index: u16) {
        let mut q = lock(&self.shared);
        match usize::from(index) {
            EVENTQ => q.deliver(),
            STATUSQ => q.drain_status(),
            _ => {}
        }
    }
    fn reset(&mut self) {
        *lock(&self.shared) = Queues::default();
        self.select = CFG_UNSET;
        self.subsel = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::mmio::reg;
    use crate::devices::virtio::testing::{TestDriver, BUFFERS};
    use vm_memory::GuestAddress;

    fn config(d: &mut TestDriver, select: u8, subsel: u8) -> Vec<u8> {
        use crate::devices::bus::BusDevice;
        d.transport.write(reg::CONFIG, &[select]);
        d.transport.write(reg::CONFIG + 1, &[subsel]);
        let mut size = [0u8];
        d.transport.read(reg::CONFIG + 2, &mut size);
        let mut data = vec![0u8; usize::from(size[0])];
        d.transport.read(reg::CONFIG + 8, &mut data);
        data
    }

    fn event(d: &TestDriver, slot: u64) -> InputEvent {
        let mut b = [0u8; 8];
        d.mem.read_slice(&mut b, GuestAddress(BUFFERS + slot * 8)).unwrap();
        InputEvent {
            kind: u16::from_le_bytes([b[0], b[1]]),
            code: u16::from_le_bytes([b[2], b[3]]),
            value: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    #[test]
    fn the_configuration_space_describes_a_tablet_as_linux_reads_it() {
        let (tablet, _) = Tablet::new();
        let mut d = TestDriver::new(Box::new(tablet));
        assert_eq!(config(&mut d, CFG_ID_NAME, 0), NAME.as_bytes());
        let ids = config(&mut d, CFG_ID_DEVIDS, 0);
        assert_eq!(ids, [6, 0, 0x27, 0x06, 3, 0, 1, 0]);
        assert_eq!(config(&mut d, CFG_PROP_BITS, 0), b"");
        let keys = config(&mut d, CFG_EV_BITS, EV_KEY as u8);
        assert_eq!(keys.len(), 0x112 / 8 + 1);
        assert_eq!(keys[0x110 / 8], 0b111, "BTN_LEFT, BTN_RIGHT, BTN_MIDDLE");
        assert_eq!(config(&mut d, CFG_EV_BITS, EV_ABS as u8), [0b11]);
        assert_eq!(config(&mut d, CFG_EV_BITS, EV_REL as u8), [0, 1], "REL_WHEEL is code 8");
        assert_eq!(config(&mut d, CFG_EV_BITS, 0x11), b"", "no LEDs");
        let abs = config(&mut d, CFG_ABS_INFO, ABS_Y as u8);
        assert_eq!(abs.len(), 20);
        assert_eq!(u32::from_le_bytes(abs[4..8].try_into().unwrap()), ABS_MAX);
        assert_eq!(config(&mut d, CFG_ABS_INFO, 5), b"", "no such axis");
        assert_eq!(config(&mut d, 0x77, 0), b"", "an unknown selector answers nothing");
    }

    #[test]
    fn pointer_events_wait_for_buffers_and_arrive_in_order() {
        let (tablet, handle) = Tablet::new();
        assert!(!handle.driven(), "no driver yet");
        let mut d = TestDriver::new(Box::new(tablet));
        assert!(handle.driven());
        // Two events' worth of buffers, then a report that needs four.
        for slot in 0..2 {
            d.offer(EVENTQ, &[(BUFFERS + slot * 8, 8, true)]);
        }
        d.w(reg::QUEUE_NOTIFY, 0);
        handle.pointer(1023, 0, 1024, 768, LEFT, 0);
        assert_eq!(event(&d, 0), InputEvent { kind: EV_ABS, code: ABS_X, value: ABS_MAX });
        assert_eq!(event(&d, 1), InputEvent { kind: EV_ABS, code: ABS_Y, value: 0 });
        assert_eq!(d.take_used(EVENTQ), Some((0, 8)));
        assert_eq!(d.take_used(EVENTQ), Some((1, 8)));
        assert_eq!(d.take_used(EVENTQ), None, "the rest waits for buffers");
        for slot in 2..4 {
            d.offer(EVENTQ, &[(BUFFERS + slot * 8, 8, true)]);
        }
        d.w(reg::QUEUE_NOTIFY, 0);
        assert_eq!(event(&d, 2), InputEvent { kind: EV_KEY, code: BTN_LEFT, value: 1 });
        assert_eq!(event(&d, 3), InputEvent { kind: EV_SYN, code: SYN_REPORT, value: 0 });
        assert_eq!(d.irq.read().unwrap(), 2, "an interrupt for each batch");
    }

    #[test]
    fn buttons_are_sent_when_they_change_and_the_wheel_when_it_turns() {
        let (tablet, handle) = Tablet::new();
        let mut d = TestDriver::new(Box::new(tablet));
        handle.pointer(512, 384, 1024, 768, RIGHT, 0);
        handle.pointer(512, 384, 1024, 768, RIGHT, -1);
        handle.pointer(0, 0, 1, 1, 0, 0);
        for slot in 0..12 {
            d.offer(EVENTQ, &[(BUFFERS + slot * 8, 8, true)]);
        }
        d.w(reg::QUEUE_NOTIFY, 0);
        let got: Vec<_> = (0..12).map(|s| event(&d, s)).collect();
        let centre = 512 * ABS_MAX / 1023;
        assert_eq!(got[0].value, centre);
        assert_eq!(got[2], InputEvent { kind: EV_KEY, code: BTN_RIGHT, value: 1 });
        assert_eq!(got[3].kind, EV_SYN);
        assert_eq!(got[6], InputEvent { kind: EV_REL, code: REL_WHEEL, value: u32::MAX }, "one notch towards the user");
        assert_eq!(got[7].kind, EV_SYN);
        assert_eq!((got[8].value, got[9].value), (0, 0), "a 1x1 screen does not divide by zero");
        assert_eq!(got[10], InputEvent { kind: EV_KEY, code: BTN_RIGHT, value: 0 });
        assert_eq!(got[11].kind, EV_SYN);
    }

    #[test]
    fn a_guest_that_takes_nothing_cannot_make_the_queue_grow_and_reset_forgets_it() {
        let (tablet, handle) = Tablet::new();
        let mut d = TestDriver::new(Box::new(tablet));
        for i in 0..1000 {
            handle.pointer(i, i, 1024, 768, 0, 0);
        }
        assert_eq!(lock(&handle.0).pending.len(), MAX_PENDING);
        d.offer(STATUSQ, &[(BUFFERS, 8, false)]);
        d.w(reg::QUEUE_NOTIFY, 1);
        assert_eq!(d.take_used(STATUSQ), Some((0, 0)), "status events are taken and ignored");
        d.w(reg::STATUS, 0);
        assert!(!handle.driven(), "after a reset the pointer goes back to PS/2");
        assert!(lock(&handle.0).pending.is_empty());
    }
}
