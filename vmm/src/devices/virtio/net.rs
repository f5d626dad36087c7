//! virtio-net on a TAP device. Frames cross with the 12-byte virtio-net
//! header, which the tap understands (IFF_VNET_HDR), so the offloads the
//! guest and the tap agree on pass straight through:
//!
//! - transmit: the guest may hand over frames with a partial checksum
//!   (`CSUM`) and TCP segments up to 64 KiB (`HOST_TSO4/6`); the host kernel
//!   finishes them;
//! - receive: the guest accepts a partial checksum (`GUEST_CSUM`), so the
//!   tap need not compute it. Receive segmentation stays off, so every frame
//!   fits one ordinary receive buffer and no mergeable buffers are needed.
//!
//! Queue 0 receives, queue 1 transmits. A frame from the tap waits in the
//! tap until the guest has a buffer for it; the guest's RX notification
//! resumes delivery. A frame the guest gets wrong is dropped and counted.

use super::{Interrupt, VirtioDevice, TYPE_NET, VIRTIO_F_VERSION_1};
use crate::tap::{Tap, TUN_F_CSUM};
use crate::vstate::memory::GuestMemory;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

const F_CSUM: u64 = 1 << 0;
const F_GUEST_CSUM: u64 = 1 << 1;
const F_MAC: u64 = 1 << 5;
const F_HOST_TSO4: u64 = 1 << 11;
const F_HOST_TSO6: u64 = 1 << 12;

/// `struct virtio_net_hdr_v1`: the header of every frame.
pub const HDR_LEN: usize = 12;
/// The largest frame: a 64 KiB TSO segment with its Ethernet and VLAN
/// headers, plus the virtio-net header.
const MAX_FRAME: usize = HDR_LEN + 65536 + 18;
const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;

/// Frame counters, for the API.
#[derive(Debug, Default, Clone, Copy)]
pub struct NetCounters {
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

pub struct Net {
    tap: Tap,
    mac: [u8; 6],
    mem: Option<GuestMemory>,
    queues: Vec<Queue>,
    interrupt: Option<Arc<Interrupt>>,
    /// A frame read from the tap (its length in `rx_buf`) that no receive
    /// buffer has taken yet.
    pending_rx: Option<usize>,
    /// Receive and transmit each have a buffer of their own: a frame
    /// waiting in `rx_buf` for a receive buffer must survive the guest
    /// transmitting meanwhile.
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    pub counters: NetCounters,
}

impl Net {
    pub fn new(tap: Tap, mac: [u8; 6]) -> Self {
        Self {
            tap,
            mac,
            mem: None,
            queues: Vec::new(),
            interrupt: None,
            pending_rx: None,
            rx_buf: vec![0; MAX_FRAME],
            tx_buf: vec![0; MAX_FRAME],
            counters: NetCounters::default(),
        }
    }

