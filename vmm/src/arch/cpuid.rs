//! The CPUID a vCPU sees: KVM's supported set (which includes the KVM
//! paravirtual leaves, so the guest finds kvm-clock), normalised the way
//! Firecracker normalises it, so a guest learns what it needs and no more
//! of the host:
//!
//! - topology and APIC IDs: every vCPU describes one socket of `count`
//!   single-threaded cores and knows its own ID (leaves 1, 4, 0xB, 0x1F;
//!   on AMD 0x80000008, 0x8000001D, 0x8000001E). Newer KVMs leave the core
//!   level of leaves 0xB and 0x1F out; it is added.
//! - the TSC-deadline timer shown when KVM emulates it (KVM leaves that
//!   bit to the VMM, as QEMU and Firecracker set it): a guest that has it
//!   programs its local APIC timer in TSC ticks and skips calibrating that
//!   timer at boot.
//! - the brand string: a generic one per vendor ("Intel(R) Xeon(R)
//!   Processor", with the host's frequency if its brand names one, or "AMD
//!   EPYC"), not the host's model.
//! - what a guest must not use or cannot use well on a shared host: the
//!   turbo and energy-bias controls (leaf 6), WAITPKG (user-mode waits that
//!   idle the physical core), the performance-monitoring leaf 0xA and
//!   IA32_PERF_CAPABILITIES on Intel, and IA32_ARCH_CAPABILITIES on AMD,
//!   which AMD processors do not have.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

/// Leaf 1 ECX bit 31: "running under a hypervisor".
const HYPERVISOR_BIT: u32 = 1 << 31;
/// Leaf 1 EDX bit 28: HTT, the logical-processor count in EBX is valid.
const HTT_BIT: u32 = 1 << 28;
/// Leaf 1 ECX bit 24: the local APIC timer has TSC-deadline mode.
const TSC_DEADLINE_BIT: u32 = 1 << 24;
/// Leaf 1 ECX bit 15: PDCM, IA32_PERF_CAPABILITIES exists.
const PDCM_BIT: u32 = 1 << 15;
/// Leaf 6 EAX bit 1: turbo boost; ECX bit 3: energy-performance bias.
const TURBO_BIT: u32 = 1 << 1;
const EPB_BIT: u32 = 1 << 3;
/// Leaf 7.0 ECX bit 5: WAITPKG (UMONITOR, UMWAIT, TPAUSE).
const WAITPKG_BIT: u32 = 1 << 5;
/// Leaf 7.0 EBX bits 6 and 13: the x87 FPU's data pointer is updated only
/// on exceptions, and its CS and DS are deprecated (set for guests as the
/// kernel documents).
const FDP_EXCPTN_ONLY_BIT: u32 = 1 << 6;
const FPU_CSDS_DEPRECATED_BIT: u32 = 1 << 13;
/// Leaf 7.0 EDX bit 29: IA32_ARCH_CAPABILITIES exists.
const ARCH_CAPABILITIES_BIT: u32 = 1 << 29;

/// The brand-string leaves.
const BRAND_LEAVES: std::ops::RangeInclusive<u32> = 0x8000_0002..=0x8000_0004;
const BRAND_LEN: usize = 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vendor {
    Intel,
    Amd,
    Other,
}

impl Vendor {
    /// From leaf 0's EBX, EDX, ECX ("GenuineIntel", "AuthenticAMD").
    fn of(entries: &[kvm_cpuid_entry2]) -> Self {
        let Some(e) = entries.iter().find(|e| e.function == 0) else { return Vendor::Other };
        let mut id = [0u8; 12];
        id[..4].copy_from_slice(&e.ebx.to_le_bytes());
        id[4..8].copy_from_slice(&e.edx.to_le_bytes());
        id[8..].copy_from_slice(&e.ecx.to_le_bytes());
        match &id {
            b"GenuineIntel" => Vendor::Intel,
            b"AuthenticAMD" => Vendor::Amd,
            _ => Vendor::Other,
        }
    }
}

/// What this host's KVM offers a guest.
pub struct HostCpuid {
    pub supported: CpuId,
    /// KVM emulates the TSC-deadline timer (`KVM_CAP_TSC_DEADLINE_TIMER`).
    pub tsc_deadline: bool,
}

impl HostCpuid {
    pub fn of(kvm: &Kvm) -> Result<Self, kvm_ioctls::Error> {
        Ok(Self {
            supported: kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?,
            tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
        })
    }
}

