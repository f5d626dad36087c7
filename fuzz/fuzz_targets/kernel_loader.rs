//! The kernel loader on arbitrary files: ELF (with and without the PVH
//! note) and bzImage, into 64 MiB of guest memory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};

fuzz_target!(|data: &[u8]| {
    // SAFETY: memfd_create with a NUL-terminated name returns a new fd.
    let fd = unsafe { libc::memfd_create(c"fuzz-kernel".as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: a fresh fd that nothing else owns.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(data).expect("written");
    let mem = kvmos_vmm::vstate::memory::create(64 << 20).expect("guest memory");
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let _ = kvmos_vmm::arch::boot::load_kernel(&mem, std::path::Path::new(&path));
});
