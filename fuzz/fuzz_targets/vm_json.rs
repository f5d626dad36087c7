//! vm.json: parsing, then every check the VMM makes before a VM runs.
#![no_main]

use kvmos_vmm::config::{HostLimits, Validate, VmConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = VmConfig::from_json(text) {
        let _ = config.validate(&HostLimits { max_vcpus: 8, available_mib: 4096 });
        let _ = config.to_json();
    }
});
