//! Video memory: one anonymous mapping that the VMM reads and writes (the
//! legacy VGA window traps here) and that KVM maps into the guest as the
//! linear framebuffer. The guest writes it behind our back, so every access
//! is volatile and bounds-checked.

use std::sync::Arc;
use vm_memory::mmap::MmapRegion;

#[derive(Clone)]
pub struct Vram {
    region: Arc<MmapRegion<()>>,
}

impl std::fmt::Debug for Vram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Vram({} bytes)", self.len())
    }
}

impl Vram {
    /// `size` bytes of zeroed video memory.
    pub fn new(size: usize) -> std::io::Result<Self> {
        let region = MmapRegion::<()>::new(size).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Self { region: Arc::new(region) })
    }

    pub fn len(&self) -> usize {
        self.region.size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The host address KVM maps into the guest.
    pub fn host_addr(&self) -> u64 {
        self.region.as_ptr() as u64
    }

    pub fn byte(&self, at: usize) -> u8 {
        if at >= self.len() {
            return 0xFF;
        }
        // SAFETY: `at` is inside the live mapping.
        unsafe { std::ptr::read_volatile(self.region.as_ptr().add(at)) }
    }

    pub fn set_byte(&self, at: usize, value: u8) {
        if at < self.len() {
            // SAFETY: `at` is inside the live mapping.
            unsafe { std::ptr::write_volatile(self.region.as_ptr().add(at), value) }
        }
    }

    /// Four bytes (the four planes of one VGA address), little-endian.
    pub fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes([self.byte(at), self.byte(at + 1), self.byte(at + 2), self.byte(at + 3)])
    }

    pub fn set_u32(&self, at: usize, value: u32) {
        for (i, b) in value.to_le_bytes().into_iter().enumerate() {
            self.set_byte(at + i, b);
        }
    }

    /// Copies `out.len()` bytes from `at` (0xFF past the end).
    pub fn read(&self, at: usize, out: &mut [u8]) {
        let end = at.saturating_add(out.len()).min(self.len());
        let n = end.saturating_sub(at);
        if n > 0 {
            // SAFETY: [at, at+n) is inside the mapping; a racing guest
            // write can only change the bytes we copy.
            unsafe { std::ptr::copy_nonoverlapping(self.region.as_ptr().add(at), out.as_mut_ptr(), n) };
        }
        out[n..].fill(0xFF);
    }

    /// Fills `len` bytes from `at` with `value`.
    pub fn fill(&self, at: usize, len: usize, value: u8) {
        let end = at.saturating_add(len).min(self.len());
        if end > at {
            // SAFETY: [at, end) is inside the mapping.
            unsafe { std::ptr::write_bytes(self.region.as_ptr().add(at), value, end - at) };
        }
    }
}
