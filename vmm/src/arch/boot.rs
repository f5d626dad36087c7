//! Loading the guest: kernel (bzImage or ELF vmlinux, through
//! linux-loader), initrd, command line, and what the kernel reads at entry:
//! boot_params with the E820 map for the 64-bit Linux boot protocol, or
//! `hvm_start_info` with a memory map and the initrd as a module for PVH,
//! which a vmlinux with the PVH ELF note is booted through (32-bit entry,
//! no decompression).

use super::layout::*;
use crate::vstate::memory::{low_ram_end, GuestMemory};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{load_cmdline, BzImage, Cmdline, Elf, KernelLoader};
use std::fs::File;
use std::path::Path;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

#[derive(Debug, displaydoc::Display, thiserror::Error)]
pub enum BootError {
    /// cannot open the kernel {0}: {1}
    OpenKernel(String, std::io::Error),
    /// cannot load the kernel {0}: {1}
    LoadKernel(String, linux_loader::loader::Error),
    /// cannot open the initrd {0}: {1}
    OpenInitrd(String, std::io::Error),
    /// the initrd ({size} bytes) does not fit in the guest's low memory; give the VM more memory
    InitrdTooLarge { size: u64 },
    /// cannot copy the initrd into guest memory: {0}
    LoadInitrd(String),
    /// the kernel command line is not valid: {0}
    Cmdline(String),
    /// cannot write boot_params: {0}
    BootParams(linux_loader::configurator::Error),
}

const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
/// The bzImage's 64-bit entry point is 0x200 past where its protected-mode
/// code is loaded (arch/x86/boot/compressed/head_64.S).
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Where the kernel went and how to enter it.
pub struct LoadedKernel {
    pub entry: u64,
    pub header: Option<linux_loader::loader::bootparam::setup_header>,
    /// Enter through PVH (32-bit, `rbx` = hvm_start_info) rather than the
    /// 64-bit Linux boot protocol.
    pub pvh: bool,
}

/// Loads a bzImage or an ELF vmlinux.
pub fn load_kernel(mem: &GuestMemory, path: &Path) -> Result<LoadedKernel, BootError> {
    let shown = path.display().to_string();
    let mut f = File::open(path).map_err(|e| BootError::OpenKernel(shown.clone(), e))?;
    match Elf::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START))) {
        Ok(r) => {
            return Ok(match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(entry) => {
                    LoadedKernel { entry: entry.raw_value(), header: None, pvh: true }
                }
                _ => LoadedKernel { entry: r.kernel_load.raw_value(), header: None, pvh: false },
            })
        }
        Err(linux_loader::loader::Error::Elf(linux_loader::loader::elf::Error::InvalidElfMagicNumber)) => {}
        Err(e) => return Err(BootError::LoadKernel(shown, e)),
    }
    let r = BzImage::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| BootError::LoadKernel(shown, e))?;
    Ok(LoadedKernel {
        entry: r.kernel_load.raw_value() + BZIMAGE_64BIT_ENTRY_OFFSET,
        header: r.setup_header,
        pvh: false,
    })
}

/// Reads the initrd to the top of low memory (page aligned), straight from
/// the file into guest memory; returns its address and size.
pub fn load_initrd(mem: &GuestMemory, path: &Path, mem_size: u64) -> Result<(u64, u64), BootError> {
    let shown = path.display().to_string();
    let mut file = File::open(path).map_err(|e| BootError::OpenInitrd(shown.clone(), e))?;
    let size = file.metadata().map_err(|e| BootError::OpenInitrd(shown.clone(), e))?.len();
    let top = low_ram_end(mem_size);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= HIMEM_START)
        .ok_or(BootError::InitrdTooLarge { size })?;
    use vm_memory::Bytes;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| BootError::LoadInitrd(e.to_string()))?;
    Ok((addr, size))
}

