//! x86_64 specifics: the guest address map, CPU state at entry, CPUID,
//! loading the kernel, and the ACPI tables.
pub mod acpi;
pub mod acpi_loader;
pub mod boot;
pub mod cpuid;
pub mod firmware;
pub mod layout;
pub mod regs;
pub mod tsc;
