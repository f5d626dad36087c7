//! Legacy PC devices.
pub mod boot_marker;
pub mod cmos;
pub mod debugcon;
pub mod i8042;
pub mod port92;
pub mod ps2_keyboard;
pub mod ps2_mouse;
pub mod serial;
