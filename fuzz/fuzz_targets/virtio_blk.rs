//! virtio-blk's request handling on random descriptor chains: headers,
//! sectors, lengths and buffers all from the guest (see virtio_harness).
#![no_main]

#[path = "virtio_harness.rs"]
mod virtio_harness;

use kvmos_vmm::devices::virtio::block::{Block, SECTOR_SIZE};
use libfuzzer_sys::fuzz_target;
use std::os::fd::FromRawFd;

/// A 64-sector disk in memory (memfd), opened by its /proc path as the VMM
/// opens a disk image.
fn disk(read_only: bool) -> Block {
    // SAFETY: memfd_create with a NUL-terminated name returns a new fd.
    let fd = unsafe { libc::memfd_create(c"fuzz-disk".as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: a fresh fd that nothing else owns.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.set_len(64 * SECTOR_SIZE).expect("sized");
    let path = format!("/proc/self/fd/{fd}");
    Block::open(std::path::Path::new(&path), read_only, "fuzz").unwrap_or_else(|_| panic!("open {path}"))
}

fuzz_target!(|data: &[u8]| {
    let read_only = data.first().is_some_and(|c| c & 4 != 0);
    let mut device = disk(read_only);
    virtio_harness::run(&mut device, data, |_| {});
});
