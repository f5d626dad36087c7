//! Guest memory: anonymous mappings laid out around the 32-bit MMIO hole.

use crate::arch::layout::{MMIO_HOLE_END, MMIO_HOLE_START, VGA_WINDOW_END, VGA_WINDOW_START};
use vm_memory::{GuestAddress, GuestMemoryMmap};

pub type GuestMemory = GuestMemoryMmap<()>;

/// The RAM ranges for `size` bytes: below the MMIO hole, and the rest from
/// 4 GiB up.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    if size <= MMIO_HOLE_START {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START as usize),
            (GuestAddress(MMIO_HOLE_END), (size - MMIO_HOLE_START) as usize),
        ]
    }
}

/// The PC machine's RAM ranges: as [`ram_ranges`], but with the legacy
/// VGA window (0xA0000-0xBFFFF) left to devices, as on a PC.
pub fn pc_ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    let mut ranges = vec![(GuestAddress(0), VGA_WINDOW_START as usize)];
    for (start, len) in ram_ranges(size) {
        let end = start.0 + len as u64;
        let start = start.0.max(VGA_WINDOW_END);
        if end > start {
            ranges.push((GuestAddress(start), (end - start) as usize));
        }
    }
    ranges
}

/// Maps `size` bytes of guest RAM (untouched pages cost nothing until the
/// guest writes them).
pub fn create(size: u64) -> Result<GuestMemory, vm_memory::mmap::FromRangesError> {
    GuestMemoryMmap::from_ranges(&ram_ranges(size))
}

/// Maps the PC machine's RAM ([`pc_ram_ranges`]).
pub fn create_pc(size: u64) -> Result<GuestMemory, vm_memory::mmap::FromRangesError> {
    GuestMemoryMmap::from_ranges(&pc_ram_ranges(size))
}

/// The end of RAM below the MMIO hole.
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_HOLE_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_memory_skips_the_mmio_hole() {
        assert_eq!(ram_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_HOLE_START as usize));
        assert_eq!(r[1], (GuestAddress(1 << 32), (1 << 30) as usize));
    }

    #[test]
    fn the_pc_leaves_the_vga_window_out() {
        let r = pc_ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), 0xa_0000));
        assert_eq!(r[1], (GuestAddress(0xc_0000), (MMIO_HOLE_START - 0xc_0000) as usize));
        assert_eq!(r[2], (GuestAddress(1 << 32), (1 << 30) as usize));
    }
}
