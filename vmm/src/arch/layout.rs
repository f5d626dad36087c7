//! Where everything lives in guest-physical memory and I/O space. Every
//! address the VMM puts in front of a guest is a named constant here.

/// The kernel's boot_params ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// The stack the kernel starts on (grows down from here).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapped page tables for 64-bit entry: PML4, PDPT, PD.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// The boot GDT and an empty IDT.
pub const BOOT_GDT_OFFSET: u64 = 0x500;
pub const BOOT_IDT_OFFSET: u64 = 0x520;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// x86 Linux accepts command lines up to this size (COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = kvmos_contract::vm::CMDLINE_MAX_SIZE;
/// End of the low RAM the E820 map reports below the EBDA/BIOS area.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables live in the BIOS area, where Linux also scans for the RSDP.
pub const ACPI_START: u64 = 0xe0000;
/// The legacy VGA window: device memory on a PC, not RAM.
pub const VGA_WINDOW_START: u64 = 0xa_0000;
pub const VGA_WINDOW_END: u64 = 0xc_0000;
/// Protected-mode kernels load at 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;
/// The 32-bit MMIO hole: nothing but devices between here and 4 GiB, so RAM
/// above it continues at 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// virtio-mmio devices, one 4 KiB window each, from here.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// Three pages KVM needs for real mode on Intel (its TSS), and the page
/// before them for its identity-mapped page table: where QEMU puts them,
/// below the IOAPIC and clear of any firmware flash.
pub const KVM_IDENTITY_MAP_START: u64 = 0xfeff_c000;
pub const KVM_TSS_START: u64 = 0xfeff_d000;
pub const KVM_PRIVATE_END: u64 = 0xff00_0000;
/// The in-kernel IOAPIC and the local APICs.
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;

/// Legacy I/O ports.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
/// The RTC's interrupt (ISA IRQ 8).
pub const RTC_IRQ: u32 = 8;
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// ACPI fixed-hardware registers (PM1a event and control blocks).
pub const PM1A_EVT_PORT: u16 = 0x600;
pub const PM1A_CNT_PORT: u16 = 0x604;
/// The ACPI System Control Interrupt.
pub const SCI_IRQ: u32 = 9;
/// The boot-time marker: the guest writes one byte here when its init runs
/// (Firecracker's boot timer does the same with MMIO); the VMM logs the time
/// since its own start. Port 0x80 is the POST-code port Linux itself writes
/// to, so an unused port is taken instead. The guest writes it through
/// /dev/port (CONFIG_DEVPORT).
pub const BOOT_MARKER_PORT: u16 = 0x440;
/// The first IRQ handed to virtio-mmio devices (after the legacy ISA ones).
pub const VIRTIO_IRQ_BASE: u32 = 10;
/// The IOAPIC's last pin.
pub const VIRTIO_IRQ_LAST: u32 = 23;

/// PVH boot: `hvm_start_info`, the module list (the initrd) after it, and
/// the memory map in the page the zero page would use (PVH has none).
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MODLIST_START: u64 = 0x6040;
pub const PVH_MEMMAP_START: u64 = ZERO_PAGE_START;