/// The normalised CPUID for vCPU `index` of `count`.
pub fn for_vcpu(host: &HostCpuid, index: u8, count: u8) -> CpuId {
    let mut entries = host.supported.as_slice().to_vec();
    let vendor = Vendor::of(&entries);
    add_core_level(&mut entries);
    for e in entries.iter_mut() {
        topology(e, index, count);
        features(e, vendor, host.tsc_deadline);
        if vendor == Vendor::Amd {
            amd_topology(e, index, count);
        }
    }
    brand(&mut entries, vendor);
    CpuId::from_entries(&entries).expect("no more entries than KVM_MAX_CPUID_ENTRIES")
}

/// Subleaf 1 (the core level) of leaves 0xB and 0x1F, which KVM no longer
/// reports since Linux 6.2; without it a guest with several vCPUs sees
/// each as a socket of its own (Linux and Windows read 0x1F first where
/// the processor has it).
fn add_core_level(entries: &mut Vec<kvm_cpuid_entry2>) {
    for leaf in [0xb, 0x1f] {
        let has = |i: u32| entries.iter().any(|e| e.function == leaf && e.index == i);
        if has(0) && !has(1) && entries.len() < KVM_MAX_CPUID_ENTRIES {
            entries.push(kvm_cpuid_entry2 {
                function: leaf,
                index: 1,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                ..Default::default()
            });
        }
    }
}

