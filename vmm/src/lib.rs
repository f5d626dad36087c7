//! kvmos-vmm runs one virtual machine per process on KVM, built on the
//! rust-vmm crates. This is the library behind the `kvmos-vmm` binary.
//!
//! - [`config`]: the typed VM configuration and its validation;
//! - [`arch`]: the x86_64 address map, CPU state at entry, CPUID, kernel
//!   loading and ACPI tables;
//! - [`vstate`]: guest memory, the KVM VM and its vCPUs;
//! - [`devices`]: the I/O and MMIO buses, the legacy PC devices (serial,
//!   i8042 with PS/2 keyboard and mouse, boot marker), ACPI power
//!   management, the display;
//! - [`console`]: the serial console's ring buffer and clients;
//! - [`exit`]: why a VM stopped, and the exit codes;
//! - [`tap`]: TAP devices, the host end of a VM's NIC;
//! - [`tiny_guest`]: a hand-assembled guest for tests where Linux cannot run;
//! - [`api`]: the control API on a Unix socket;
//! - [`jail`] and [`seccomp`]: the jail every VMM runs in (namespaces, an
//!   empty root, its own user, a cgroup) and each thread's seccomp filter;
//! - [`vnc`]: the VNC server for the screen, keyboard and mouse;
//! - [`builder`] builds a VM top to bottom and [`runner`] runs it;
//! - [`timeline`]: when each start-up step ended, at debug level.

pub mod api;
pub mod arch;
pub mod builder;
pub mod config;
pub mod console;
pub mod devices;
pub mod exit;
pub mod jail;
pub mod runner;
pub mod seccomp;
#[cfg(test)]
mod test_util;
pub use kvmos_tap as tap;
pub mod timeline;
pub mod tiny_guest;
pub mod vnc;
pub mod vstate;
