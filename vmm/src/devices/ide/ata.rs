//! An ATA hard disk on the IDE channel: what guests without virtio drivers
//! (a Windows installer, an old or unusual OS) find and boot from, with the
//! drivers every PC operating system has (`ata_piix`, `pciide`).
//!
//! It takes the PIO command set of ATA-8 ACS that firmware and operating
//! systems use on a disk without DMA: READ/WRITE SECTORS and MULTIPLE, in
//! 28-bit and 48-bit LBA and in CHS, READ VERIFY, FLUSH CACHE, SET
//! MULTIPLE MODE and IDENTIFY DEVICE. The file is the disk; its write cache
//! is the host's page cache, emptied (fsync) by FLUSH CACHE, which
//! IDENTIFY DEVICE tells the guest to send.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// The logical sector.
pub const SECTOR: u64 = 512;
/// The most sectors a DRQ block of READ/WRITE MULTIPLE may hold.
pub const MAX_MULTIPLE: u8 = 16;
/// The CHS geometry IDENTIFY DEVICE reports (what QEMU reports for disks
/// of 504 MiB and more).
const HEADS: u64 = 16;
const SECTORS_PER_TRACK: u64 = 63;

/// The error register's bits for a failed data command.
pub mod error {
    /// Uncorrectable data: the file could not be read or written.
    pub const UNC: u8 = 0x40;
    /// The sector is beyond the disk's end.
    pub const IDNF: u8 = 0x10;
    /// Command aborted (a write to a read-only disk, a bad parameter).
    pub const ABRT: u8 = 0x04;
}

/// One ATA disk: a raw image file.
pub struct AtaDisk {
    file: File,
    sectors: u64,
    read_only: bool,
    /// Sectors per DRQ block for READ/WRITE MULTIPLE (0: not set).
    pub multiple: u8,
    /// For IDENTIFY DEVICE.
    serial: String,
}

impl AtaDisk {
    /// The disk in `file` (its size rounded down to whole sectors; the size
    /// comes from lseek, which every thread's seccomp filter allows).
    pub fn new(mut file: File, read_only: bool, serial: String) -> std::io::Result<Self> {
        use std::io::Seek;
        let sectors = file.seek(std::io::SeekFrom::End(0))? / SECTOR;
        Ok(Self { file, sectors, read_only, multiple: 0, serial })
    }

    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Checks that `count` sectors from `lba` are on the disk.
    pub fn check_range(&self, lba: u64, count: u64) -> Result<(), u8> {
        match lba.checked_add(count) {
            Some(end) if end <= self.sectors => Ok(()),
            _ => Err(error::IDNF),
        }
    }

    /// Reads sector `lba` into `buf` ([`SECTOR`] bytes).
    pub fn read_sector(&self, lba: u64, buf: &mut [u8]) -> Result<(), u8> {
        self.check_range(lba, 1)?;
        self.file.read_exact_at(buf, lba * SECTOR).map_err(|e| {
            tracing::warn!("IDE disk {}: cannot read sector {lba}: {e}", self.serial);
            error::UNC
        })
    }

    /// Writes `buf` ([`SECTOR`] bytes) to sector `lba`.
    pub fn write_sector(&self, lba: u64, buf: &[u8]) -> Result<(), u8> {
        if self.read_only {
            return Err(error::ABRT);
        }
        self.check_range(lba, 1)?;
        self.file.write_all_at(buf, lba * SECTOR).map_err(|e| {
            tracing::warn!("IDE disk {}: cannot write sector {lba}: {e}", self.serial);
            error::UNC
        })
    }

