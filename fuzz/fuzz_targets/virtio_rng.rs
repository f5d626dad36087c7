//! virtio-rng on random descriptor chains (see virtio_harness).
#![no_main]

#[path = "virtio_harness.rs"]
mod virtio_harness;

use kvmos_vmm::devices::virtio::rng::Rng;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut device = Rng::default();
    virtio_harness::run(&mut device, data, |_| {});
});
