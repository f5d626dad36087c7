//! ACPI tables for the guest: RSDP → XSDT → FADT (with FACS and DSDT) and
//! MADT. They describe the CPUs and the IOAPIC, the SCI, the fixed-hardware
//! power button and PM1a registers ([`crate::devices::acpi_pm`]), and the
//! `\_S5` sleep type a guest writes to power off.
//!
//! FADT and the AML come from the `acpi_tables` crate; the RSDP, FACS and
//! MADT entries are small fixed layouts written here byte by byte (the crate
//! has no x86 interrupt-source-override entry).

use super::layout::*;
use crate::devices::acpi_pm::S5_SLP_TYP;
use acpi_tables::{aml, fadt::FADTBuilder, sdt::Sdt, Aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

const OEM_ID: [u8; 6] = *b"KVMOS ";
const OEM_TABLE_ID: [u8; 8] = *b"KVMOSVM ";
const OEM_REVISION: u32 = 1;
/// FADT flags: WBINVD works; there is no sleep button (bit 5). Bit 4
/// (PWR_BUTTON) stays clear: the power button is a fixed-feature button.
const FADT_FLAGS: u32 = (1 << 0) | (1 << 5);

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// The RSDP (ACPI 2.0+, 36 bytes) pointing at the XSDT.
pub fn rsdp(xsdt: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(36);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum of the first 20 bytes
    r.extend_from_slice(&OEM_ID);
    r.push(2); // revision
    r.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&xsdt.to_le_bytes());
    r.push(0); // extended checksum
    r.extend_from_slice(&[0; 3]);
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// The FACS (64 bytes; no firmware waking vector).
pub fn facs() -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[..4].copy_from_slice(b"FACS");
    f[4..8].copy_from_slice(&64u32.to_le_bytes());
    f[32] = 2; // version
    f
}

/// The DSDT: only `\_S5`, the sleep type for soft-off.
pub fn dsdt() -> Vec<u8> {
    let mut t = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let slp = S5_SLP_TYP as u8;
    let zero = 0u8;
    let s5 = aml::Name::new("_S5_".into(), &aml::Package::new(vec![&slp, &slp, &zero, &zero]));
    let mut bytes = Vec::new();
    s5.to_aml_bytes(&mut bytes);
    t.append_slice(&bytes);
    t.as_slice().to_vec()
}

pub fn fadt(dsdt: u64, facs: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    f.sci_int = (SCI_IRQ as u16).into();
    f.pm1a_evt_blk = u32::from(PM1A_EVT_PORT).into();
    f.pm1a_cnt_blk = u32::from(PM1A_CNT_PORT).into();
    f.pm1_evt_len = 4;
    f.pm1_cnt_len = 2;
    f.flags = FADT_FLAGS.into();
    let f = f.dsdt_32(dsdt as u32).firmware_ctrl_32(facs as u32).finalize();
    let mut bytes = Vec::new();
    f.to_aml_bytes(&mut bytes);
    bytes
}

/// MADT: one local APIC per vCPU, the IOAPIC, the SCI as a level-triggered
/// active-high interrupt, and LINT1 as NMI on every CPU.
pub fn madt(vcpus: u8) -> Vec<u8> {
    let mut t = Sdt::new(*b"APIC", 36, 4, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let mut body = Vec::new();
    body.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    body.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT: 8259s present
    for id in 0..vcpus {
        body.extend_from_slice(&[0, 8, id, id]);
        body.extend_from_slice(&1u32.to_le_bytes()); // enabled
    }
    body.extend_from_slice(&[1, 12, 0, 0]); // IOAPIC id 0
    body.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes()); // GSI base
    body.extend_from_slice(&[2, 10, 0, SCI_IRQ as u8]); // override: ISA bus, IRQ 9
    body.extend_from_slice(&SCI_IRQ.to_le_bytes());
    body.extend_from_slice(&0x000du16.to_le_bytes()); // level, active high
    body.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]); // NMI on LINT1 of all CPUs
    t.append_slice(&body);
    t.as_slice().to_vec()
}

pub fn xsdt(entries: &[u64]) -> Vec<u8> {
    let mut t = Sdt::new(*b"XSDT", 36, 1, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let body: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    t.append_slice(&body);
    t.as_slice().to_vec()
}

/// Writes every table from [`ACPI_START`]; returns the RSDP's address.
pub fn write_tables<M: GuestMemoryBackend>(mem: &M, vcpus: u8) -> Result<u64, vm_memory::GuestMemoryError> {
    let align = |a: u64| (a + 15) & !15;
    let rsdp_addr = ACPI_START;
    let mut next = align(rsdp_addr + 36);
    let mut place = |bytes: &[u8]| -> Result<u64, vm_memory::GuestMemoryError> {
        let at = next;
        mem.write_slice(bytes, GuestAddress(at))?;
        next = align(at + bytes.len() as u64);
        Ok(at)
    };
    let facs_addr = place(&facs())?;
    let dsdt_addr = place(&dsdt())?;
    let fadt_addr = place(&fadt(dsdt_addr, facs_addr))?;
    let madt_addr = place(&madt(vcpus))?;
    let xsdt_addr = place(&xsdt(&[fadt_addr, madt_addr]))?;
    mem.write_slice(&rsdp(xsdt_addr), GuestAddress(rsdp_addr))?;
    Ok(rsdp_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums_to_zero(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    #[test]
    fn tables_have_valid_checksums_and_lengths() {
        let r = rsdp(0x1234);
        assert!(sums_to_zero(&r[..20]) && sums_to_zero(&r));
        for t in [dsdt(), fadt(0x100, 0x200), madt(4), xsdt(&[1, 2])] {
            let len = u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize;
            assert_eq!(len, t.len(), "{:?}", std::str::from_utf8(&t[..4]));
            assert!(sums_to_zero(&t), "{:?}", std::str::from_utf8(&t[..4]));
        }
        let m = madt(2);
        assert_eq!(m.len(), 36 + 8 + 2 * 8 + 12 + 10 + 6);
        let d = dsdt();
        assert!(d.windows(4).any(|w| w == b"_S5_"));
    }

    #[test]
    fn tables_fit_below_the_bios_end() {
        let mem = crate::vstate::memory::create(16 << 20).unwrap();
        let rsdp_at = write_tables(&mem, 64).unwrap();
        assert_eq!(rsdp_at, ACPI_START);
        let sig: [u8; 8] = mem.read_obj(GuestAddress(ACPI_START)).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
    }
}
