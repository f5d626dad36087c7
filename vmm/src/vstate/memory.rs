//! Guest memory: anonymous mappings laid out around the 32-bit MMIO hole.
//!
//! Each RAM range is mapped at a 2 MiB-aligned host address, as QEMU maps
//! its RAM. Guest-physical 2 MiB blocks then fall on host 2 MiB blocks, so
//! a host with transparent huge pages backs them with huge pages and KVM
//! can map them into the guest as 2 MiB pages: far fewer faults while the
//! guest first touches its memory, and fewer TLB misses after. vm-memory
//! maps at any page-aligned address, so the mapping is made here and owned
//! by [`AlignedMapping`], which rides in the region's bitmap slot and
//! unmaps it when the last reference to the region goes.

use crate::arch::layout::{MMIO_HOLE_END, MMIO_HOLE_START, VGA_WINDOW_END, VGA_WINDOW_START};
use vm_memory::bitmap::{Bitmap, WithBitmapSlice};
use vm_memory::mmap::{FromRangesError, MmapRegionBuilder, MmapRegionError};
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

pub type GuestMemory = GuestMemoryMmap<AlignedMapping>;

/// The host alignment of guest RAM: an x86 huge page.
pub const HOST_ALIGN: usize = 2 << 20;

/// An anonymous mapping at a [`HOST_ALIGN`]ed address, unmapped on drop.
/// As a vm-memory `Bitmap` it tracks nothing (slices are `()`): it only
/// ties the mapping's lifetime to the region that uses it.
#[derive(Debug)]
pub struct AlignedMapping {
    addr: usize,
    len: usize,
}

impl AlignedMapping {
    /// Maps `len` bytes (a multiple of the page size) of private anonymous
    /// memory, reserved lazily, at a 2 MiB-aligned address.
    pub fn new(len: usize) -> std::io::Result<Self> {
        let span = len.checked_add(HOST_ALIGN).ok_or_else(|| std::io::Error::other("guest memory too large"))?;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // SAFETY: a new anonymous mapping at an address the kernel picks;
        // nothing else refers to it.
        let start = unsafe { libc::mmap(std::ptr::null_mut(), span, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) };
        if start == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let start = start as usize;
        let addr = (start + HOST_ALIGN - 1) & !(HOST_ALIGN - 1);
        let (head, tail) = (addr - start, span - (addr - start) - len);
        // SAFETY: both ranges lie inside the mapping just made, outside
        // [addr, addr + len), and nothing refers to them.
        unsafe {
            if head > 0 {
                libc::munmap(start as *mut libc::c_void, head);
            }
            if tail > 0 {
                libc::munmap((addr + len) as *mut libc::c_void, tail);
            }
        }
        Ok(Self { addr, len })
    }

    /// A guest RAM region at `base` over this mapping.
    fn into_region(self, base: GuestAddress) -> Result<GuestRegionMmap<AlignedMapping>, FromRangesError> {
        let (addr, len) = (self.addr as *mut u8, self.len);
        // SAFETY: [addr, addr + len) is the mapping `self` owns, and `self`
        // moves into the region as its bitmap, so the mapping lives exactly
        // as long as the region.
        let builder = unsafe {
            MmapRegionBuilder::new_with_bitmap(len, self)
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
                .with_raw_mmap_pointer(addr)
        };
        let region = builder.build().map_err(FromRangesError::MmapRegion)?;
        GuestRegionMmap::new(region, base).ok_or(FromRangesError::InvalidGuestRegion)
    }
}

impl Drop for AlignedMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `new` and is only reachable through
        // the region that owned `self`, which is being dropped.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

impl WithBitmapSlice<'_> for AlignedMapping {
    type S = ();
}

impl Bitmap for AlignedMapping {
    fn mark_dirty(&self, _offset: usize, _len: usize) {}

    fn dirty_at(&self, _offset: usize) -> bool {
        false
    }

    fn slice_at(&self, _offset: usize) {}
}

/// Guest memory over `ranges`, each in an [`AlignedMapping`].
fn from_ranges(ranges: &[(GuestAddress, usize)]) -> Result<GuestMemory, FromRangesError> {
    let regions = ranges
        .iter()
        .map(|&(base, len)| {
            AlignedMapping::new(len)
                .map_err(|e| FromRangesError::MmapRegion(MmapRegionError::Mmap(e)))?
                .into_region(base)
        })
        .collect::<Result<Vec<_>, _>>()?;
    GuestMemoryMmap::from_regions(regions).map_err(FromRangesError::Collection)
}

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
pub fn create(size: u64) -> Result<GuestMemory, FromRangesError> {
    from_ranges(&ram_ranges(size))
}

/// Maps the PC machine's RAM ([`pc_ram_ranges`]).
pub fn create_pc(size: u64) -> Result<GuestMemory, FromRangesError> {
    from_ranges(&pc_ram_ranges(size))
}

/// The end of RAM below the MMIO hole.
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_HOLE_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `addr` lies in a mapping of this process.
    fn mapped(addr: usize) -> bool {
        std::fs::read_to_string("/proc/self/maps").unwrap().lines().any(|l| {
            let range = l.split_whitespace().next().unwrap();
            let (a, b) = range.split_once('-').unwrap();
            let (a, b) = (usize::from_str_radix(a, 16).unwrap(), usize::from_str_radix(b, 16).unwrap());
            (a..b).contains(&addr)
        })
    }

    #[test]
    fn guest_ram_sits_on_huge_page_boundaries_and_is_unmapped_with_its_last_user() {
        use vm_memory::{Bytes, GuestMemoryBackend as _, GuestMemoryRegion};
        let mem = create(6 << 20).unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap() as usize;
        assert!(host.is_multiple_of(HOST_ALIGN), "host address {host:#x}");
        assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), 6 << 20);
        mem.write_obj(0xA5u8, GuestAddress((6 << 20) - 1)).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress((6 << 20) - 1)).unwrap(), 0xA5);
        let pc = create_pc(8 << 20).unwrap();
        assert!(pc.iter().all(|r| (pc.get_host_address(r.start_addr()).unwrap() as usize).is_multiple_of(HOST_ALIGN)));

        let copy = mem.clone();
        drop(mem);
        assert!(mapped(host), "a clone still uses the memory");
        drop(copy);
        assert!(!mapped(host), "the mapping outlived its last user");
    }

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
