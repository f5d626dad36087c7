//! The boot-time marker: a guest writes any byte to
//! [`crate::arch::layout::BOOT_MARKER_PORT`] when its init runs, and the VMM
//! records (and logs) the time since its own start, as Firecracker's boot
//! timer does. From a shell: `printf x | dd of=/dev/port bs=1 seek=1088`.

use crate::devices::bus::BusDevice;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub struct BootMarker {
    start: Instant,
    /// Microseconds from VMM start to the first write; 0 until then.
    pub marked_us: Arc<AtomicU64>,
}

impl BootMarker {
    pub fn new(start: Instant, marked_us: Arc<AtomicU64>) -> Self {
        Self { start, marked_us }
    }
}

impl BusDevice for BootMarker {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {
        let us = self.start.elapsed().as_micros().max(1) as u64;
        if self.marked_us.compare_exchange(0, us, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            tracing::info!(
                boot_ms = us as f64 / 1000.0,
                "guest boot marker: {:.1} ms after VMM start",
                us as f64 / 1000.0
            );
        }
    }
}
