//! The control API's HTTP request parser, on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Every prefix, as bytes arrive on the socket.
    for end in [data.len() / 3, data.len() / 2, data.len()] {
        let _ = kvmos_vmm::api::parse(&data[..end]);
    }
});
