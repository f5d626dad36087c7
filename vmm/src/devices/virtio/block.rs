//! virtio-blk on a raw file: read, write, flush, read-only, and the device
//! ID. A request the guest gets wrong (a bad descriptor, a sector past the
//! end) fails that request with an I/O error; it never stops the VMM.
//!
//! Data moves straight between the file and the guest's buffers: each
//! request is one `preadv` or `pwritev` on the guest memory its descriptors
//! name, so nothing the guest chooses sizes an allocation here. The disk
//! runs on an I/O thread of its own ([`VirtioDevice::own_thread`]): a slow
//! or huge request holds up this disk only, never the console, the network
//! or the control API. The device advertises the largest segment and the
//! most segments it takes (`size_max`, `seg_max`), and suppresses
//! notifications and interrupts the driver does not need (`EVENT_IDX`).
//!
//! Writable disks are locked exclusively (flock) when opened, so two VMs
//! can never write the same image.

use super::{Interrupt, VirtioDevice, TYPE_BLOCK, VIRTIO_F_VERSION_1};
use crate::vstate::memory::GuestMemory;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

pub const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZE: u16 = 256;
/// The device ID a guest reads is at most 20 bytes.
pub const ID_LEN: usize = 20;
/// The most data segments in one request: a chain is at most a queue
/// long, and the header and the status take two.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// The largest data segment a driver should make (1 MiB, as Linux's
/// default maximum request).
pub const SIZE_MAX: u32 = 1 << 20;

const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << 1;
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

/// Why a disk cannot be opened.
#[derive(Debug)]
pub enum OpenError {
    Open(std::io::Error),
    Locked,
}

pub struct Block {
    file: File,
    read_only: bool,
    sectors: u64,
    id: [u8; ID_LEN],
    active: Option<Active>,
}

/// The queue and what goes with it while the driver runs the device.
struct Active {
    mem: GuestMemory,
    queue: Queue,
    interrupt: Arc<Interrupt>,
    event_idx: bool,
}

/// How one request ended: its status, and how many bytes the device wrote
/// into the guest's buffers (the status byte not counted).
struct Outcome {
    status_addr: Option<GuestAddress>,
    status: u8,
    written: u32,
}

impl Outcome {
    fn failed(status_addr: Option<GuestAddress>, status: u8) -> Self {
        Self { status_addr, status, written: 0 }
    }
}

/// Opens a disk image and locks it: shared when read-only, exclusive when
/// writable (for every disk the VM sees, virtio or IDE).
pub fn open_locked(path: &Path, read_only: bool) -> Result<File, OpenError> {
    let file = File::options().read(true).write(!read_only).open(path).map_err(OpenError::Open)?;
    let op = if read_only { libc::LOCK_SH } else { libc::LOCK_EX };
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
        return Err(OpenError::Locked);
    }
    Ok(file)
}

