//! The IDE channel with an ATAPI CD-ROM (master) and an ATA hard disk
//! (slave): a guest's accesses to the command and control blocks (task
//! file, PACKET commands and their 12 bytes, disk reads and writes in
//! LBA28, LBA48 and CHS, PIO data of any length both ways, resets, drive
//! selection), mixed with the host ejecting and putting in media, on a
//! small medium and disk in memory files.
#![no_main]

#[path = "port_ops.rs"]
mod port_ops;

use kvmos_vmm::devices::bus::BusDevice;
use kvmos_vmm::devices::ide::ata::AtaDisk;
use kvmos_vmm::devices::ide::atapi::{Cdrom, Medium, SECTOR};
use kvmos_vmm::devices::ide::channel::{Channel, CommandBlock, ControlBlock, Drive};
use libfuzzer_sys::fuzz_target;
use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex};

/// A memory file of `len` bytes.
fn memory_file(len: u64) -> std::fs::File {
    // SAFETY: memfd_create with a NUL-terminated name; the fd is owned by the File.
    let fd = unsafe { libc::memfd_create(c"ide".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: fd was just created and is not used elsewhere.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.set_len(len).expect("set_len");
    file
}

/// A medium of `sectors` sectors in a memory file.
fn medium(sectors: u64) -> Medium {
    Medium::new(memory_file(sectors * SECTOR), "fuzz.iso".into()).expect("medium")
}

fuzz_target!(|data: &[u8]| {
    let cdrom = Drive::Cdrom(Cdrom::new(Some(medium(8)), "fuzz".into()));
    let disk = Drive::Disk(AtaDisk::new(memory_file(64 * 512), false, "fuzz".into()).expect("disk"));
    let channel = Channel::new(Some(cdrom), Some(disk), Box::new(|_| {}));
    let channel = Arc::new(Mutex::new(channel));
    let mut cmd = CommandBlock(Arc::clone(&channel));
    let mut ctl = ControlBlock(Arc::clone(&channel));
    // Offsets 0-7: the command block; 8: the control block; 9: a string
    // read of the data port (`rep insw`) of up to 64 KiB; 10: the host
    // ejects (even value) or puts in a medium of up to 255 sectors; 11: a
    // string write of the data port (`rep outsw`) of up to 64 KiB.
    for mut a in port_ops::accesses(data, 12) {
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
                let drive = c.cdrom_mut(0).expect("the master");
                if v & 1 == 0 {
                    drive.eject();
                } else {
                    drive.insert(medium(u64::from(v >> 1) % 256));
                }
            }
            11 => cmd.write(0, &vec![a.bytes[0]; (v as usize % 65536) & !1]),
            port if a.write => cmd.write(port, &a.bytes),
            port => cmd.read(port, &mut a.bytes),
        }
    }
});
