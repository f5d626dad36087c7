//! The CPUID a vCPU sees: KVM's supported set (which includes the KVM
//! paravirtual leaves, so the guest finds kvm-clock), with the topology and
//! APIC IDs normalised so every vCPU describes one socket of `count`
//! single-threaded cores and knows its own ID, and the TSC-deadline timer
//! shown when KVM emulates it (KVM leaves that bit to the VMM, as QEMU and
//! Firecracker set it): a guest that has it programs its local APIC timer
//! in TSC ticks and skips calibrating that timer at boot.

use kvm_bindings::CpuId;
use kvm_ioctls::{Cap, Kvm};

/// Leaf 1 ECX bit 31: "running under a hypervisor".
const HYPERVISOR_BIT: u32 = 1 << 31;
/// Leaf 1 EDX bit 28: HTT, the logical-processor count in EBX is valid.
const HTT_BIT: u32 = 1 << 28;
/// Leaf 1 ECX bit 24: the local APIC timer has TSC-deadline mode.
const TSC_DEADLINE_BIT: u32 = 1 << 24;

/// What this host's KVM offers a guest.
pub struct HostCpuid {
    pub supported: CpuId,
    /// KVM emulates the TSC-deadline timer (`KVM_CAP_TSC_DEADLINE_TIMER`).
    pub tsc_deadline: bool,
}

impl HostCpuid {
    pub fn of(kvm: &Kvm) -> Result<Self, kvm_ioctls::Error> {
        Ok(Self {
            supported: kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)?,
            tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
        })
    }
}

/// Adjusts a copy of the supported CPUID for vCPU `index` of `count`.
pub fn for_vcpu(host: &HostCpuid, index: u8, count: u8) -> CpuId {
    let mut cpuid = host.supported.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            0x1 => {
                // APIC ID in EBX[31:24], logical processors in EBX[23:16],
                // CLFLUSH size (8 × 8 bytes) in EBX[15:8].
                e.ebx = (u32::from(index) << 24) | (u32::from(count) << 16) | (8 << 8);
                e.ecx |= HYPERVISOR_BIT;
                if host.tsc_deadline {
                    e.ecx |= TSC_DEADLINE_BIT;
                }
                if count > 1 {
                    e.edx |= HTT_BIT;
                } else {
                    e.edx &= !HTT_BIT;
                }
            }
            0x4 => {
                // Deterministic cache parameters: cores per package - 1 in
                // EAX[31:26]; each cache shared by one thread.
                e.eax = (e.eax & 0x03ff_c0ff & !(0x3f << 26)) | ((u32::from(count).saturating_sub(1) & 0x3f) << 26);
            }
            0xb | 0x1f => {
                // Extended topology: level 0 = SMT (1 thread), level 1 = core.
                let shift = bits_for(count);
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = shift;
                        e.ebx = u32::from(count);
                        e.ecx = (2 << 8) | 1;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
                e.edx = u32::from(index);
            }
            _ => {}
        }
    }
    cpuid
}

/// Bits needed to number `n` cores (the shift to the package ID).
fn bits_for(n: u8) -> u32 {
    let n = u32::from(n.max(1));
    32 - (n - 1).leading_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn topology_and_apic_ids_are_per_vcpu() {
        let entries = [
            kvm_cpuid_entry2 { function: 1, edx: HTT_BIT, ..Default::default() },
            kvm_cpuid_entry2 { function: 0xb, index: 0, ..Default::default() },
            kvm_cpuid_entry2 { function: 0xb, index: 1, ..Default::default() },
        ];
        let host = HostCpuid { supported: CpuId::from_entries(&entries).unwrap(), tsc_deadline: true };
        let c = for_vcpu(&host, 2, 4);
        let s = c.as_slice();
        assert_eq!(s[0].ebx >> 24, 2, "APIC ID");
        assert_eq!((s[0].ebx >> 16) & 0xff, 4, "logical processors");
        assert_ne!(s[0].ecx & HYPERVISOR_BIT, 0);
        assert_ne!(s[0].ecx & TSC_DEADLINE_BIT, 0, "KVM emulates the TSC-deadline timer");
        assert_eq!(s[2].ebx, 4, "cores at the core level");
        assert_eq!(s[2].eax, 2, "shift for 4 cores");
        assert_eq!(s[1].edx, 2, "x2APIC ID");
        let single = for_vcpu(&host, 0, 1);
        assert_eq!(single.as_slice()[0].edx & HTT_BIT, 0);
        let without = HostCpuid { tsc_deadline: false, ..host };
        assert_eq!(for_vcpu(&without, 0, 1).as_slice()[0].ecx & TSC_DEADLINE_BIT, 0);
    }

    #[test]
    fn shift_widths() {
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(3), 2);
        assert_eq!(bits_for(8), 3);
    }
}
