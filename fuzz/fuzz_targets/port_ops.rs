//! What the port-device targets share: the input is a list of accesses a
//! guest makes, 7 bytes each: a kind (read or write, and the width: 1, 2
//! or 4 bytes), the offset within the device's ports, and a value.

// Each target includes this and uses its part.
#![allow(dead_code)]

use kvmos_vmm::devices::bus::BusDevice;

/// One access.
pub struct Access {
    pub write: bool,
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// The accesses in `data`, offsets below `span`.
pub fn accesses(data: &[u8], span: u64) -> impl Iterator<Item = Access> + '_ {
    data.chunks_exact(7).map(move |c| {
        let width = [1usize, 2, 4][usize::from(c[0] >> 1) % 3];
        let value = u32::from_le_bytes([c[3], c[4], c[5], c[6]]).to_le_bytes();
        Access { write: c[0] & 1 == 1, offset: u64::from(u16::from_le_bytes([c[1], c[2]])) % span, bytes: value[..width].to_vec() }
    })
}

/// Makes the accesses on `device`.
pub fn drive(device: &mut dyn BusDevice, data: &[u8], span: u64) {
    for mut a in accesses(data, span) {
        if a.write {
            device.write(a.offset, &a.bytes);
        } else {
            device.read(a.offset, &mut a.bytes);
        }
    }
}
