//! The flash chip OVMF keeps its UEFI variables in: an Intel-style CFI
//! flash in the command set QEMU's `pflash_cfi01` models, with the bytes
//! written through to the VM's own variable file, so boot entries survive
//! a restart.
//!
//! Reads in read-array mode come straight from memory (a read-only KVM
//! slot over the same bytes); writes exit to this device, which runs the
//! command state machine: byte program (0x10/0x40), block erase (0x20 then
//! 0xD0), clear status (0x50), read status (0x70) and read array (0xFF).
//! While the chip must answer reads itself (status mode), the slot is taken
//! away so that reads exit here too, as QEMU leaves "romd" mode.
//!
//! OVMF's probe (`QemuFlashDetected`) writes clear-status, reads the array
//! back, writes read-status and expects a cleared status (0x00): that tells
//! it the variable store is real flash. Without this device it would keep
//! the variables in RAM and forget them at every boot.

use crate::devices::bus::BusDevice;
use crate::vstate::vm::RomSlot;
use kvm_ioctls::VmFd;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

const PROGRAM: u8 = 0x10;
const PROGRAM_ALT: u8 = 0x40;
const ERASE: u8 = 0x20;
const CLEAR_STATUS: u8 = 0x50;
const READ_STATUS: u8 = 0x70;
const ERASE_CONFIRM: u8 = 0xd0;
const READ_ARRAY: u8 = 0xff;
/// Status: the write state machine is ready.
const STATUS_READY: u8 = 0x80;
/// Status: an erase or program failed (a bad command sequence).
const STATUS_ERROR: u8 = 0x30;
/// The erase block size QEMU's PC flash uses, which OVMF is built for.
pub const BLOCK_SIZE: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    ReadArray,
    ReadStatus,
    /// The next write is the byte to program.
    Program,
    /// The next write must confirm the erase.
    Erase,
}

pub struct Flash {
    rom: RomSlot,
    vm: Arc<VmFd>,
    file: File,
    mode: Mode,
    status: u8,
    /// Bytes written to the file since the last sync.
    dirty: bool,
}

impl Flash {
    /// `rom` is the slot holding the file's bytes; `file` is the VM's
    /// variable store, opened for writing.
    pub fn new(rom: RomSlot, vm: Arc<VmFd>, file: File) -> Self {
        Self { rom, vm, file, mode: Mode::ReadArray, status: 0, dirty: false }
    }

    fn len(&self) -> u64 {
        self.rom.memory.size() as u64
    }

    fn byte(&self, offset: u64) -> u8 {
        if offset >= self.len() {
            return 0xff;
        }
        // SAFETY: in bounds of the mapping, which `self.rom` keeps alive.
        unsafe { *self.rom.memory.as_ptr().add(offset as usize) }
    }

    fn store(&mut self, offset: u64, bytes: &[u8]) {
        let end = offset + bytes.len() as u64;
        if end > self.len() {
            return;
        }
        // SAFETY: in bounds, as checked; the guest sees these bytes through
        // a read-only slot, so only this device writes them.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.rom.memory.as_ptr().add(offset as usize), bytes.len())
        };
        if let Err(e) = self.file.write_all_at(bytes, offset) {
            tracing::warn!("UEFI variables: cannot write the variable file: {e}");
            self.status |= STATUS_ERROR;
        }
        self.dirty = true;
    }

    fn set_mode(&mut self, mode: Mode) {
        let was_memory = self.mode != Mode::ReadStatus;
        let is_memory = mode != Mode::ReadStatus;
        self.mode = mode;
        if was_memory != is_memory {
            if let Err(e) = self.rom.set_present(&self.vm, is_memory) {
                tracing::warn!("UEFI variables: cannot switch the flash's read mode: {e}");
            }
        }
        if mode == Mode::ReadArray && self.dirty {
            self.dirty = false;
            if let Err(e) = self.file.sync_data() {
                tracing::warn!("UEFI variables: cannot sync the variable file: {e}");
            }
        }
    }

    fn command(&mut self, offset: u64, value: u8) {
        match (self.mode, value) {
            (Mode::Program, v) => {
                self.store(offset, &[v]);
                self.status |= STATUS_READY;
                self.set_mode(Mode::ReadArray);
            }
            (Mode::Erase, ERASE_CONFIRM) => {
                let start = offset - offset % BLOCK_SIZE;
                self.store(start, &vec![0xff; BLOCK_SIZE.min(self.len() - start) as usize]);
                self.status |= STATUS_READY;
                self.set_mode(Mode::ReadArray);
            }
            (Mode::Erase, _) => {
                self.status |= STATUS_ERROR | STATUS_READY;
                self.set_mode(Mode::ReadStatus);
            }
            (_, PROGRAM | PROGRAM_ALT) => self.set_mode(Mode::Program),
            (_, ERASE) => self.set_mode(Mode::Erase),
            (_, CLEAR_STATUS) => {
                self.status = 0;
                self.set_mode(Mode::ReadArray);
            }
            (_, READ_STATUS) => self.set_mode(Mode::ReadStatus),
            (_, READ_ARRAY) => self.set_mode(Mode::ReadArray),
            (_, other) => {
                tracing::debug!("UEFI variables: flash command {other:#x} not modelled; back to read-array mode");
                self.set_mode(Mode::ReadArray);
            }
        }
    }
}