    /// FLUSH CACHE: what was written reaches the disk under the file.
    pub fn flush(&self) -> Result<(), u8> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(|e| {
            tracing::warn!("IDE disk {}: cannot flush: {e}", self.serial);
            error::UNC
        })
    }

    /// The sector a CHS address names (sectors count from 1).
    pub fn chs_to_lba(cylinder: u64, head: u64, sector: u64) -> Option<u64> {
        let sector = sector.checked_sub(1)?;
        Some((cylinder * HEADS + head) * SECTORS_PER_TRACK + sector)
    }

    /// IDENTIFY DEVICE: a fixed disk with LBA and 48-bit LBA, PIO modes up
    /// to 4 and no DMA, READ/WRITE MULTIPLE up to [`MAX_MULTIPLE`] sectors,
    /// a write cache and FLUSH CACHE (EXT).
    pub fn identify(&self) -> Vec<u8> {
        let mut w = [0u16; 256];
        let cylinders = (self.sectors / (HEADS * SECTORS_PER_TRACK)).clamp(1, 16383);
        let chs_sectors = cylinders * HEADS * SECTORS_PER_TRACK;
        w[0] = 1 << 6; // fixed, not removable
        w[1] = cylinders as u16;
        w[3] = HEADS as u16;
        w[6] = SECTORS_PER_TRACK as u16;
        super::channel::put_string(&mut w[10..20], &self.serial);
        super::channel::put_string(&mut w[23..27], "1.0");
        super::channel::put_string(&mut w[27..47], "KVMOS HARDDISK");
        w[47] = 0x8000 | u16::from(MAX_MULTIPLE);
        w[49] = 1 << 9; // LBA; no DMA
        w[50] = 1 << 14;
        w[51] = 2 << 8; // PIO timing mode 2
        w[53] = 1 | 1 << 1; // words 54-58 and 64-70 are valid
        w[54] = cylinders as u16;
        w[55] = HEADS as u16;
        w[56] = SECTORS_PER_TRACK as u16;
        w[57] = chs_sectors as u16;
        w[58] = (chs_sectors >> 16) as u16;
        w[59] = if self.multiple > 0 { 0x100 | u16::from(self.multiple) } else { 0 };
        let lba28 = self.sectors.min(0x0fff_ffff);
        w[60] = lba28 as u16;
        w[61] = (lba28 >> 16) as u16;
        w[64] = 0x3; // PIO modes 3 and 4
        w[65..69].copy_from_slice(&[120; 4]); // cycle times, ns
        w[80] = 0xf0; // ATA/ATAPI-4 to 7
        w[82] = 1 << 14 | 1 << 5; // NOP, a write cache
        w[83] = 1 << 14 | 1 << 13 | 1 << 12 | 1 << 10; // FLUSH CACHE (EXT), 48-bit LBA
        w[84] = 1 << 14;
        w[85] = w[82]; // enabled as supported
        w[86] = w[83] & !(1 << 14);
        w[87] = 1 << 14;
        for (i, word) in w[100..104].iter_mut().enumerate() {
            *word = (self.sectors >> (16 * i)) as u16;
        }
        w.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(sectors: u64, read_only: bool) -> AtaDisk {
        let f = tempfile::tempfile().unwrap();
        f.set_len(sectors * SECTOR + 100).unwrap();
        AtaDisk::new(f, read_only, "QM00001".into()).unwrap()
    }

    fn word(id: &[u8], i: usize) -> u16 {
        u16::from_le_bytes([id[2 * i], id[2 * i + 1]])
    }

    #[test]
    fn identify_describes_a_fixed_lba48_disk_of_the_files_size() {
        let d = disk(3 << 20, false); // 1.5 GiB
        let id = d.identify();
        assert_eq!(id.len(), 512);
        assert_eq!(word(&id, 0), 0x40);
        assert_eq!((word(&id, 1), word(&id, 3), word(&id, 6)), (3120, 16, 63));
        assert_eq!(u32::from(word(&id, 60)) | u32::from(word(&id, 61)) << 16, 3 << 20);
        assert_eq!(word(&id, 100) as u64 | (word(&id, 101) as u64) << 16, 3 << 20);
        assert_ne!(word(&id, 83) & 1 << 10, 0, "48-bit LBA");
        assert_eq!(word(&id, 49) & 1 << 8, 0, "no DMA");
        let model: Vec<u8> = id[54..68].chunks(2).flat_map(|p| [p[1], p[0]]).collect();
        assert_eq!(model, b"KVMOS HARDDISK", "the model, two characters to a word, the first in the high byte");
        // A disk past LBA28 reports the LBA28 maximum and its whole size in LBA48.
        let big = disk(0x1000_0000 + 8, false);
        let id = big.identify();
        assert_eq!(u32::from(word(&id, 60)) | u32::from(word(&id, 61)) << 16, 0x0fff_ffff);
        assert_eq!(word(&id, 1), 16383);
    }

    #[test]
    fn sectors_are_read_and_written_in_range_and_never_on_a_read_only_disk() {
        let d = disk(4, false);
        d.write_sector(3, &[7; 512]).unwrap();
        let mut buf = [0u8; 512];
        d.read_sector(3, &mut buf).unwrap();
        assert_eq!(buf, [7; 512]);
        assert_eq!(d.read_sector(4, &mut buf), Err(error::IDNF), "the partial sector at the end is not a sector");
        assert_eq!(d.check_range(2, 3), Err(error::IDNF));
        assert_eq!(d.check_range(u64::MAX, 2), Err(error::IDNF));
        d.flush().unwrap();
        let ro = disk(4, true);
        assert_eq!(ro.write_sector(0, &[1; 512]), Err(error::ABRT));
        assert_eq!(AtaDisk::chs_to_lba(1, 2, 3), Some((16 + 2) * 63 + 2));
        assert_eq!(AtaDisk::chs_to_lba(0, 0, 0), None, "sector numbers start at 1");
    }
}
