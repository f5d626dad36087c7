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
    madt_with(vcpus, false)
}

/// The MADT, optionally saying that ISA IRQ 0 (the PIT) is on GSI 2, as on
/// the PC machine's routing.
fn madt_with(vcpus: u8, irq0_on_gsi2: bool) -> Vec<u8> {
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
    if irq0_on_gsi2 {
        body.extend_from_slice(&[2, 10, 0, 0]); // override: ISA IRQ 0 ...
        body.extend_from_slice(&2u32.to_le_bytes()); // ... is GSI 2
        body.extend_from_slice(&0u16.to_le_bytes()); // bus-conforming flags
    }
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

/// What the PC machine's tables describe.
#[derive(Debug, Clone, Copy)]
pub struct PcPlatform {
    pub vcpus: u8,
    /// Where the firmware placed the PIIX4's ACPI registers.
    pub pm_base: u16,
    /// The start of the 32-bit PCI window (the end of low RAM); it ends at
    /// the IOAPIC.
    pub pci_window_start: u32,
}

/// The PC machine's ACPI tables as fw_cfg hands them to the firmware: the
/// RSDP blob, the blob of all other tables, and the loader script that
/// links them (see [`super::acpi_loader`]).
pub struct PcAcpi {
    pub rsdp: Vec<u8>,
    pub tables: Vec<u8>,
    pub loader: Vec<u8>,
}

pub const FILE_RSDP: &str = "etc/acpi/rsdp";
pub const FILE_TABLES: &str = "etc/acpi/tables";
pub const FILE_LOADER: &str = "etc/table-loader";

/// FADT flags for the PC: WBINVD, C1 on all CPUs, no sleep button, and the
/// reset register (0xCF9) works.
const PC_FADT_FLAGS: u32 = (1 << 0) | (1 << 2) | (1 << 5) | (1 << 10);
/// IAPC_BOOT_ARCH: legacy ISA devices and an 8042 are present.
const PC_BOOT_ARCH: u16 = 0b11;
/// The CMOS byte that holds the century.
const CMOS_CENTURY: u8 = 0x32;
/// FADT offsets the loader patches (ACPI 6, 5.2.9).
const FADT_FIRMWARE_CTRL: u32 = 36;
const FADT_DSDT: u32 = 40;
const TABLE_CHECKSUM: u32 = 9;

fn pc_fadt(p: &PcPlatform, dsdt: u32, facs: u32) -> Vec<u8> {
    use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
    let base = u32::from(p.pm_base);
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    f.sci_int = (SCI_IRQ as u16).into();
    f.pm1a_evt_blk = base.into();
    f.pm1a_cnt_blk = (base + 4).into();
    f.pm_tmr_blk = (base + crate::devices::acpi_pm::TMR as u32).into();
    f.pm1_evt_len = 4;
    f.pm1_cnt_len = 2;
    f.pm_tmr_len = 4;
    f.century = CMOS_CENTURY;
    f.iapc_boot_arch = PC_BOOT_ARCH.into();
    f.flags = PC_FADT_FLAGS.into();
    f.reset_reg = GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, 0xcf9);
    f.reset_value = 0x06;
    let f = f.dsdt_32(dsdt).firmware_ctrl_32(facs).finalize();
    let mut bytes = Vec::new();
    f.to_aml_bytes(&mut bytes);
    bytes
}