    /// Moves frames from the tap into the guest's receive buffers until
    /// either runs out. Returns whether a buffer was used.
    fn deliver_rx(&mut self, mem: &GuestMemory) -> bool {
        let Some(queue) = self.queues.get_mut(RX) else { return false };
        let mut used = false;
        loop {
            let len = match self.pending_rx.take() {
                Some(len) => len,
                None => match self.tap.read(&mut self.rx_buf) {
                    Ok(len) if len >= HDR_LEN => len,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!("virtio-net: cannot read from {}: {e}", self.tap.name());
                        break;
                    }
                },
            };
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                self.pending_rx = Some(len);
                break;
            };
            // Without mergeable buffers there is exactly one buffer per frame.
            self.rx_buf[10..12].copy_from_slice(&1u16.to_le_bytes());
            let head = chain.head_index();
            let mut done = 0usize;
            for desc in chain.writable() {
                let n = (desc.len() as usize).min(len - done);
                if n == 0 || mem.write_slice(&self.rx_buf[done..done + n], desc.addr()).is_err() {
                    break;
                }
                done += n;
            }
            if done < len {
                self.counters.rx_dropped += 1;
            } else {
                self.counters.rx_frames += 1;
            }
            let used_len = if done < len { 0 } else { done as u32 };
            if queue.add_used(mem, head, used_len).is_err() {
                tracing::warn!("virtio-net: the guest's used ring is not writable");
                break;
            }
            used = true;
        }
        used
    }

    /// Sends every frame the guest queued. Returns whether a buffer was used.
    fn transmit(&mut self, mem: &GuestMemory) -> bool {
        let Some(queue) = self.queues.get_mut(TX) else { return false };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let mut len = 0usize;
            let mut ok = true;
            for desc in chain.readable() {
                let n = desc.len() as usize;
                if len + n > self.tx_buf.len() || mem.read_slice(&mut self.tx_buf[len..len + n], desc.addr()).is_err() {
                    ok = false;
                    break;
                }
                len += n;
            }
            // A full tap queue drops the frame, as a NIC would; TCP resends.
            if ok && len > HDR_LEN && self.tap.write(&self.tx_buf[..len]).is_ok() {
                self.counters.tx_frames += 1;
            } else {
                self.counters.tx_dropped += 1;
            }
            if queue.add_used(mem, head, 0).is_err() {
                tracing::warn!("virtio-net: the guest's used ring is not writable");
                break;
            }
            used = true;
        }
        used
    }

    fn run(&mut self, rx: bool, tx: bool) {
        let (Some(mem), Some(irq)) = (self.mem.clone(), self.interrupt.clone()) else { return };
        // Transmit first: a reply to what the guest sent may already wait.
        let sent = tx && self.transmit(&mem);
        let received = rx && self.deliver_rx(&mem);
        let notify = |q: Option<&mut Queue>| q.map(|q| super::needs_interrupt(q, &mem)).unwrap_or(false);
        let want_tx = sent && notify(self.queues.get_mut(TX));
        let want_rx = received && notify(self.queues.get_mut(RX));
        if want_rx {
            irq.signal_used_queue(RX as u16);
        }
        if want_tx {
            irq.signal_used_queue(TX as u16);
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | F_MAC | F_CSUM | F_GUEST_CSUM | F_HOST_TSO4 | F_HOST_TSO6
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }
    /// Config space: the MAC at offset 0.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset).ok().and_then(|o| self.mac.get(o + i)).copied().unwrap_or(0);
        }
    }
    fn activate(&mut self, mem: GuestMemory, queues: Vec<Queue>, interrupt: Arc<Interrupt>, features: u64) {
        let offload = if features & F_GUEST_CSUM != 0 { TUN_F_CSUM } else { 0 };
        if let Err(e) = self.tap.set_offload(offload) {
            tracing::warn!("virtio-net: cannot set the offloads of {}: {e}", self.tap.name());
        }
        self.mem = Some(mem);
        self.queues = queues;
        self.interrupt = Some(interrupt);
        // Frames that arrived before the driver was ready.
        self.run(true, false);
    }
    fn queue_notify(&mut self, index: u16) {
        self.run(usize::from(index) == RX, usize::from(index) == TX);
    }
    fn io_fd(&self) -> Option<RawFd> {
        Some(self.tap.as_raw_fd())
    }
    fn process_io(&mut self) {
        self.run(true, false);
    }
    fn reset(&mut self) {
        self.mem = None;
        self.queues.clear();
        self.interrupt = None;
        self.pending_rx = None;
        let _ = self.tap.set_offload(0);
    }
}

#[cfg(test)]
mod tests {
    //! Through a real tap on this host (the tests run as root): frames the
    //! driver transmits appear on the tap's interface, and frames sent to
    //! that interface reach the driver's receive buffers.
    use super::*;
    use crate::devices::bus::BusDevice;
    use crate::devices::virtio::mmio::reg;
    use crate::devices::virtio::testing::{TestDriver, BUFFERS};
    use crate::devices::virtio::VirtioTransport;
    use std::os::fd::{FromRawFd, OwnedFd};
    use vm_memory::GuestAddress;

