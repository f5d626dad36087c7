//! TAP devices: the host end of a VM's NIC. The VMM opens one with the
//! virtio-net header on (so checksum and segmentation offloads pass through
//! it); the panel creates persistent ones in `br0` before a VM starts.
//!
//! Linux's TUN/TAP interface is a handful of ioctls on `/dev/net/tun`
//! (Documentation/networking/tuntap.rst) and on a socket for the interface
//! flags and bridge ports.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
const TUNSETGROUP: libc::c_ulong = 0x4004_54ce;
pub const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// TUNSETOFFLOAD flags: what the tap may hand us unfinished.
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;

/// Interface names are at most 15 bytes (IFNAMSIZ - 1).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    /// ifr_flags, ifr_ifindex: the union's first member is all we use.
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> io::Result<Self> {
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains(['/', ' ', '\0']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a valid interface name (1 to {MAX_NAME_LEN} bytes, no '/' or spaces)"),
            ));
        }
        let mut r = Self { name: [0; libc::IFNAMSIZ], data: [0; 24] };
        for (d, s) in r.name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        Ok(r)
    }
    fn set_short(&mut self, v: libc::c_short) {
        self.data[..2].copy_from_slice(&v.to_ne_bytes());
    }
    fn short(&self) -> libc::c_short {
        libc::c_short::from_ne_bytes([self.data[0], self.data[1]])
    }
    fn set_int(&mut self, v: libc::c_int) {
        self.data[..4].copy_from_slice(&v.to_ne_bytes());
    }
}

/// An ioctl whose argument is a plain integer, not a pointer.
fn ioctl_value(fd: RawFd, request: libc::c_ulong, value: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the kernel reads `value` as a number for these requests.
    if unsafe { libc::ioctl(fd, request, value) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn ioctl(fd: RawFd, request: libc::c_ulong, arg: *mut libc::c_void) -> io::Result<()> {
    // SAFETY: each caller passes a request and an argument of the type the
    // kernel expects for it, living for the duration of the call.
    if unsafe { libc::ioctl(fd, request, arg) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An open TAP queue, non-blocking, carrying a 12-byte virtio-net header in
/// front of every frame.
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens the TAP device `name`, creating it (for this process's
    /// lifetime) if it does not exist, and brings its link up.
    pub fn open(name: &str, vnet_hdr_len: usize) -> io::Result<Self> {
        let file = open_tun(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)?;
        let mut len = vnet_hdr_len as libc::c_int;
        ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, (&mut len as *mut libc::c_int).cast())?;
        set_offload(&file, 0)?;
        set_link_up(name)?;
        Ok(Self { file, name: name.to_string() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells the tap which offloads the guest accepts on receive.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        set_offload(&self.file, flags)
    }

    /// Reads one frame (header included); `WouldBlock` when none waits.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reads at most buf.len() bytes into buf.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one frame (header included).
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: writes frame.len() bytes from frame.
        let n = unsafe { libc::write(self.file.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

fn open_tun(name: &str, flags: libc::c_short) -> io::Result<File> {
    let mut req = IfReq::new(name)?;
    let file = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open /dev/net/tun: {e}")))?;
    req.set_short(flags);
    ioctl(file.as_raw_fd(), TUNSETIFF, (&mut req as *mut IfReq).cast())?;
    Ok(file)
}

fn set_offload(file: &File, flags: u32) -> io::Result<()> {
    ioctl_value(file.as_raw_fd(), TUNSETOFFLOAD, libc::c_ulong::from(flags))
}

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: a plain socket(2) call; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets IFF_UP on an interface.
pub fn set_link_up(name: &str) -> io::Result<()> {
    let sock = control_socket()?;
    let mut req = IfReq::new(name)?;
    ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, (&mut req as *mut IfReq).cast())?;
    let flags = req.short() | libc::IFF_UP as libc::c_short;
    req.set_short(flags);
    ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, (&mut req as *mut IfReq).cast())
}

/// Creates a TAP device that outlives this process (what `ip tuntap add
/// user U group G` does), so a VMM started later can open it. Only `owner`
/// (uid, gid), or a process with CAP_NET_ADMIN, may attach to it: another
/// VM's user cannot. An existing one is reused and given to `owner`.
pub fn create_persistent(name: &str, owner: (u32, u32)) -> io::Result<()> {
    let file = open_tun(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)?;
    ioctl_value(file.as_raw_fd(), TUNSETOWNER, owner.0.into())?;
    ioctl_value(file.as_raw_fd(), TUNSETGROUP, owner.1.into())?;
    ioctl_value(file.as_raw_fd(), TUNSETPERSIST, 1)
}

/// Deletes a persistent TAP device.
pub fn delete_persistent(name: &str) -> io::Result<()> {
    let file = open_tun(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)?;
    ioctl_value(file.as_raw_fd(), TUNSETPERSIST, 0)
}

/// Makes `port` a port of the bridge `bridge` (what `ip link set master`
/// does); a port already in it is fine.
pub fn add_to_bridge(bridge: &str, port: &str) -> io::Result<()> {
    let index = interface_index(port)?;
    let sock = control_socket()?;
    let mut req = IfReq::new(bridge)?;
    req.set_int(index);
    match ioctl(sock.as_raw_fd(), SIOCBRADDIF, (&mut req as *mut IfReq).cast()) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        r => r,
    }
}

fn interface_index(name: &str) -> io::Result<libc::c_int> {
    let c = std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("there is no interface named {name}")));
    }
    Ok(index as libc::c_int)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked_before_any_ioctl() {
        assert!(IfReq::new("vm-web1").is_ok());
        assert!(IfReq::new("").is_err());
        assert!(IfReq::new("a-name-that-is-too-long").is_err());
        assert!(IfReq::new("bad/name").is_err());
    }

    /// Needs CAP_NET_ADMIN (CI runs as root): a persistent tap belongs to
    /// the VM's user and group, as sysfs shows.
    #[test]
    fn a_persistent_tap_belongs_to_its_vm_user() {
        let name = format!("kvt{}", std::process::id() % 100_000);
        create_persistent(&name, (100_123, 100_124)).expect("a TAP device (run the tests as root)");
        let read = |f: &str| std::fs::read_to_string(format!("/sys/class/net/{name}/{f}")).unwrap().trim().to_string();
        let (owner, group) = (read("owner"), read("group"));
        create_persistent(&name, (100_200, 100_200)).unwrap();
        let again = read("owner");
        delete_persistent(&name).unwrap();
        assert_eq!((owner.as_str(), group.as_str()), ("100123", "100124"));
        assert_eq!(again, "100200", "a reused tap goes to the new owner");
        assert!(!std::path::Path::new(&format!("/sys/class/net/{name}")).exists());
    }
}