/// One socket of `count` single-threaded cores, and vCPU `index`'s IDs.
fn topology(e: &mut kvm_cpuid_entry2, index: u8, count: u8) {
    match e.function {
        0x1 => {
            // APIC ID in EBX[31:24], logical processors in EBX[23:16],
            // CLFLUSH size (8 × 8 bytes) in EBX[15:8].
            e.ebx = (u32::from(index) << 24) | (u32::from(count) << 16) | (8 << 8);
            if count > 1 {
                e.edx |= HTT_BIT;
            } else {
                e.edx &= !HTT_BIT;
            }
        }
        0x4 => {
            // Deterministic cache parameters: cores per package - 1 in
            // EAX[31:26]; threads sharing the cache - 1 in EAX[25:14]: one
            // for L1 and L2, all of them for L3.
            let sharing = cache_sharing(e.eax, count);
            let cores = u32::from(count.saturating_sub(1)) & 0x3f;
            e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (cores << 26);
        }
        0xb | 0x1f => {
            // Extended topology: level 0 = SMT (1 thread), level 1 = core.
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = 1 << 8;
                }
                1 => {
                    e.eax = bits_for(count);
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

/// AMD's own topology leaves: the core count and APIC ID width
/// (0x80000008 ECX), the threads sharing each cache (0x8000001D), and the
/// extended APIC ID and compute unit (0x8000001E).
fn amd_topology(e: &mut kvm_cpuid_entry2, index: u8, count: u8) {
    match e.function {
        0x8000_0008 => {
            e.ecx = (e.ecx & !0xf0ff) | (bits_for(count) << 12) | u32::from(count.saturating_sub(1));
        }
        0x8000_001d => {
            let sharing = cache_sharing(e.eax, count);
            e.eax = (e.eax & !(0xfff << 14)) | ((sharing & 0xfff) << 14);
        }
        0x8000_001e => {
            e.eax = u32::from(index);
            // Compute unit = the core; one thread per compute unit.
            e.ebx = u32::from(index);
            // Node 0, one node per processor.
            e.ecx = 0;
        }
        _ => {}
    }
}

/// Feature bits a guest on a shared host should see, or not.
fn features(e: &mut kvm_cpuid_entry2, vendor: Vendor, tsc_deadline: bool) {
    match (e.function, e.index) {
        (0x1, _) => {
            e.ecx |= HYPERVISOR_BIT;
            if tsc_deadline {
                e.ecx |= TSC_DEADLINE_BIT;
            }
            if vendor == Vendor::Intel {
                e.ecx &= !PDCM_BIT;
            }
        }
        (0x6, _) => {
            e.eax &= !TURBO_BIT;
            e.ecx &= !EPB_BIT;
        }
        (0x7, 0) => {
            e.ecx &= !WAITPKG_BIT;
            match vendor {
                Vendor::Intel => e.ebx |= FDP_EXCPTN_ONLY_BIT | FPU_CSDS_DEPRECATED_BIT,
                Vendor::Amd => e.edx &= !ARCH_CAPABILITIES_BIT,
                Vendor::Other => {}
            }
        }
        (0xa, _) if vendor == Vendor::Intel => {
            // No performance counters: they would show the guest what
            // other tenants do on the same core.
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        _ => {}
    }
}

/// Writes the generic brand string for `vendor` into leaves
/// 0x80000002-0x80000004 (kept as they are for other vendors).
fn brand(entries: &mut Vec<kvm_cpuid_entry2>, vendor: Vendor) {
    let host = brand_of(entries);
    let text = match vendor {
        Vendor::Intel => match host.as_deref().and_then(frequency) {
            Some(f) => format!("Intel(R) Xeon(R) Processor @ {f}"),
            None => "Intel(R) Xeon(R) Processor".to_string(),
        },
        Vendor::Amd => "AMD EPYC".to_string(),
        Vendor::Other => return,
    };
    let mut bytes = [0u8; BRAND_LEN];
    let n = text.len().min(BRAND_LEN - 1);
    bytes[..n].copy_from_slice(&text.as_bytes()[..n]);
    // A KVM that reports no brand leaves gets them, and the highest
    // extended leaf that covers them.
    for leaf in BRAND_LEAVES {
        if !entries.iter().any(|e| e.function == leaf) && entries.len() < KVM_MAX_CPUID_ENTRIES {
            entries.push(kvm_cpuid_entry2 { function: leaf, ..Default::default() });
        }
    }
    for e in entries.iter_mut().filter(|e| e.function == 0x8000_0000) {
        e.eax = e.eax.max(*BRAND_LEAVES.end());
    }
    for e in entries.iter_mut().filter(|e| BRAND_LEAVES.contains(&e.function)) {
        let at = (e.function - BRAND_LEAVES.start()) as usize * 16;
        let word = |i: usize| u32::from_le_bytes(bytes[at + i * 4..at + i * 4 + 4].try_into().unwrap());
        e.eax = word(0);
        e.ebx = word(1);
        e.ecx = word(2);
        e.edx = word(3);
    }
}

/// The brand string in `entries`, if all three leaves are there.
fn brand_of(entries: &[kvm_cpuid_entry2]) -> Option<String> {
    let mut bytes = Vec::with_capacity(BRAND_LEN);
    for leaf in BRAND_LEAVES {
        let e = entries.iter().find(|e| e.function == leaf)?;
        for r in [e.eax, e.ebx, e.ecx, e.edx] {
            bytes.extend_from_slice(&r.to_le_bytes());
        }
    }
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

/// The frequency a brand string ends with ("... @ 3.00GHz" gives
/// "3.00GHz").
fn frequency(brand: &str) -> Option<&str> {
    let f = brand.trim_end().rsplit(' ').next()?;
    let number = f.strip_suffix("GHz").or_else(|| f.strip_suffix("MHz")).or_else(|| f.strip_suffix("THz"))?;
    (!number.is_empty() && number.chars().all(|c| c.is_ascii_digit() || c == '.')).then_some(f)
}

/// Threads sharing the cache that a leaf 4 or 0x8000001D entry describes,
/// minus one (its EAX[25:14]): all `count` for the L3, one for L1 and L2.
fn cache_sharing(eax: u32, count: u8) -> u32 {
    let level = (eax >> 5) & 7;
    if level == 3 {
        u32::from(count.saturating_sub(1))
    } else {
        0
    }
}

/// Bits needed to number `n` cores (the shift to the package ID).
fn bits_for(n: u8) -> u32 {
    let n = u32::from(n.max(1));
    32 - (n - 1).leading_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 { function, index, ..Default::default() }
    }

    /// Leaf 0 of `vendor`'s processors.
    fn vendor_leaf(vendor: &[u8; 12]) -> kvm_cpuid_entry2 {
        let w = |i: usize| u32::from_le_bytes(vendor[i..i + 4].try_into().unwrap());
        kvm_cpuid_entry2 { ebx: w(0), edx: w(4), ecx: w(8), eax: 0xd, ..Default::default() }
    }

    /// Brand-string leaves holding `text`.
    fn brand_leaves(text: &str) -> Vec<kvm_cpuid_entry2> {
        let mut b = [0u8; BRAND_LEN];
        b[..text.len()].copy_from_slice(text.as_bytes());
        let w = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        (0..3)
            .map(|l| kvm_cpuid_entry2 {
                function: 0x8000_0002 + l as u32,
                eax: w(l * 16),
                ebx: w(l * 16 + 4),
                ecx: w(l * 16 + 8),
                edx: w(l * 16 + 12),
                ..Default::default()
            })
            .collect()
    }

    fn host(entries: &[kvm_cpuid_entry2]) -> HostCpuid {
        HostCpuid { supported: CpuId::from_entries(entries).unwrap(), tsc_deadline: true }
    }

    fn find(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice().iter().find(|e| e.function == function && e.index == index).expect("the leaf")
    }

    #[test]
    fn topology_and_apic_ids_are_per_vcpu() {
        let entries = [
            leaf(0, 0),
            kvm_cpuid_entry2 { function: 1, edx: HTT_BIT, ..Default::default() },
            leaf(0xb, 0),
            leaf(0xb, 1),
        ];
        let host = host(&entries);
        let c = for_vcpu(&host, 2, 4);
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 2, "APIC ID");
        assert_eq!((l1.ebx >> 16) & 0xff, 4, "logical processors");
        assert_ne!(l1.ecx & HYPERVISOR_BIT, 0);
        assert_ne!(l1.ecx & TSC_DEADLINE_BIT, 0, "KVM emulates the TSC-deadline timer");
        assert_eq!(find(&c, 0xb, 1).ebx, 4, "cores at the core level");
        assert_eq!(find(&c, 0xb, 1).eax, 2, "shift for 4 cores");
        assert_eq!(find(&c, 0xb, 0).edx, 2, "x2APIC ID");
        assert_eq!(find(&for_vcpu(&host, 0, 1), 1, 0).edx & HTT_BIT, 0);
        let without = HostCpuid { tsc_deadline: false, ..host };
        assert_eq!(find(&for_vcpu(&without, 0, 1), 1, 0).ecx & TSC_DEADLINE_BIT, 0);
    }

    #[test]
    fn the_core_level_is_added_when_kvm_leaves_it_out() {
        let c = for_vcpu(&host(&[leaf(0, 0), leaf(0xb, 0), leaf(0x1f, 0)]), 1, 3);
        for l in [0xb, 0x1f] {
            let core = find(&c, l, 1);
            assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, (2 << 8) | 1, 1), "leaf {l:#x}");
            assert_eq!(core.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
        }
        // A processor without leaf 0x1F does not get one.
        let c = for_vcpu(&host(&[leaf(0, 0), leaf(0xb, 0)]), 0, 2);
        assert!(!c.as_slice().iter().any(|e| e.function == 0x1f));
    }

    #[test]
    fn intel_hosts_show_a_generic_xeon_with_its_frequency_and_no_performance_counters() {
        let mut entries = vec![
            vendor_leaf(b"GenuineIntel"),
            kvm_cpuid_entry2 { function: 1, ecx: PDCM_BIT, ..Default::default() },
            kvm_cpuid_entry2 { function: 4, eax: (3 << 5) | 0x123, ..Default::default() },
            kvm_cpuid_entry2 { function: 6, eax: TURBO_BIT | 4, ecx: EPB_BIT | 1, ..Default::default() },
            kvm_cpuid_entry2 { function: 7, ecx: WAITPKG_BIT, ..Default::default() },
            kvm_cpuid_entry2 { function: 0xa, eax: 0x0704_3005, ebx: 1, edx: 0x603, ..Default::default() },
        ];
        entries.extend(brand_leaves("Intel(R) Xeon(R) Platinum 8275CL CPU @ 3.00GHz"));
        let c = for_vcpu(&host(&entries), 0, 4);
        assert_eq!(brand_of(c.as_slice()).as_deref(), Some("Intel(R) Xeon(R) Processor @ 3.00GHz"));
        assert_eq!(find(&c, 1, 0).ecx & PDCM_BIT, 0);
        let l4 = find(&c, 4, 0);
        assert_eq!(l4.eax & 0x3fff, (3 << 5) | 0x123, "the cache's own description stays");
        assert_eq!((l4.eax >> 14) & 0xfff, 3, "the L3 is shared by all four cores");
        assert_eq!(l4.eax >> 26, 3, "four cores in the package");
        let l6 = find(&c, 6, 0);
        assert_eq!((l6.eax, l6.ecx), (4, 1), "no turbo or energy bias");
        let l7 = find(&c, 7, 0);
        assert_eq!(l7.ecx & WAITPKG_BIT, 0);
        assert_eq!(l7.ebx, FDP_EXCPTN_ONLY_BIT | FPU_CSDS_DEPRECATED_BIT);
        let la = find(&c, 0xa, 0);
        assert_eq!((la.eax, la.ebx, la.ecx, la.edx), (0, 0, 0, 0));

        // A brand without a frequency gives the plain name.
        let mut entries = vec![vendor_leaf(b"GenuineIntel")];
        entries.extend(brand_leaves("Intel(R) Core(TM) i7 CPU"));
        assert_eq!(brand_of(for_vcpu(&host(&entries), 0, 1).as_slice()).as_deref(), Some("Intel(R) Xeon(R) Processor"));
    }

    #[test]
    fn amd_hosts_show_an_epyc_with_amd_topology_and_no_arch_capabilities() {
        let mut entries = vec![
            vendor_leaf(b"AuthenticAMD"),
            kvm_cpuid_entry2 { function: 7, edx: ARCH_CAPABILITIES_BIT | 1, ..Default::default() },
            kvm_cpuid_entry2 { function: 0x8000_0008, ecx: 0x7007, ..Default::default() },
            kvm_cpuid_entry2 { function: 0x8000_001d, index: 0, eax: (1 << 5) | 1 | (7 << 14), ..Default::default() },
            kvm_cpuid_entry2 { function: 0x8000_001d, index: 3, eax: (3 << 5) | 3, ..Default::default() },
            kvm_cpuid_entry2 { function: 0x8000_001e, eax: 9, ebx: 0x104, ecx: 0x301, ..Default::default() },
        ];
        entries.extend(brand_leaves("AMD EPYC 7R13 48-Core Processor"));
        let c = for_vcpu(&host(&entries), 2, 3);
        assert_eq!(brand_of(c.as_slice()).as_deref(), Some("AMD EPYC"));
        // A KVM without brand leaves.
        let bare = for_vcpu(&host(&[vendor_leaf(b"AuthenticAMD"), leaf(0x8000_0000, 0)]), 0, 1);
        assert_eq!(brand_of(bare.as_slice()).as_deref(), Some("AMD EPYC"));
        assert_eq!(find(&bare, 0x8000_0000, 0).eax, 0x8000_0004);
        assert_eq!(find(&c, 7, 0).edx, 1);
        assert_eq!(find(&c, 0x8000_0008, 0).ecx, (2 << 12) | 2, "APIC ID size and cores - 1");
        assert_eq!((find(&c, 0x8000_001d, 0).eax >> 14) & 0xfff, 0, "L1 per core");
        assert_eq!((find(&c, 0x8000_001d, 3).eax >> 14) & 0xfff, 2, "L3 for all three");
        let l1e = find(&c, 0x8000_001e, 0);
        assert_eq!((l1e.eax, l1e.ebx, l1e.ecx), (2, 2, 0));
    }

    #[test]
    fn this_hosts_kvm_takes_the_normalised_cpuid() {
        let kvm = Kvm::new().expect("/dev/kvm");
        let host = HostCpuid::of(&kvm).unwrap();
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let c = for_vcpu(&host, 0, 2);
        vcpu.set_cpuid2(&c).expect("KVM accepts it");
        let brand = brand_of(c.as_slice()).unwrap_or_default();
        match Vendor::of(c.as_slice()) {
            Vendor::Amd => assert_eq!(brand, "AMD EPYC"),
            Vendor::Intel => assert!(brand.starts_with("Intel(R) Xeon(R) Processor"), "{brand}"),
            Vendor::Other => {}
        }
        assert_eq!(find(&c, 0xb, 1).ebx, 2, "two cores at the core level");
        if c.as_slice().iter().any(|e| e.function == 0x1f) {
            assert_eq!(find(&c, 0x1f, 1).ebx, 2, "and at leaf 0x1F's");
        }
    }

    #[test]
    fn frequencies_are_read_from_the_end_of_a_brand() {
        assert_eq!(frequency("Intel(R) Xeon(R) Platinum 8275CL CPU @ 3.00GHz"), Some("3.00GHz"));
        assert_eq!(frequency("Some CPU @ 800MHz "), Some("800MHz"));
        assert_eq!(frequency("Intel(R) Core(TM) i7 CPU"), None);
        assert_eq!(frequency("GHz"), None);
    }

    #[test]
    fn shift_widths() {
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(3), 2);
        assert_eq!(bits_for(8), 3);
    }
}