impl BusDevice for Flash {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = match self.mode {
                Mode::ReadStatus => self.status,
                _ => self.byte(offset + i as u64),
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // The chip is 8 bits wide: a wider write carries its command or
        // data in the low byte.
        if let Some(&v) = data.first() {
            self.command(offset, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::vm::Vm;

    fn flash(dir: &std::path::Path) -> (Flash, std::path::PathBuf, Vm) {
        let mut image = vec![0x5au8; 4 * BLOCK_SIZE as usize];
        image[0] = 0; // the probe skips bytes that look like commands
        let path = dir.join("VARS.fd");
        std::fs::write(&path, &image).unwrap();
        let mut vm = Vm::new(crate::vstate::memory::create(1 << 20).unwrap()).unwrap();
        let rom = vm.map_rom(0xffc0_0000, &image).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        (Flash::new(rom, Arc::clone(&vm.fd), file), path, vm)
    }

    fn read(f: &mut Flash, offset: u64) -> u8 {
        let mut b = [0u8];
        f.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn ovmf_detects_flash_and_writes_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut f, path, _vm) = flash(dir.path());
        // OVMF's QemuFlashDetected at the first byte that is not a command.
        let original = read(&mut f, 1);
        f.write(1, &[CLEAR_STATUS]);
        assert_eq!(read(&mut f, 1), original, "not RAM: the array reads back");
        f.write(1, &[READ_STATUS]);
        assert_eq!(read(&mut f, 1), 0, "a cleared status: this is flash");
        f.write(1, &[READ_ARRAY]);
        assert_eq!(read(&mut f, 1), original);

        // QemuFlashWrite: program two bytes, then read array.
        f.write(0x1005, &[PROGRAM]);
        f.write(0x1005, &[0xab]);
        f.write(0x1006, &[PROGRAM]);
        f.write(0x1006, &[0xcd]);
        f.write(0x1006, &[READ_ARRAY]);
        assert_eq!((read(&mut f, 0x1005), read(&mut f, 0x1006)), (0xab, 0xcd));
        let file = std::fs::read(&path).unwrap();
        assert_eq!(&file[0x1005..0x1007], &[0xab, 0xcd], "written through to the file");

        // QemuFlashEraseBlock: the whole 4 KiB block reads 0xFF, in the file too.
        f.write(0x1000, &[ERASE]);
        f.write(0x1000, &[ERASE_CONFIRM]);
        f.write(0x1000, &[READ_STATUS]);
        assert_eq!(read(&mut f, 0x1000) & STATUS_READY, STATUS_READY);
        f.write(0x1000, &[READ_ARRAY]);
        let file = std::fs::read(&path).unwrap();
        assert!(file[0x1000..0x2000].iter().all(|&b| b == 0xff));
        assert_eq!(file[0x2000], 0x5a, "the next block is untouched");
    }

    #[test]
    fn garbage_commands_and_out_of_range_writes_do_no_harm() {
        let dir = tempfile::tempdir().unwrap();
        let (mut f, path, _vm) = flash(dir.path());
        for (i, v) in [0x98u8, 0x90, 0x00, 0x20, 0x99, 0x10].iter().enumerate() {
            f.write(i as u64, &[*v]);
        }
        // The program command above takes this write as its data, past the end.
        f.write(1 << 30, &[0x11]);
        f.write(0, &[READ_ARRAY]);
        let file = std::fs::read(&path).unwrap();
        assert_eq!(file.len(), 4 * BLOCK_SIZE as usize);
        assert!(file[1..].iter().all(|&b| b == 0x5a), "nothing was programmed or erased");
    }
}
