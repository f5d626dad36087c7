//! The IDE channel with an ATAPI CD-ROM: a guest's accesses to the command
//! and control blocks (task file, PACKET commands and their 12 bytes, PIO
//! data of any length, resets, drive selection), mixed with the host
//! ejecting and putting in media, on a small medium in a memory file.
#![no_main]

#[path = "port_ops.rs"]
mod port_ops;

use kvmos_vmm::devices::bus::BusDevice;
use kvmos_vmm::devices::ide::atapi::{Cdrom, Medium, SECTOR};
use kvmos_vmm::devices::ide::channel::{Channel, CommandBlock, ControlBlock};
use libfuzzer_sys::fuzz_target;
use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex};

/// A medium of `sectors` sectors in a memory file.
fn medium(sectors: u64) -> Medium {
    // SAFETY: memfd_create with a NUL-terminated name; the fd is owned by the File.
    let fd = unsafe { libc::memfd_create(c"cd".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: fd was just created and is not used elsewhere.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.set_len(sectors * SECTOR).expect("set_len");
    Medium::new(file, "fuzz.iso".into()).expect("medium")
}

fuzz_target!(|data: &[u8]| {
    let channel = Channel::new(Some(Cdrom::new(Some(medium(8)), "fuzz".into())), None, Box::new(|_| {}));
    let channel = Arc::new(Mutex::new(channel));
    let mut cmd = CommandBlock(Arc::clone(&channel));
    let mut ctl = ControlBlock(Arc::clone(&channel));
    // Offsets 0-7: the command block; 8: the control block; 9: a string
    // read of the data port (`rep insw`) of up to 64 KiB; 10: the host
    // ejects (even value) or puts in a medium of up to 255 sectors.
    for mut a in port_ops::accesses(data, 11) {
        let v = u32::from_le_bytes([a.bytes[0], *a.bytes.get(1).unwrap_or(&0), 0, 0]);
        match a.offset {
            8 if a.write => ctl.write(0, &a.bytes),
            8 => ctl.read(0, &mut a.bytes),
            9 => {
                let mut buf = vec![0u8; (v as usize % 65536) & !1];
                cmd.read(0, &mut buf);
            }
            10 => {
                let mut c = channel.lock().unwrap();
                let drive = c.drive_mut(0).expect("the master");
                if v & 1 == 0 {
                    drive.eject();
                } else {
                    drive.insert(medium(u64::from(v >> 1) % 256));
                }
            }
            port if a.write => cmd.write(port, &a.bytes),
            port => cmd.read(port, &mut a.bytes),
        }
    }
});
