//! The VNC server's client-message parser, on a byte stream: every message
//! it finds, one after the other, as the server reads them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while at < data.len() {
        match kvmos_rfb::parse(&data[at..]) {
            Ok(Some((_, used))) if used > 0 => at += used,
            _ => break,
        }
    }
});
