//! virtio-blk on a raw file: read, write, flush, read-only, and the device
//! ID. A request the guest gets wrong (a bad descriptor, a sector past the
//! end) fails that request with an I/O error; it never stops the VMM.
//!
//! Writable disks are locked exclusively (flock) when opened, so two VMs
//! can never write the same image.

use super::{Interrupt, VirtioDevice, TYPE_BLOCK, VIRTIO_F_VERSION_1};
use crate::vstate::memory::GuestMemory;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

pub const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZE: u16 = 256;
/// The device ID a guest reads is at most 20 bytes.
pub const ID_LEN: usize = 20;

const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

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
    mem: Option<GuestMemory>,
    queue: Option<Queue>,
    interrupt: Option<Arc<Interrupt>>,
    pub reads: u64,
    pub writes: u64,
}

impl Block {
    /// Opens and locks a disk image.
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<Self, OpenError> {
        let file = File::options().read(true).write(!read_only).open(path).map_err(OpenError::Open)?;
        let op = if read_only { libc::LOCK_SH } else { libc::LOCK_EX };
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
            return Err(OpenError::Locked);
        }
        // The end, not the metadata: a block device's metadata says 0 bytes.
        let len = std::io::Seek::seek(&mut &file, std::io::SeekFrom::End(0)).map_err(OpenError::Open)?;
        let mut id_bytes = [0u8; ID_LEN];
        let n = id.len().min(ID_LEN);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Self {
            file,
            read_only,
            sectors: len / SECTOR_SIZE,
            id: id_bytes,
            mem: None,
            queue: None,
            interrupt: None,
            reads: 0,
            writes: 0,
        })
    }

    /// Executes one request; returns the status and the bytes written into
    /// guest memory.
    fn execute(
        &mut self,
        mem: &GuestMemory,
        chain: virtio_queue::DescriptorChain<&GuestMemory>,
    ) -> (Option<GuestAddress>, u8, u32) {
        let descs: Vec<_> = chain.collect();
        let Some((header, rest)) = descs.split_first() else { return (None, S_IOERR, 0) };
        let Some((status, data)) = rest.split_last() else { return (None, S_IOERR, 0) };
        if !status.is_write_only() || status.len() < 1 || header.len() < 16 {
            return (None, S_IOERR, 0);
        }
        let status_addr = Some(status.addr());
        let (Ok(kind), Ok(sector)) =
            (mem.read_obj::<u32>(header.addr()), mem.read_obj::<u64>(header.addr().unchecked_add(8)))
        else {
            return (status_addr, S_IOERR, 0);
        };
        let mut written = 0u32;
        let mut offset = match sector.checked_mul(SECTOR_SIZE) {
            Some(o) => o,
            None => return (status_addr, S_IOERR, 0),
        };
        let end_of_disk = self.sectors * SECTOR_SIZE;
        let result: Result<(), ()> = match kind {
            T_IN | T_OUT => {
                let writing = kind == T_OUT;
                if writing && self.read_only {
                    return (status_addr, S_IOERR, 0);
                }
                data.iter().try_for_each(|d| {
                    let len = u64::from(d.len());
                    if d.is_write_only() == writing || offset.checked_add(len).is_none_or(|e| e > end_of_disk) {
                        return Err(());
                    }
                    let mut buf = vec![0u8; d.len() as usize];
                    if writing {
                        mem.read_slice(&mut buf, d.addr()).map_err(|_| ())?;
                        self.file.write_all_at(&buf, offset).map_err(|_| ())?;
                        self.writes += 1;
                    } else {
                        self.file.read_exact_at(&mut buf, offset).map_err(|_| ())?;
                        mem.write_slice(&buf, d.addr()).map_err(|_| ())?;
                        written += d.len();
                        self.reads += 1;
                    }
                    offset += len;
                    Ok(())
                })
            }
            T_FLUSH => self.file.sync_data().map_err(|_| ()),
            T_GET_ID => match data.first() {
                Some(d) if d.is_write_only() => {
                    let n = (d.len() as usize).min(ID_LEN);
                    written = n as u32;
                    mem.write_slice(&self.id[..n], d.addr()).map_err(|_| ())
                }
                _ => Err(()),
            },
            _ => return (status_addr, S_UNSUPP, 0),
        };
        match result {
            Ok(()) => (status_addr, S_OK, written),
            Err(()) => (status_addr, S_IOERR, written),
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | if self.read_only { VIRTIO_BLK_F_RO } else { 0 }
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }
    /// Config space: capacity in 512-byte sectors at offset 0.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cap = self.sectors.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset).ok().and_then(|o| cap.get(o + i)).copied().unwrap_or(0);
        }
    }
    fn activate(&mut self, mem: GuestMemory, queues: Vec<Queue>, interrupt: Arc<Interrupt>, _features: u64) {
        self.mem = Some(mem);
        self.queue = queues.into_iter().next();
        self.interrupt = Some(interrupt);
    }
    fn queue_notify(&mut self, _index: u16) {
        let (Some(mem), Some(mut queue), Some(irq)) = (self.mem.clone(), self.queue.take(), self.interrupt.clone())
        else {
            return;
        };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            let (status_addr, status, written) = self.execute(&mem, chain);
            let mut len = written;
            if let Some(addr) = status_addr {
                if mem.write_obj(status, addr).is_ok() {
                    len += 1;
                }
            }
            if queue.add_used(&mem, head, len).is_err() {
                tracing::warn!("virtio-blk: the guest's used ring is not writable");
                break;
            }
            used = true;
        }
        if used && queue.needs_notification(&mem).unwrap_or(true) {
            irq.signal_used_queue(0);
        }
        self.queue = Some(queue);
    }
    fn reset(&mut self) {
        self.mem = None;
        self.queue = None;
        self.interrupt = None;
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
}