impl Block {
    /// Opens and locks a disk image.
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<Self, OpenError> {
        let file = open_locked(path, read_only)?;
        // The end, not the metadata: a block device's metadata says 0 bytes.
        let len = std::io::Seek::seek(&mut &file, std::io::SeekFrom::End(0)).map_err(OpenError::Open)?;
        let mut id_bytes = [0u8; ID_LEN];
        let n = id.len().min(ID_LEN);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Self { file, read_only, sectors: len / SECTOR_SIZE, id: id_bytes, active: None })
    }

    /// Executes one request.
    fn execute(&self, mem: &GuestMemory, chain: virtio_queue::DescriptorChain<&GuestMemory>) -> Outcome {
        let descs: Vec<Descriptor> = chain.collect();
        let Some((header, rest)) = descs.split_first() else { return Outcome::failed(None, S_IOERR) };
        let Some((status, data)) = rest.split_last() else { return Outcome::failed(None, S_IOERR) };
        if !status.is_write_only() || status.len() < 1 || header.len() < 16 {
            return Outcome::failed(None, S_IOERR);
        }
        let status_addr = Some(status.addr());
        let (Ok(kind), Ok(sector)) =
            (mem.read_obj::<u32>(header.addr()), mem.read_obj::<u64>(header.addr().unchecked_add(8)))
        else {
            return Outcome::failed(status_addr, S_IOERR);
        };
        let done = |result: Result<u32, ()>| match result {
            Ok(written) => Outcome { status_addr, status: S_OK, written },
            Err(()) => Outcome::failed(status_addr, S_IOERR),
        };
        match kind {
            T_IN | T_OUT => done(self.transfer(mem, data, sector, kind == T_OUT)),
            T_FLUSH => done(self.file.sync_data().map(|_| 0).map_err(|_| ())),
            T_GET_ID => done(match data.first() {
                Some(d) if d.is_write_only() => {
                    let n = (d.len() as usize).min(ID_LEN);
                    mem.write_slice(&self.id[..n], d.addr()).map(|_| n as u32).map_err(|_| ())
                }
                _ => Err(()),
            }),
            _ => Outcome::failed(status_addr, S_UNSUPP),
        }
    }

    /// Reads (`write` false) or writes the sectors from `sector` on
    /// between the file and the guest buffers `data`, in one system call
    /// on the guest's memory; returns the bytes written into the guest.
    fn transfer(&self, mem: &GuestMemory, data: &[Descriptor], sector: u64, write: bool) -> Result<u32, ()> {
        if write && self.read_only {
            return Err(());
        }
        let offset = sector.checked_mul(SECTOR_SIZE).ok_or(())?;
        let mut len = 0u64;
        let mut slices = Vec::with_capacity(data.len());
        for d in data {
            // A read fills write-only buffers; a write takes read-only ones.
            if d.is_write_only() == write {
                return Err(());
            }
            len += u64::from(d.len());
            for slice in GuestMemoryBackend::get_slices(mem, d.addr(), d.len() as usize) {
                slices.push(slice.map_err(|_| ())?);
            }
        }
        if offset.checked_add(len).is_none_or(|end| end > self.sectors * SECTOR_SIZE) {
            return Err(());
        }
        let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard_mut()).collect();
        let mut iov: Vec<libc::iovec> =
            guards.iter().map(|g| libc::iovec { iov_base: g.as_ptr().cast(), iov_len: g.len() }).collect();
        vectored_io(&self.file, &mut iov, offset, write).map_err(|e| {
            tracing::warn!(
                "virtio-blk: {} of {len} bytes at {offset} failed: {e}",
                if write { "write" } else { "read" }
            );
        })?;
        Ok(if write { 0 } else { len as u32 })
    }

    /// Takes every request the driver has made available; true when the
    /// driver needs an interrupt for what was used.
    fn process_queue(&self, a: &mut Active) -> bool {
        let mut used = false;
        loop {
            if a.event_idx {
                let _ = a.queue.disable_notification(&a.mem);
            }
            let mut handled = 0;
            while let Some(chain) = a.queue.pop_descriptor_chain(&a.mem) {
                let head = chain.head_index();
                let outcome = self.execute(&a.mem, chain);
                let mut len = outcome.written;
                if let Some(addr) = outcome.status_addr {
                    if a.mem.write_obj(outcome.status, addr).is_ok() {
                        len += 1;
                    }
                }
                if a.queue.add_used(&a.mem, head, len).is_err() {
                    tracing::warn!("virtio-blk: the guest's used ring is not writable");
                    return used;
                }
                used = true;
                handled += 1;
            }
            // With EVENT_IDX, look once more after asking to be notified:
            // the driver may have added requests meanwhile. A ring whose
            // index says more but yields nothing is broken: stop (a guest
            // could otherwise keep this thread spinning; found by fuzzing).
            if !a.event_idx || !a.queue.enable_notification(&a.mem).unwrap_or(false) || handled == 0 {
                break;
            }
        }
        used && super::needs_interrupt(&mut a.queue, &a.mem)
    }
}

