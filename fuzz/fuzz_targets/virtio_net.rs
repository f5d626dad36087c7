//! virtio-net on random descriptor chains (see virtio_harness): the
//! guest's transmit chains (headers, fragments) go to a real tap, and
//! frames from the host side (the rest of the input, sent into the tap
//! through a packet socket) land in the guest's receive buffers. Needs
//! CAP_NET_ADMIN for the tap, as the VMM does.
#![no_main]

#[path = "virtio_harness.rs"]
mod virtio_harness;

use kvmos_vmm::devices::virtio::net::{Net, HDR_LEN};
use kvmos_vmm::devices::virtio::VirtioDevice;
use kvmos_vmm::tap::Tap;
use libfuzzer_sys::fuzz_target;

/// Sends `frame` into the tap `ifindex` from the host side.
fn send_into(ifindex: i32, frame: &[u8]) {
    // SAFETY: a packet socket, a sockaddr_ll for it, one sendto; closed.
    unsafe {
        let s = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if s < 0 {
            return;
        }
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex;
        addr.sll_halen = 6;
        libc::sendto(
            s,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        libc::close(s);
    }
}

/// The tap, made once for the process (persistent, so each run attaches to
/// it quickly) and removed when the process exits.
fn tap_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let name = format!("kvfz{}", std::process::id() % 100_000);
        kvmos_vmm::tap::create_persistent(&name, (0, 0)).expect("a tap (run as root)");
        extern "C" fn remove() {
            if let Some(name) = NAME.get() {
                let _ = kvmos_vmm::tap::delete_persistent(name);
            }
        }
        // SAFETY: registers a function without arguments to run at exit.
        unsafe { libc::atexit(remove) };
        name
    })
}

fuzz_target!(|data: &[u8]| {
    // The memory image is the first 64 KiB at most; what follows is frames
    // from the host (two bytes of length, then the frame).
    let (guest, mut host) = data.split_at(data.len().min(2 + (64 << 10)));
    let name = tap_name();
    let tap = Tap::open(name, HDR_LEN).expect("the tap");
    let ifindex = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let mut device = Net::new(tap, [0x52, 0x54, 0, 0xf, 0xf, 0xf]);
    virtio_harness::run(&mut device, guest, |d: &mut dyn VirtioDevice| {
        if let [hi, lo, rest @ ..] = host {
            let len = (usize::from(*hi) << 8 | usize::from(*lo)).min(rest.len());
            if len >= 14 {
                send_into(ifindex, &rest[..len]);
            }
            host = &rest[len..];
        }
        d.process_io();
    });
});
