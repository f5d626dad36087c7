//! The i8042 with its PS/2 keyboard and mouse: a guest's port accesses
//! (commands, command bytes, data to the devices) mixed with keys and
//! mouse movement from the host side (VNC).
#![no_main]

#[path = "port_ops.rs"]
mod port_ops;

use kvmos_vmm::devices::bus::BusDevice;
use kvmos_vmm::devices::legacy::i8042::I8042;
use kvmos_vmm::exit::ExitSignal;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let exit = Arc::new(ExitSignal::new().expect("eventfd"));
    let mut dev = I8042::new(exit, Box::new(|_, _| {}), true);
    // Offsets 0 to 4 are ports 0x60 to 0x64; 5 and 6 are the host typing
    // a key and moving the mouse.
    for mut a in port_ops::accesses(data, 7) {
        let v = a.bytes[0];
        match a.offset {
            5 => dev.key(v & 0x7f, v & 0x80 == 0),
            6 => dev.mouse_movement(i32::from(v as i8), -i32::from(v as i8), i32::from(v & 1), v & 7),
            port if a.write => dev.write(port, &a.bytes),
            port => dev.read(port, &mut a.bytes),
        }
    }
});