/// `preadv`/`pwritev` of all of `iov` at `offset`, resumed after short
/// transfers and signals.
fn vectored_io(file: &File, mut iov: &mut [libc::iovec], mut offset: u64, write: bool) -> std::io::Result<()> {
    while !iov.is_empty() {
        let count = iov.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
        let at = i64::try_from(offset).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: each iovec points into guest memory mapped for the VM's
        // lifetime (the guards in `transfer` hold it), and is as long as
        // the mapping it was cut from.
        let n = unsafe {
            if write {
                libc::pwritev(file.as_raw_fd(), iov.as_ptr(), count, at)
            } else {
                libc::preadv(file.as_raw_fd(), iov.as_ptr(), count, at)
            }
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        offset += n as u64;
        let mut left = n as usize;
        while let Some(first) = iov.first_mut() {
            if left < first.iov_len {
                // SAFETY: moves within the same buffer, `left` < its length.
                first.iov_base = unsafe { first.iov_base.cast::<u8>().add(left) }.cast();
                first.iov_len -= left;
                break;
            }
            left -= first.iov_len;
            iov = &mut iov[1..];
        }
    }
    Ok(())
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | VIRTIO_BLK_F_SIZE_MAX
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_FLUSH
            | VIRTIO_RING_F_INDIRECT_DESC
            | VIRTIO_RING_F_EVENT_IDX
            | if self.read_only { VIRTIO_BLK_F_RO } else { 0 }
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }
    /// Config space (virtio_blk_config): the capacity in 512-byte sectors
    /// at offset 0, `size_max` at 8 and `seg_max` at 12.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&self.sectors.to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset).ok().and_then(|o| config.get(o + i)).copied().unwrap_or(0);
        }
    }
    fn activate(&mut self, mem: GuestMemory, queues: Vec<Queue>, interrupt: Arc<Interrupt>, features: u64) {
        self.active = queues.into_iter().next().map(|mut queue| {
            let event_idx = features & VIRTIO_RING_F_EVENT_IDX != 0;
            queue.set_event_idx(event_idx);
            Active { mem, queue, interrupt, event_idx }
        });
    }
    fn queue_notify(&mut self, _index: u16) {
        let Some(mut active) = self.active.take() else { return };
        if self.process_queue(&mut active) {
            active.interrupt.signal_used_queue(0);
        }
        self.active = Some(active);
    }
    fn own_thread(&self) -> Option<&'static str> {
        Some("disk")
    }
    fn reset(&mut self) {
        self.active = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::BusDevice;
    use crate::devices::virtio::mmio::reg;
    use crate::devices::virtio::testing::{TestDriver, BUFFERS};
    use vm_memory::{Bytes, GuestAddress};

    const HDR: u64 = BUFFERS;
    const DATA: u64 = BUFFERS + 0x1000;
    const STATUS: u64 = BUFFERS + 0x3000;

    fn request(d: &mut TestDriver, kind: u32, sector: u64, data_len: u32, data_writable: bool) -> (u8, u32) {
        d.mem.write_obj(kind, GuestAddress(HDR)).unwrap();
        d.mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        d.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let mut bufs = vec![(HDR, 16, false)];
        if data_len > 0 {
            bufs.push((DATA, data_len, data_writable));
        }
        bufs.push((STATUS, 1, true));
        let used = d.submit(&bufs);
        (d.mem.read_obj(GuestAddress(STATUS)).unwrap(), used)
    }

    fn disk(sectors: u64) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.img");
        std::fs::write(&p, vec![0u8; (sectors * SECTOR_SIZE) as usize]).unwrap();
        (dir, p)
    }

    #[test]
    fn writes_reach_the_file_reads_come_back_and_flush_and_id_work() {
        let (_dir, path) = disk(16);
        let mut d = TestDriver::new(Box::new(Block::open(&path, false, "data-disk-1").unwrap()));
        let mut cap = [0u8; 8];
        d.transport.read(reg::CONFIG, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 16, "capacity in sectors");

        let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 13 % 251) as u8).collect();
        d.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
        assert_eq!(request(&mut d, T_OUT, 3, 1024, false), (S_OK, 1));
        assert_eq!(request(&mut d, T_FLUSH, 0, 0, false).0, S_OK);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[3 * 512..3 * 512 + 1024], &pattern[..]);

        d.mem.write_slice(&[0u8; 1024], GuestAddress(DATA)).unwrap();
        assert_eq!(request(&mut d, T_IN, 3, 1024, true), (S_OK, 1025));
        let mut back = vec![0u8; 1024];
        d.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
        assert_eq!(back, pattern);

        assert_eq!(request(&mut d, T_GET_ID, 0, 20, true).0, S_OK);
        let mut id = [0u8; 20];
        d.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..11], b"data-disk-1");
    }

    #[test]
    fn bad_requests_fail_without_harm() {
        let (_dir, path) = disk(4);
        let mut d = TestDriver::new(Box::new(Block::open(&path, false, "x").unwrap()));
        assert_eq!(request(&mut d, T_IN, 4, 512, true).0, S_IOERR, "past the end");
        assert_eq!(request(&mut d, T_IN, u64::MAX, 512, true).0, S_IOERR, "overflowing sector");
        assert_eq!(request(&mut d, 99, 0, 0, false).0, S_UNSUPP);
        assert_eq!(request(&mut d, T_IN, 0, 512, false).0, S_IOERR, "a read into a read-only buffer");
    }

    #[test]
    fn read_only_disks_refuse_writes_and_writable_disks_are_locked() {
        let (_dir, path) = disk(4);
        let ro = Block::open(&path, true, "ro").unwrap();
        assert_ne!(ro.features() & VIRTIO_BLK_F_RO, 0);
        let mut d = TestDriver::new(Box::new(ro));
        assert_eq!(request(&mut d, T_OUT, 0, 512, false).0, S_IOERR);
        drop(d);
        let first = Block::open(&path, false, "a").unwrap();
        assert!(matches!(Block::open(&path, false, "b"), Err(OpenError::Locked)));
        drop(first);
        assert!(Block::open(&path, false, "c").is_ok(), "the lock goes with the VM");
    }

    #[test]
    fn a_request_spanning_descriptors_moves_every_byte_between_the_file_and_guest_memory() {
        let (_dir, path) = disk(64);
        let mut d = TestDriver::new(Box::new(Block::open(&path, false, "x").unwrap()));
        let pattern: Vec<u8> = (0..7680u32).map(|i| (i * 7 % 253) as u8).collect();
        // Three buffers of 512, 4096 and 3072 bytes, placed apart.
        let parts = [(DATA, 512usize), (DATA + 0x1000, 4096), (DATA + 0x4000, 3072)];
        let mut at = 0;
        for (addr, len) in parts {
            d.mem.write_slice(&pattern[at..at + len], GuestAddress(addr)).unwrap();
            at += len;
        }
        d.mem.write_obj(T_OUT, GuestAddress(HDR)).unwrap();
        d.mem.write_obj(5u64, GuestAddress(HDR + 8)).unwrap();
        let mut bufs = vec![(HDR, 16, false)];
        bufs.extend(parts.iter().map(|&(a, l)| (a, l as u32, false)));
        bufs.push((STATUS, 1, true));
        assert_eq!(d.submit(&bufs), 1);
        assert_eq!(d.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), S_OK);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[5 * 512..5 * 512 + pattern.len()], &pattern[..]);

        // Read it back into two buffers of other sizes.
        let into = [(DATA + 0x8000, 1024usize), (DATA + 0xA000, 6656)];
        d.mem.write_obj(T_IN, GuestAddress(HDR)).unwrap();
        let mut bufs = vec![(HDR, 16, false)];
        bufs.extend(into.iter().map(|&(a, l)| (a, l as u32, true)));
        bufs.push((STATUS, 1, true));
        assert_eq!(d.submit(&bufs), 7680 + 1);
        let mut back = Vec::new();
        for (addr, len) in into {
            let mut part = vec![0u8; len];
            d.mem.read_slice(&mut part, GuestAddress(addr)).unwrap();
            back.extend(part);
        }
        assert_eq!(back, pattern);
    }

    #[test]
    fn a_huge_request_fails_without_allocating_its_size() {
        // 16 GiB of disk (sparse), and a guest asking for 4 GiB less a page
        // into its 1 MiB of memory: refused up front, no bounce buffer.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.img");
        std::fs::File::create(&path).unwrap().set_len(16 << 30).unwrap();
        let mut d = TestDriver::new(Box::new(Block::open(&path, false, "x").unwrap()));
        let rss = crate::test_util::peak_rss_kib;
        let before = rss();
        assert_eq!(request(&mut d, T_IN, 0, 0xFFFF_F000, true).0, S_IOERR);
        assert_eq!(request(&mut d, T_OUT, 0, 0xFFFF_F000, false).0, S_IOERR);
        assert!(rss() < before + 64 * 1024, "peak memory grew from {before} kB to {} kB", rss());
        // The device still works.
        assert_eq!(request(&mut d, T_IN, 0, 512, true).0, S_OK);
    }

    #[test]
    fn the_config_space_tells_the_driver_its_limits() {
        let (_dir, path) = disk(8);
        let b = Block::open(&path, false, "x").unwrap();
        let features = b.features();
        for bit in [VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_SEG_MAX, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC] {
            assert_ne!(features & bit, 0, "feature {bit:#x}");
        }
        let mut d = TestDriver::new(Box::new(b));
        let mut config = [0u8; 16];
        d.transport.read(reg::CONFIG, &mut config);
        assert_eq!(u64::from_le_bytes(config[..8].try_into().unwrap()), 8);
        assert_eq!(u32::from_le_bytes(config[8..12].try_into().unwrap()), SIZE_MAX);
        assert_eq!(u32::from_le_bytes(config[12..16].try_into().unwrap()), SEG_MAX);
    }

    /// An available index the ring cannot hold (more requests than its
    /// size) yields no request; with EVENT_IDX the device once looked
    /// again and again, spinning its thread (found by fuzzing).
    #[test]
    fn a_broken_available_index_does_not_spin_the_disk() {
        use crate::devices::virtio::testing::AVAIL;
        let (_dir, path) = disk(8);
        let mut d = TestDriver::new(Box::new(Block::open(&path, false, "x").unwrap()));
        d.mem.write_obj(0x1234u16, GuestAddress(AVAIL + 2)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            d.w(reg::QUEUE_NOTIFY, 0);
            let _ = tx.send(());
        });
        rx.recv_timeout(std::time::Duration::from_secs(5)).expect("the notification returned");
    }
}