/// The PC's DSDT: the PCI root bridge with its windows and interrupt
/// routing (`_PRT`, fixed IOAPIC pins per [`crate::devices::chipset::piix3::intx_gsi`]),
/// the ISA devices Windows needs to see described (RTC, keyboard, PS/2
/// mouse, COM1),
/// and `\_S5`.
fn pc_dsdt(p: &PcPlatform) -> Vec<u8> {
    use crate::devices::chipset::piix3::intx_gsi;
    let mut t = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let mut bytes = Vec::new();

    let bus = aml::AddressSpace::new_bus_number(0u16, 0xffu16);
    let cf8 = aml::IO::new(0xcf8, 0xcf8, 1, 8);
    let io_low = aml::AddressSpace::new_io(0u16, 0x0cf7u16, None);
    let io_high = aml::AddressSpace::new_io(0x0d00u16, 0xffffu16, None);
    let vga =
        aml::AddressSpace::new_memory(aml::AddressSpaceCacheable::Cacheable, true, 0xa_0000u32, 0xb_ffffu32, None);
    let window_end = IOAPIC_START as u32 - 1;
    let window = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        p.pci_window_start,
        window_end,
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![&bus, &cf8, &io_low, &io_high, &vga, &window]);

    let mut routes: Vec<(u32, u8, u32)> = Vec::new();
    for slot in 1u8..32 {
        for pin in 0u8..4 {
            routes.push((u32::from(slot) << 16 | 0xffff, pin, intx_gsi(slot, pin + 1)));
        }
    }
    let zero = 0u8;
    let entries: Vec<aml::Package> =
        routes.iter().map(|(addr, pin, gsi)| aml::Package::new(vec![addr, pin, &zero, gsi])).collect();
    let prt = aml::Package::new(entries.iter().map(|e| e as &dyn Aml).collect());

    let rtc_io = aml::IO::new(0x70, 0x70, 1, 8);
    let rtc_irq = aml::Interrupt::new(true, true, false, false, 8);
    let rtc_crs = aml::ResourceTemplate::new(vec![&rtc_io, &rtc_irq]);
    let kbd_data = aml::IO::new(0x60, 0x60, 1, 1);
    let kbd_cmd = aml::IO::new(0x64, 0x64, 1, 1);
    let kbd_irq = aml::Interrupt::new(true, true, false, false, 1);
    let kbd_crs = aml::ResourceTemplate::new(vec![&kbd_data, &kbd_cmd, &kbd_irq]);
    // The PS/2 mouse port of the same controller: without it Linux's
    // i8042 driver leaves the aux port alone.
    let mou_irq = aml::Interrupt::new(true, true, false, false, 12);
    let mou_crs = aml::ResourceTemplate::new(vec![&mou_irq]);
    let com_io = aml::IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let com_irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let com_crs = aml::ResourceTemplate::new(vec![&com_io, &com_irq]);
    let isa_adr = 0x0001_0000u32;
    let rtc = isa_device("RTC_", "PNP0B00", None, &rtc_crs);
    let kbd = isa_device("KBD_", "PNP0303", None, &kbd_crs);
    let mou = isa_device("MOU_", "PNP0F13", None, &mou_crs);
    let com1 = isa_device("COM1", "PNP0501", Some(1), &com_crs);
    let adr = aml::Name::new("_ADR".into(), &isa_adr);
    let isa = aml::Device::new("ISA_".into(), vec![&adr, &rtc, &kbd, &mou, &com1]);
    let pnp0a03 = aml::EISAName::new("PNP0A03");
    let hid = aml::Name::new("_HID".into(), &pnp0a03);
    let adr = aml::Name::new("_ADR".into(), &zero);
    let uid = aml::Name::new("_UID".into(), &zero);
    let bbn = aml::Name::new("_BBN".into(), &zero);
    let crs = aml::Name::new("_CRS".into(), &crs);
    let prt = aml::Name::new("_PRT".into(), &prt);
    let pci = aml::Device::new("PCI0".into(), vec![&hid, &adr, &uid, &bbn, &crs, &prt, &isa]);
    aml::Scope::new("\\_SB_".into(), vec![&pci]).to_aml_bytes(&mut bytes);
    let slp = S5_SLP_TYP as u8;
    aml::Name::new("_S5_".into(), &aml::Package::new(vec![&slp, &slp, &zero, &zero])).to_aml_bytes(&mut bytes);
    t.append_slice(&bytes);
    t.as_slice().to_vec()
}

/// AML already serialized.
struct Raw(Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        for b in &self.0 {
            sink.byte(*b);
        }
    }
}

/// An ISA device with a PNP ID, an optional unit ID and its resources.
fn isa_device(name: &str, hid: &str, uid: Option<u8>, crs: &aml::ResourceTemplate) -> Raw {
    let hid = aml::EISAName::new(hid);
    let hid = aml::Name::new("_HID".into(), &hid);
    let crs = aml::Name::new("_CRS".into(), crs);
    let uid = uid.map(|u| aml::Name::new("_UID".into(), &u));
    let mut children: Vec<&dyn Aml> = vec![&hid, &crs];
    if let Some(u) = &uid {
        children.push(u);
    }
    let mut bytes = Vec::new();
    aml::Device::new(name.into(), children).to_aml_bytes(&mut bytes);
    Raw(bytes)
}