/// The E820 map: low RAM, RAM from 1 MiB to the hole, RAM above 4 GiB.
pub fn e820_map(mem: &GuestMemory) -> Vec<(u64, u64)> {
    let mut map = vec![(0, EBDA_START)];
    for region in mem.iter() {
        let start = region.start_addr().raw_value().max(HIMEM_START);
        let end = region.start_addr().raw_value() + region.len();
        if end > start {
            map.push((start, end - start));
        }
    }
    map
}

fn write_cmdline(mem: &GuestMemory, cmdline: &str) -> Result<(), BootError> {
    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    cl.insert_str(cmdline).map_err(|e| BootError::Cmdline(e.to_string()))?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cl).map_err(|e| BootError::Cmdline(e.to_string()))
}

/// Writes the command line and what the kernel reads at its entry.
pub fn write_boot_info(
    mem: &GuestMemory,
    kernel: &LoadedKernel,
    cmdline: &str,
    initrd: Option<(u64, u64)>,
    rsdp: u64,
) -> Result<(), BootError> {
    write_cmdline(mem, cmdline)?;
    if kernel.pvh {
        write_pvh_start_info(mem, initrd, rsdp)
    } else {
        write_boot_params(mem, kernel, cmdline, initrd, rsdp)
    }
}

/// hvm_start_info at [`PVH_INFO_START`], its memory map and the initrd as
/// the one module (the PVH boot ABI, xen/include/public/arch-x86/hvm/start_info.h).
fn write_pvh_start_info(mem: &GuestMemory, initrd: Option<(u64, u64)>, rsdp: u64) -> Result<(), BootError> {
    let map: Vec<hvm_memmap_table_entry> = e820_map(mem)
        .into_iter()
        .map(|(addr, size)| hvm_memmap_table_entry { addr, size, type_: E820_RAM, reserved: 0 })
        .collect();
    let modules: Vec<hvm_modlist_entry> =
        initrd.into_iter().map(|(paddr, size)| hvm_modlist_entry { paddr, size, ..Default::default() }).collect();
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: rsdp,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() { 0 } else { PVH_MODLIST_START },
        ..Default::default()
    };
    let mut params = BootParams::new::<hvm_start_info>(&info, GuestAddress(PVH_INFO_START));
    params.set_sections::<hvm_memmap_table_entry>(&map, GuestAddress(PVH_MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules::<hvm_modlist_entry>(&modules, GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemory>(&params, mem).map_err(BootError::BootParams)
}

/// boot_params (the zero page) for the 64-bit Linux boot protocol.
fn write_boot_params(
    mem: &GuestMemory,
    kernel: &LoadedKernel,
    cmdline: &str,
    initrd: Option<(u64, u64)>,
    rsdp: u64,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(h) = kernel.header {
        params.hdr = h;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline.len() as u32 + 1;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = rsdp;
    let map = e820_map(mem);
    for (i, (addr, size)) in map.iter().enumerate().take(params.e820_table.len()) {
        params.e820_table[i] = boot_e820_entry { addr: *addr, size: *size, r#type: E820_RAM };
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemory>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(BootError::BootParams)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_skips_the_bios_area_and_the_mmio_hole() {
        let mem = crate::vstate::memory::create(64 << 20).unwrap();
        assert_eq!(e820_map(&mem), vec![(0, EBDA_START), (HIMEM_START, (64 << 20) - HIMEM_START)]);
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_memory() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("initrd");
        std::fs::write(&p, vec![7u8; 10_000]).unwrap();
        let mem = crate::vstate::memory::create(32 << 20).unwrap();
        let (addr, size) = load_initrd(&mem, &p, 32 << 20).unwrap();
        assert_eq!(size, 10_000);
        assert_eq!(addr % 4096, 0);
        assert!(addr + size <= 32 << 20 && addr + size > (32 << 20) - 8192);
        let big = dir.path().join("big");
        std::fs::write(&big, vec![0u8; 40 << 20]).unwrap();
        assert!(matches!(load_initrd(&mem, &big, 32 << 20), Err(BootError::InitrdTooLarge { .. })));
    }
}
