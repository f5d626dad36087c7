//! QEMU's ACPI "linker/loader" (`etc/table-loader` in fw_cfg): a list of
//! 128-byte commands that tell the firmware to allocate the table blobs,
//! patch the pointers between them once their addresses are known, and fix
//! the checksums. SeaBIOS and OVMF both run it; OVMF installs no ACPI
//! tables at all without it. The format is QEMU's
//! `hw/acpi/bios-linker-loader.c`.

const COMMAND_LEN: usize = 128;
const ALLOCATE: u32 = 1;
const ADD_POINTER: u32 = 2;
const ADD_CHECKSUM: u32 = 3;
const NAME_LEN: usize = 56;

/// Where an allocated blob goes: anywhere in RAM, or the F segment below
/// 1 MiB, where operating systems scan for the RSDP.
#[derive(Debug, Clone, Copy)]
pub enum Zone {
    High = 1,
    FSeg = 2,
}

#[derive(Default)]
pub struct Loader {
    bytes: Vec<u8>,
}

fn name(file: &str) -> [u8; NAME_LEN] {
    let mut n = [0u8; NAME_LEN];
    let len = file.len().min(NAME_LEN - 1);
    n[..len].copy_from_slice(&file.as_bytes()[..len]);
    n
}

impl Loader {
    fn command(&mut self, kind: u32, body: &[u8]) {
        let mut c = [0u8; COMMAND_LEN];
        c[..4].copy_from_slice(&kind.to_le_bytes());
        c[4..4 + body.len()].copy_from_slice(body);
        self.bytes.extend_from_slice(&c);
    }

    pub fn allocate(&mut self, file: &str, align: u32, zone: Zone) {
        let mut b = name(file).to_vec();
        b.extend_from_slice(&align.to_le_bytes());
        b.push(zone as u8);
        self.command(ALLOCATE, &b);
    }

    /// The `size`-byte little-endian value at `offset` in `dest` is an
    /// offset into `src`; the firmware adds `src`'s address to it.
    pub fn add_pointer(&mut self, dest: &str, src: &str, offset: u32, size: u8) {
        let mut b = name(dest).to_vec();
        b.extend_from_slice(&name(src));
        b.extend_from_slice(&offset.to_le_bytes());
        b.push(size);
        self.command(ADD_POINTER, &b);
    }

    /// The byte at `offset` in `file` becomes the checksum of
    /// `start..start + len` (it must be zero before).
    pub fn add_checksum(&mut self, file: &str, offset: u32, start: u32, len: u32) {
        let mut b = name(file).to_vec();
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&start.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        self.command(ADD_CHECKSUM, &b);
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Runs a loader script the way firmware does, placing each blob at the
/// address `place` picks, so tests can check what a guest would see.
#[cfg(test)]
pub fn run(script: &[u8], blobs: &mut std::collections::HashMap<String, (u64, Vec<u8>)>) {
    let file = |b: &[u8]| String::from_utf8_lossy(b).trim_end_matches('\0').to_string();
    for c in script.chunks(COMMAND_LEN) {
        let kind = u32::from_le_bytes(c[0..4].try_into().unwrap());
        match kind {
            ADD_POINTER => {
                let dest = file(&c[4..60]);
                let src = file(&c[60..116]);
                let offset = u32::from_le_bytes(c[116..120].try_into().unwrap()) as usize;
                let size = c[120] as usize;
                let base = blobs[&src].0;
                let d = &mut blobs.get_mut(&dest).unwrap().1;
                let mut v = [0u8; 8];
                v[..size].copy_from_slice(&d[offset..offset + size]);
                let patched = (u64::from_le_bytes(v) + base).to_le_bytes();
                d[offset..offset + size].copy_from_slice(&patched[..size]);
            }
            ADD_CHECKSUM => {
                let f = file(&c[4..60]);
                let offset = u32::from_le_bytes(c[60..64].try_into().unwrap()) as usize;
                let start = u32::from_le_bytes(c[64..68].try_into().unwrap()) as usize;
                let len = u32::from_le_bytes(c[68..72].try_into().unwrap()) as usize;
                let d = &mut blobs.get_mut(&f).unwrap().1;
                let sum = d[start..start + len].iter().fold(0u8, |a, b| a.wrapping_add(*b));
                d[offset] = d[offset].wrapping_sub(sum);
            }
            _ => {}
        }
    }
}
