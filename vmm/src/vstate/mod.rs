//! The state of a running VM: its memory, the KVM VM, and its vCPUs.
pub mod irq_routing;
pub mod memory;
pub mod vcpu;
pub mod vm;