/// The RSDT (32-bit pointers, as QEMU's PC machine has) with `count` zero
/// entries the loader fills in.
fn rsdt(count: usize) -> Vec<u8> {
    let mut t = Sdt::new(*b"RSDT", 36, 1, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    t.append_slice(&vec![0u8; count * 4]);
    t.as_slice().to_vec()
}

/// An ACPI 1.0 RSDP (20 bytes); the loader sets its RSDT pointer and
/// checksum.
fn rsdp_v1() -> Vec<u8> {
    let mut r = b"RSD PTR ".to_vec();
    r.push(0);
    r.extend_from_slice(&OEM_ID);
    r.push(0); // revision 0: ACPI 1.0, RSDT only
    r.extend_from_slice(&0u32.to_le_bytes());
    r
}

/// Builds the PC's tables and the loader script that links them.
pub fn pc_tables(p: &PcPlatform) -> PcAcpi {
    let mut tables: Vec<u8> = Vec::new();
    let mut place = |bytes: Vec<u8>, align: usize| -> u32 {
        tables.resize(tables.len().div_ceil(align) * align, 0);
        let at = tables.len() as u32;
        tables.extend_from_slice(&bytes);
        at
    };
    let facs_at = place(facs(), 64);
    let dsdt_at = place(pc_dsdt(p), 8);
    let fadt_at = place(pc_fadt(p, dsdt_at, facs_at), 8);
    let madt_at = place(madt_with(p.vcpus, true), 8);
    let rsdt_at = place(rsdt(2), 8);
    // Pointers in the tables blob are offsets into it until the loader
    // adds the blob's address.
    let entries = [fadt_at, madt_at];
    for (i, e) in entries.iter().enumerate() {
        let at = rsdt_at as usize + 36 + i * 4;
        tables[at..at + 4].copy_from_slice(&e.to_le_bytes());
    }
    let table_len =
        |at: u32| u32::from_le_bytes(tables[at as usize + 4..at as usize + 8].try_into().unwrap_or_default());
    let checksummed = [dsdt_at, fadt_at, madt_at, rsdt_at];
    let lens: Vec<u32> = checksummed.iter().map(|&at| table_len(at)).collect();
    for &at in &checksummed {
        tables[(at + TABLE_CHECKSUM) as usize] = 0;
    }
    let mut rsdp = rsdp_v1();
    rsdp[16..20].copy_from_slice(&rsdt_at.to_le_bytes());

    let mut l = super::acpi_loader::Loader::default();
    use super::acpi_loader::Zone;
    l.allocate(FILE_RSDP, 16, Zone::FSeg);
    l.allocate(FILE_TABLES, 64, Zone::High);
    l.add_pointer(FILE_TABLES, FILE_TABLES, fadt_at + FADT_FIRMWARE_CTRL, 4);
    l.add_pointer(FILE_TABLES, FILE_TABLES, fadt_at + FADT_DSDT, 4);
    for i in 0..entries.len() as u32 {
        l.add_pointer(FILE_TABLES, FILE_TABLES, rsdt_at + 36 + i * 4, 4);
    }
    for (&at, &len) in checksummed.iter().zip(&lens) {
        l.add_checksum(FILE_TABLES, at + TABLE_CHECKSUM, at, len);
    }
    l.add_pointer(FILE_RSDP, FILE_TABLES, 16, 4);
    l.add_checksum(FILE_RSDP, 8, 0, 20);
    PcAcpi { rsdp, tables, loader: l.into_bytes() }
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
    fn the_pc_loader_links_tables_the_firmware_can_walk() {
        let p = PcPlatform { vcpus: 2, pm_base: 0x600, pci_window_start: 0x8000_0000 };
        let acpi = pc_tables(&p);
        let mut blobs = std::collections::HashMap::new();
        blobs.insert(FILE_RSDP.to_string(), (0xf_5a10u64, acpi.rsdp.clone()));
        blobs.insert(FILE_TABLES.to_string(), (0x7ffe_0000u64, acpi.tables.clone()));
        super::super::acpi_loader::run(&acpi.loader, &mut blobs);
        let (rsdp_at, rsdp) = &blobs[FILE_RSDP];
        let (base, tables) = &blobs[FILE_TABLES];
        assert_eq!(*rsdp_at, 0xf_5a10);
        assert!(sums_to_zero(&rsdp[..20]));
        let at = |addr: u32| (u64::from(addr) - base) as usize;
        let rsdt = at(u32::from_le_bytes(rsdp[16..20].try_into().unwrap()));
        assert_eq!(&tables[rsdt..rsdt + 4], b"RSDT");
        let table = |off: usize| {
            let len = u32::from_le_bytes(tables[off + 4..off + 8].try_into().unwrap()) as usize;
            &tables[off..off + len]
        };
        assert!(sums_to_zero(table(rsdt)));
        let fadt = at(u32::from_le_bytes(tables[rsdt + 36..rsdt + 40].try_into().unwrap()));
        let madt = at(u32::from_le_bytes(tables[rsdt + 40..rsdt + 44].try_into().unwrap()));
        assert_eq!(&tables[fadt..fadt + 4], b"FACP");
        assert_eq!(&tables[madt..madt + 4], b"APIC");
        assert!(sums_to_zero(table(fadt)) && sums_to_zero(table(madt)));
        let f = table(fadt);
        assert_eq!(u32::from_le_bytes(f[56..60].try_into().unwrap()), 0x600, "PM1a_EVT_BLK");
        assert_eq!(u32::from_le_bytes(f[76..80].try_into().unwrap()), 0x608, "PM_TMR_BLK");
        let dsdt = at(u32::from_le_bytes(f[40..44].try_into().unwrap()));
        assert!(sums_to_zero(table(dsdt)));
        let d = table(dsdt);
        for name in [&b"PCI0"[..], b"_PRT", b"_S5_", b"COM1"] {
            assert!(d.windows(4).any(|w| w == name), "{}", String::from_utf8_lossy(name));
        }
        let facs = at(u32::from_le_bytes(f[36..40].try_into().unwrap()));
        assert_eq!(&tables[facs..facs + 4], b"FACS");
        assert_eq!(facs % 64, 0);
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
