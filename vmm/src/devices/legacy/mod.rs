//! Legacy PC devices.
pub mod boot_marker;
pub mod i8042;
pub mod serial;