    const ETHERTYPE: u16 = 0x88b5; // IEEE local experimental
    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc];

    /// An AF_PACKET socket on one interface that sees every frame.
    struct PacketSocket(OwnedFd);

    impl PacketSocket {
        fn bind(ifname: &str) -> Self {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: socket/bind/setsockopt with valid, initialised arguments.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
                assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
                let fd = OwnedFd::from_raw_fd(fd);
                let name = std::ffi::CString::new(ifname).unwrap();
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = proto;
                sll.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
                let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                assert_eq!(libc::bind(fd.as_raw_fd(), (&sll as *const libc::sockaddr_ll).cast(), len), 0);
                let tv = libc::timeval { tv_sec: 2, tv_usec: 0 };
                let tvlen = std::mem::size_of::<libc::timeval>() as u32;
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    tvlen,
                );
                Self(fd)
            }
        }
        fn send(&self, frame: &[u8]) {
            // SAFETY: sends frame.len() bytes from frame.
            let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            assert_eq!(n, frame.len() as isize, "{}", std::io::Error::last_os_error());
        }
        /// The next frame with our ethertype, skipping the host's own
        /// traffic (router solicitations and such).
        fn recv_ours(&self) -> Vec<u8> {
            let mut buf = vec![0u8; 2048];
            loop {
                // SAFETY: receives at most buf.len() bytes into buf.
                let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                assert!(n > 0, "no frame arrived: {}", std::io::Error::last_os_error());
                let f = &buf[..n as usize];
                if f.len() >= 14 && f[12..14] == ETHERTYPE.to_be_bytes() {
                    return f.to_vec();
                }
            }
        }
    }

    fn frame(src: [u8; 6], payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src);
        f.extend_from_slice(&ETHERTYPE.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// A tap of our own with the host's IPv6 chatter turned off and
    /// drained, so the only frames on it are the test's.
    fn quiet_tap(test: &str) -> (Tap, String) {
        let name = format!("kvt{}{test}", std::process::id() % 100_000);
        let tap = Tap::open(&name, HDR_LEN).unwrap();
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        let mut buf = vec![0u8; MAX_FRAME];
        while tap.read(&mut buf).is_ok() {}
        (tap, name)
    }

    #[test]
    fn transmitted_frames_reach_the_tap_and_received_ones_reach_the_guest() {
        let (tap, name) = quiet_tap("a");
        let mut d = TestDriver::new(Box::new(Net::new(tap, MAC)));
        let mut mac = [0u8; 6];
        d.transport.read(reg::CONFIG, &mut mac);
        assert_eq!(mac, MAC, "the guest reads its MAC from config space");
        let wire = PacketSocket::bind(&name);

        // Transmit: the virtio-net header, then the frame.
        let out = frame(MAC, b"kvmos transmit");
        d.mem.write_slice(&[0u8; HDR_LEN], GuestAddress(BUFFERS)).unwrap();
        d.mem.write_slice(&out, GuestAddress(BUFFERS + HDR_LEN as u64)).unwrap();
        let head =
            d.offer(TX, &[(BUFFERS, HDR_LEN as u32, false), (BUFFERS + HDR_LEN as u64, out.len() as u32, false)]);
        d.w(reg::QUEUE_NOTIFY, TX as u32);
        assert_eq!(d.take_used(TX), Some((head, 0)));
        assert_eq!(wire.recv_ours(), out);

        // Receive, with a frame arriving before the guest has a buffer: it
        // waits in the tap until the guest offers one.
        let inbound = frame([0x52, 0x54, 0, 1, 2, 3], b"kvmos receive");
        wire.send(&inbound);
        d.transport.process_io();
        assert_eq!(d.take_used(RX), None, "no buffer, nothing delivered");
        let rx_buf = BUFFERS + 0x1000;
        let head = d.offer(RX, &[(rx_buf, 2048, true)]);
        d.w(reg::QUEUE_NOTIFY, RX as u32);
        let (got_head, len) = d.take_used(RX).expect("the frame was delivered");
        assert_eq!(got_head, head);
        let mut got = vec![0u8; len as usize];
        d.mem.read_slice(&mut got, GuestAddress(rx_buf)).unwrap();
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
        assert_eq!(&got[HDR_LEN..], &inbound[..]);
    }

    /// A received frame waiting for a receive buffer once shared its buffer
    /// with transmit: a frame the guest sent meanwhile overwrote it, and the
    /// guest then received its own frame back, header flags and all.
    #[test]
    fn a_frame_waiting_for_a_receive_buffer_survives_a_transmit() {
        let (tap, name) = quiet_tap("c");
        let mut d = TestDriver::new(Box::new(Net::new(tap, MAC)));
        let wire = PacketSocket::bind(&name);
        let inbound = frame([0x52, 0x54, 0, 1, 2, 3], b"waiting for a buffer");
        wire.send(&inbound);
        d.transport.process_io();
        assert_eq!(d.take_used(RX), None, "no buffer yet");

        let mut hdr = [0u8; HDR_LEN];
        hdr[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM: not for the receiver
        let out = frame(MAC, &[0x5a; 300]);
        d.mem.write_slice(&hdr, GuestAddress(BUFFERS)).unwrap();
        d.mem.write_slice(&out, GuestAddress(BUFFERS + HDR_LEN as u64)).unwrap();
        let head =
            d.offer(TX, &[(BUFFERS, HDR_LEN as u32, false), (BUFFERS + HDR_LEN as u64, out.len() as u32, false)]);
        d.w(reg::QUEUE_NOTIFY, TX as u32);
        assert_eq!(d.take_used(TX), Some((head, 0)));

        let rx_buf = BUFFERS + 0x1000;
        d.offer(RX, &[(rx_buf, 2048, true)]);
        d.w(reg::QUEUE_NOTIFY, RX as u32);
        let (_, len) = d.take_used(RX).expect("the waiting frame was delivered");
        let mut got = vec![0u8; len as usize];
        d.mem.read_slice(&mut got, GuestAddress(rx_buf)).unwrap();
        assert_eq!(got[0], 0, "no flags from the transmitted frame's header");
        assert_eq!(&got[HDR_LEN..], &inbound[..], "the frame that arrived, not the one sent");
    }

    #[test]
    fn frames_too_big_for_the_buffer_are_dropped_not_truncated() {
        let (tap, name) = quiet_tap("b");
        let net = Net::new(tap, MAC);
        let mut d = TestDriver::new(Box::new(net));
        let wire = PacketSocket::bind(&name);
        wire.send(&frame([0x52, 0x54, 0, 1, 2, 3], &[7u8; 1000]));
        let head = d.offer(RX, &[(BUFFERS, 64, true)]);
        d.w(reg::QUEUE_NOTIFY, RX as u32);
        assert_eq!(d.take_used(RX), Some((head, 0)), "the buffer comes back empty");
    }
}
