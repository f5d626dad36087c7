//! QEMU's standard VGA (`-vga std`), PCI 1234:1111: a VGA core plus the
//! Bochs VBE ("DISPI") registers for linear framebuffer modes. It is the
//! adapter SeaBIOS's `vgabios-stdvga.bin`, OVMF's QemuVideoDxe, Linux's
//! bochs DRM driver and Windows' basic display all drive. QEMU's
//! `hw/display/vga-pci.c` and `vga.c` are the reference.
//!
//! - BAR 0: video memory, mapped into the guest as a KVM memory slot with
//!   dirty logging, so the VMM learns which pages the guest drew on
//!   without trapping a single write;
//! - BAR 2: 4 KiB of MMIO: the EDID block at 0 (empty: guests fall back to
//!   their default modes), the VGA ports at 0x400, the DISPI registers at
//!   0x500, QEMU's extended registers at 0x600;
//! - ports 0x3B0-0x3DF and the 0xA0000 window (the VGA core), and the
//!   DISPI index/data ports 0x1CE/0x1CF.
//!
//! The option ROM is not behind a ROM BAR: SeaBIOS takes it from fw_cfg
//! (`pci1234,1111.rom`), as it does for a hard-coded PCI ROM.

use super::vga::{self, Vga};
use super::vram::Vram;
use super::{Change, Frame};
use crate::devices::bus::BusDevice;
use crate::devices::pci::{BarKind, ConfigSpace, Identity, PciDevice, SUBSYSTEM_QEMU, VENDOR_REDHAT_QUMRANET};
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

pub const VENDOR: u16 = 0x1234;
pub const DEVICE: u16 = 0x1111;
/// The name SeaBIOS looks up in fw_cfg for this device's option ROM.
pub const ROM_FILE: &str = "pci1234,1111.rom";
/// The Debian file that holds that ROM.
pub const VGABIOS_FILE: &str = "vgabios-stdvga.bin";

/// 16 MiB, QEMU's default.
pub const VRAM_SIZE: usize = 16 << 20;
pub const DISPI_INDEX_PORT: u16 = 0x1CE;
const MMIO_BAR_SIZE: u64 = 0x1000;
const LFB_BAR: usize = 0;
const MMIO_BAR: usize = 2;
const MMIO_VGA_PORTS: u64 = 0x400;
const MMIO_DISPI: u64 = 0x500;
const MMIO_QEXT: u64 = 0x600;
const PAGE: usize = 4096;

// DISPI registers.
const DISPI_ID: usize = 0;
const DISPI_XRES: usize = 1;
const DISPI_YRES: usize = 2;
const DISPI_BPP: usize = 3;
const DISPI_ENABLE: usize = 4;
const DISPI_BANK: usize = 5;
const DISPI_VIRT_WIDTH: usize = 6;
const DISPI_VIRT_HEIGHT: usize = 7;
const DISPI_X_OFFSET: usize = 8;
const DISPI_Y_OFFSET: usize = 9;
const DISPI_VIDEO_MEMORY_64K: usize = 10;
const DISPI_REGS: usize = 11;
const DISPI_ID5: u16 = 0xB0C5;
const ENABLED: u16 = 0x01;
const GETCAPS: u16 = 0x02;
const DAC_8BIT: u16 = 0x20;
const NOCLEARMEM: u16 = 0x80;
pub const MAX_XRES: u16 = 2560;
pub const MAX_YRES: u16 = 1600;
const MAX_BPP: u16 = 32;

/// A display mode as the VNC side sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearMode {
    pub width: u32,
    pub height: u32,
    pub bpp: u16,
    pub line_bytes: usize,
    pub start: usize,
}

pub struct StdVga {
    config: ConfigSpace,
    vga: Vga,
    vram: Vram,
    dispi_index: u16,
    dispi: [u16; DISPI_REGS],
    /// Where BAR 0 is mapped as a KVM slot (None: not mapped, accesses
    /// trap to [`PciDevice::bar_read`]).
    lfb: Option<u64>,
    vm: Option<Arc<VmFd>>,
    slot: u32,
    byte_order: u32,
    dispi_changed: bool,
    /// Signalled at the first visible change after [`StdVga::arm_watch`]:
    /// the VNC server sleeps on it instead of polling a text screen.
    watch: Option<EventFd>,
    watch_armed: bool,
}

impl StdVga {
    /// `vm` and `slot`: where to map the framebuffer (None in unit tests:
    /// every access then traps).
    pub fn new(vm: Option<Arc<VmFd>>, slot: u32) -> std::io::Result<Self> {
        let mut config = ConfigSpace::new(Identity {
            vendor: VENDOR,
            device: DEVICE,
            revision: 2,
            class: [0x03, 0x00, 0x00],
            subsystem_vendor: VENDOR_REDHAT_QUMRANET,
            subsystem: SUBSYSTEM_QEMU,
            multifunction: false,
            interrupt_pin: 0,
        });
        config.add_bar(LFB_BAR, BarKind::Mem32, VRAM_SIZE as u64);
        config.add_bar(MMIO_BAR, BarKind::Mem32, MMIO_BAR_SIZE);
        let mut dispi = [0; DISPI_REGS];
        dispi[DISPI_ID] = DISPI_ID5;
        dispi[DISPI_VIDEO_MEMORY_64K] = (VRAM_SIZE >> 16) as u16;
        Ok(Self {
            config,
            vga: Vga::default(),
            vram: Vram::new(VRAM_SIZE)?,
            dispi_index: 0,
            dispi,
            lfb: None,
            vm,
            slot,
            byte_order: 0x1e1e_1e1e,
            dispi_changed: true,
            watch: None,
            watch_armed: false,
        })
    }

    /// An event that fires at the first change after each
    /// [`StdVga::arm_watch`] (one watcher: a second call replaces it).
    pub fn watch(&mut self) -> std::io::Result<EventFd> {
        let e = EventFd::new(libc::EFD_NONBLOCK)?;
        let theirs = e.try_clone()?;
        self.watch = Some(e);
        Ok(theirs)
    }

    /// Asks for the watch event at the next change; fires it now if a
    /// change is already waiting to be taken.
    pub fn arm_watch(&mut self) {
        self.watch_armed = true;
        self.notify();
    }

    /// Fires the watch event if it is armed and something changed.
    fn notify(&mut self) {
        if self.watch_armed && (self.dispi_changed || self.vga.pending()) {
            self.watch_armed = false;
            if let Some(e) = &self.watch {
                let _ = e.write(1);
            }
        }
    }

    pub fn vram(&self) -> &Vram {
        &self.vram
    }

    fn vbe_enabled(&self) -> bool {
        self.dispi[DISPI_ENABLE] & ENABLED != 0
    }

    /// The linear mode the DISPI registers set, if any.
    pub fn linear_mode(&self) -> Option<LinearMode> {
        if !self.vbe_enabled() {
            return None;
        }
        let bpp = self.dispi[DISPI_BPP];
        let bytes = usize::from(bpp.div_ceil(8));
        let line_bytes = usize::from(self.dispi[DISPI_VIRT_WIDTH]) * bytes;
        let start =
            usize::from(self.dispi[DISPI_Y_OFFSET]) * line_bytes + usize::from(self.dispi[DISPI_X_OFFSET]) * bytes;
        Some(LinearMode {
            width: u32::from(self.dispi[DISPI_XRES]),
            height: u32::from(self.dispi[DISPI_YRES]),
            bpp,
            line_bytes,
            start,
        })
    }

    fn dispi_read(&self, index: u16) -> u16 {
        let index = usize::from(index);
        if self.dispi[DISPI_ENABLE] & GETCAPS != 0 {
            match index {
                DISPI_XRES => return MAX_XRES,
                DISPI_YRES => return MAX_YRES,
                DISPI_BPP => return MAX_BPP,
                _ => {}
            }
        }
        self.dispi.get(index).copied().unwrap_or(0)
    }

    fn dispi_write(&mut self, index: u16, value: u16) {
        self.dispi_changed = true;
        let index = usize::from(index);
        match index {
            DISPI_ID if (0xB0C0..=DISPI_ID5).contains(&value) => self.dispi[DISPI_ID] = value,
            DISPI_XRES if value > 0 && value <= MAX_XRES && value.is_multiple_of(8) => self.dispi[index] = value,
            DISPI_YRES if value > 0 && value <= MAX_YRES => self.dispi[index] = value,
            DISPI_BPP => {
                let bpp = if value == 0 { 8 } else { value };
                if matches!(bpp, 8 | 15 | 16 | 24 | 32) {
                    self.dispi[index] = bpp;
                }
            }
            DISPI_BANK => {
                let banks = (VRAM_SIZE >> 16) as u16;
                self.dispi[index] = value % banks;
            }
            DISPI_ENABLE => self.set_enable(value),
            DISPI_VIRT_WIDTH if value >= self.dispi[DISPI_XRES] => {
                self.dispi[index] = value;
                self.fit_virtual_height();
            }
            DISPI_X_OFFSET | DISPI_Y_OFFSET => self.dispi[index] = value,
            _ => {}
        }
    }

    fn set_enable(&mut self, value: u16) {
        let was = self.vbe_enabled();
        self.dispi[DISPI_ENABLE] = value & (ENABLED | GETCAPS | DAC_8BIT | NOCLEARMEM | 0x40);
        if value & ENABLED != 0 && !was {
            self.dispi[DISPI_VIRT_WIDTH] = self.dispi[DISPI_XRES];
            self.dispi[DISPI_X_OFFSET] = 0;
            self.dispi[DISPI_Y_OFFSET] = 0;
            self.fit_virtual_height();
            if value & NOCLEARMEM == 0 {
                if let Some(m) = self.linear_mode() {
                    self.vram.fill(0, m.line_bytes * m.height as usize, 0);
                }
            }
        }
    }

    /// The virtual height the video memory holds at the current width
    /// (and the mode must fit, or it is cut to what fits).
    fn fit_virtual_height(&mut self) {
        let bytes = usize::from(self.dispi[DISPI_BPP].div_ceil(8)).max(1);
        let line = (usize::from(self.dispi[DISPI_VIRT_WIDTH]) * bytes).max(1);
        let lines = (VRAM_SIZE / line).min(usize::from(u16::MAX)) as u16;
        self.dispi[DISPI_VIRT_HEIGHT] = lines;
        if self.dispi[DISPI_YRES] > lines {
            self.dispi[DISPI_YRES] = lines;
        }
    }

    /// A VGA port (absolute port number).
    pub fn vga_port_read(&mut self, port: u16) -> u8 {
        self.vga.port_read(port)
    }

    pub fn vga_port_write(&mut self, port: u16, value: u8) {
        self.vga.port_write(port, value)
    }

    /// The 0xA0000 window: the VBE bank while a linear mode is on, else
    /// the VGA planes.
    pub fn window_read(&mut self, offset: u64) -> u8 {
        if self.vbe_enabled() {
            return match offset {
                0..0x1_0000 => self.vram.byte(self.bank_base() + offset as usize),
                _ => 0xFF,
            };
        }
        self.vga.mem_read(&self.vram, offset)
    }

    pub fn window_write(&mut self, offset: u64, value: u8) {
        if self.vbe_enabled() {
            if offset < 0x1_0000 {
                self.vram.set_byte(self.bank_base() + offset as usize, value);
                self.vga.mark_changed();
            }
            return;
        }
        self.vga.mem_write(&self.vram, offset, value)
    }

    fn bank_base(&self) -> usize {
        usize::from(self.dispi[DISPI_BANK]) << 16
    }

    pub fn dispi_port_read(&mut self, offset: u64) -> u16 {
        if offset == 0 {
            self.dispi_index
        } else {
            self.dispi_read(self.dispi_index)
        }
    }

    pub fn dispi_port_write(&mut self, offset: u64, value: u16) {
        if offset == 0 {
            self.dispi_index = value;
        } else {
            self.dispi_write(self.dispi_index, value);
        }
    }

    /// What changed since the last call: register and trapped writes
    /// change everything; in a linear mode, KVM's dirty log says which
    /// rows the guest drew on.
    pub fn take_change(&mut self) -> Change {
        let vga_changed = self.vga.take_change() != Change::None;
        let regs = std::mem::take(&mut self.dispi_changed) || vga_changed;
        // The dirty log matters only in a linear mode (in text and VGA
        // modes every write traps): no ioctl on an idle text screen.
        let mode = self.linear_mode();
        let dirty = if mode.is_some() { self.dirty_pages() } else { None };
        if regs {
            return Change::All;
        }
        let Some(mode) = mode else { return Change::None };
        let Some(dirty) = dirty else { return Change::None };
        let first_page = mode.start / PAGE;
        let last_page = (mode.start + mode.line_bytes * mode.height as usize).div_ceil(PAGE);
        let pages = (first_page..last_page).filter(|&p| dirty.get(p / 64).is_some_and(|w| w & (1 << (p % 64)) != 0));
        let (mut lo, mut hi) = (usize::MAX, 0);
        for p in pages {
            lo = lo.min(p);
            hi = hi.max(p);
        }
        if lo == usize::MAX || mode.line_bytes == 0 {
            return Change::None;
        }
        let row = |byte: usize| (byte.saturating_sub(mode.start) / mode.line_bytes) as u32;
        let first = row(lo * PAGE).min(mode.height.saturating_sub(1));
        let last = row((hi + 1) * PAGE - 1).min(mode.height.saturating_sub(1));
        Change::Rows(first, last - first + 1)
    }

    /// KVM's dirty bitmap of the framebuffer slot since the last call.
    fn dirty_pages(&self) -> Option<Vec<u64>> {
        let (vm, _) = (self.vm.as_ref()?, self.lfb?);
        match vm.get_dirty_log(self.slot, self.vram.len()) {
            Ok(bitmap) => Some(bitmap),
            Err(e) => {
                tracing::warn!("cannot read the framebuffer's dirty log: {e}");
                None
            }
        }
    }

    /// The screen as the guest set it up.
    /// The text-mode screen's rows ([`Vga::text`]); `None` in a
    /// graphics or VBE mode.
    pub fn text(&self) -> Option<Vec<String>> {
        match self.linear_mode() {
            Some(_) => None,
            None => self.vga.text(&self.vram),
        }
    }

    pub fn render(&self) -> Frame {
        match self.linear_mode() {
            Some(mode) => self.render_linear(&mode),
            None => self.vga.render(&self.vram),
        }
    }

    /// The size a linear mode's frame has.
    fn linear_size(m: &LinearMode) -> (u32, u32) {
        (m.width.min(u32::from(MAX_XRES)), m.height.min(u32::from(MAX_YRES)))
    }

    fn render_linear(&self, m: &LinearMode) -> Frame {
        let (w, h) = Self::linear_size(m);
        let mut frame = Frame::new(w, h);
        self.render_linear_rows(m, &mut frame, 0..h);
        frame
    }

    /// Redraws `rows` of `frame` (the last render, same mode) from video
    /// memory: in a linear mode, only the rows the dirty log names change,
    /// so the rest need not be read again. `false` when `frame` is not of
    /// this linear mode (the caller renders all of it).
    pub fn render_rows(&self, frame: &mut Frame, rows: std::ops::Range<u32>) -> bool {
        let Some(m) = self.linear_mode() else { return false };
        if Self::linear_size(&m) != (frame.width, frame.height)
            || frame.pixels.len() != (frame.width * frame.height) as usize
        {
            return false;
        }
        let rows = rows.start.min(frame.height)..rows.end.min(frame.height);
        self.render_linear_rows(&m, frame, rows);
        true
    }

    fn render_linear_rows(&self, m: &LinearMode, frame: &mut Frame, rows: std::ops::Range<u32>) {
        let w = frame.width;
        let bytes = usize::from(m.bpp.div_ceil(8));
        let mut line = vec![0u8; w as usize * bytes];
        let dac_8bit = self.dispi[DISPI_ENABLE] & DAC_8BIT != 0;
        let palette: Vec<u32> = (0..=255u8).map(|i| self.vga.dac_colour(i, dac_8bit)).collect();
        for y in rows.start as usize..rows.end as usize {
            self.vram.read(m.start + y * m.line_bytes, &mut line);
            let out = &mut frame.pixels[y * w as usize..(y + 1) * w as usize];
            for (x, px) in out.iter_mut().enumerate() {
                let b = &line[x * bytes..x * bytes + bytes];
                *px = match m.bpp {
                    32 | 24 => u32::from(b[0]) | (u32::from(b[1]) << 8) | (u32::from(b[2]) << 16),
                    16 => {
                        let v = u32::from(u16::from_le_bytes([b[0], b[1]]));
                        let (r, g, bl) = ((v >> 11) & 0x1F, (v >> 5) & 0x3F, v & 0x1F);
                        ((r << 3 | r >> 2) << 16) | ((g << 2 | g >> 4) << 8) | (bl << 3 | bl >> 2)
                    }
                    15 => {
                        let v = u32::from(u16::from_le_bytes([b[0], b[1]]));
                        let (r, g, bl) = ((v >> 10) & 0x1F, (v >> 5) & 0x1F, v & 0x1F);
                        ((r << 3 | r >> 2) << 16) | ((g << 3 | g >> 2) << 8) | (bl << 3 | bl >> 2)
                    }
                    _ => palette[usize::from(b[0])],
                };
            }
        }
    }

    /// Maps (or unmaps) the framebuffer slot where BAR 0 now decodes.
    fn map_lfb(&mut self, at: Option<u64>) {
        let Some(vm) = &self.vm else { return };
        let region = |addr: u64, size: u64| kvm_userspace_memory_region {
            slot: self.slot,
            guest_phys_addr: addr,
            memory_size: size,
            userspace_addr: self.vram.host_addr(),
            flags: KVM_MEM_LOG_DIRTY_PAGES,
        };
        if let Some(old) = self.lfb.take() {
            // SAFETY: a zero-sized region removes the slot.
            if let Err(e) = unsafe { vm.set_user_memory_region(region(old, 0)) } {
                tracing::warn!("cannot unmap the framebuffer at {old:#x}: {e}");
            }
        }
        if let Some(addr) = at {
            // SAFETY: the mapping lives in `self.vram` as long as the VM.
            match unsafe { vm.set_user_memory_region(region(addr, self.vram.len() as u64)) } {
                Ok(()) => self.lfb = Some(addr),
                Err(e) => tracing::warn!("framebuffer at {addr:#x} not mapped ({e}); its accesses trap"),
            }
        }
        self.vga.mark_changed();
    }
}

impl PciDevice for StdVga {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        match bar {
            LFB_BAR => self.vram.read(offset as usize, data),
            MMIO_BAR => {
                let value: u32 = match offset {
                    MMIO_VGA_PORTS..0x420 => u32::from(self.vga_port_read(0x3C0 + (offset - MMIO_VGA_PORTS) as u16)),
                    MMIO_DISPI..0x516 => u32::from(self.dispi_read(((offset - MMIO_DISPI) / 2) as u16)),
                    MMIO_QEXT => 8,
                    0x604 => self.byte_order,
                    _ => 0,
                };
                data.fill(0);
                for (i, b) in data.iter_mut().enumerate().take(4) {
                    *b = (value >> (8 * i)) as u8;
                }
            }
            _ => data.fill(0xFF),
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        match bar {
            LFB_BAR => {
                for (i, &b) in data.iter().enumerate() {
                    self.vram.set_byte(offset as usize + i, b);
                }
                self.vga.mark_changed();
            }
            MMIO_BAR => {
                let mut v = [0u8; 4];
                let n = data.len().min(4);
                v[..n].copy_from_slice(&data[..n]);
                let value = u32::from_le_bytes(v);
                match offset {
                    MMIO_VGA_PORTS..0x420 => {
                        for (i, &b) in data.iter().enumerate() {
                            self.vga_port_write(0x3C0 + (offset - MMIO_VGA_PORTS) as u16 + i as u16, b);
                        }
                    }
                    MMIO_DISPI..0x516 => self.dispi_write(((offset - MMIO_DISPI) / 2) as u16, value as u16),
                    0x604 => self.byte_order = value,
                    _ => {}
                }
            }
            _ => {}
        }
        self.notify();
    }

    fn bar_moved(&mut self, bar: usize, addr: Option<u64>) {
        if bar == LFB_BAR {
            self.map_lfb(addr);
        }
    }
}

/// Which legacy range of the adapter a bus entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyRange {
    /// Ports 0x3B0-0x3DF.
    VgaPorts,
    /// Ports 0x1CE-0x1CF.
    DispiPorts,
    /// Memory 0xA0000-0xBFFFF.
    Window,
}

impl LegacyRange {
    /// Where the range sits and how long it is.
    pub fn span(self) -> (u64, u64) {
        match self {
            LegacyRange::VgaPorts => (u64::from(vga::PORT_BASE), vga::PORT_LEN),
            LegacyRange::DispiPorts => (u64::from(DISPI_INDEX_PORT), 2),
            LegacyRange::Window => (vga::WINDOW_BASE, vga::WINDOW_LEN),
        }
    }
}

/// One of the adapter's legacy ranges on the I/O or MMIO bus.
pub struct Legacy {
    pub vga: Arc<Mutex<StdVga>>,
    pub range: LegacyRange,
}

impl BusDevice for Legacy {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut vga = self.vga.lock().unwrap_or_else(|p| p.into_inner());
        match self.range {
            LegacyRange::VgaPorts => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = vga.vga_port_read(vga::PORT_BASE + (offset as u16) + i as u16);
                }
            }
            LegacyRange::DispiPorts => {
                // 16-bit registers; the data port also answers at 0x1D0
                // on some BIOSes, which we leave out.
                let v = vga.dispi_port_read(offset.min(1)).to_le_bytes();
                for (i, b) in data.iter_mut().enumerate() {
                    *b = v.get(i).copied().unwrap_or(0);
                }
            }
            LegacyRange::Window => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = vga.window_read(offset + i as u64);
                }
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut vga = self.vga.lock().unwrap_or_else(|p| p.into_inner());
        match self.range {
            LegacyRange::VgaPorts => {
                // A 16-bit write to an index port writes index then data.
                for (i, &b) in data.iter().enumerate() {
                    vga.vga_port_write(vga::PORT_BASE + offset as u16 + i as u16, b);
                }
            }
            LegacyRange::DispiPorts => {
                let v = u16::from_le_bytes([data[0], data.get(1).copied().unwrap_or(0)]);
                vga.dispi_port_write(offset.min(1), v);
            }
            LegacyRange::Window => {
                for (i, &b) in data.iter().enumerate() {
                    vga.window_write(offset + i as u64, b);
                }
            }
        }
        vga.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dispi(v: &mut StdVga, index: u16, value: u16) {
        v.dispi_port_write(0, index);
        v.dispi_port_write(1, value);
    }

    #[test]
    fn pci_identity_and_bars() {
        let v = StdVga::new(None, 0).unwrap();
        let mut id = [0u8; 4];
        v.config().read(0, &mut id);
        assert_eq!(id, [0x34, 0x12, 0x11, 0x11]);
        assert_eq!(v.config().u8(0x0B), 0x03, "display class");
        assert_eq!(v.config().bar(0).unwrap().size, VRAM_SIZE as u64);
        assert_eq!(v.config().bar(2).unwrap().size, 0x1000);
    }

    #[test]
    fn dispi_sets_a_linear_mode_clears_it_and_reports_caps() {
        let mut v = StdVga::new(None, 0).unwrap();
        v.dispi_port_write(0, DISPI_ID as u16);
        assert_eq!(v.dispi_port_read(1), DISPI_ID5);
        dispi(&mut v, DISPI_ENABLE as u16, GETCAPS);
        v.dispi_port_write(0, DISPI_XRES as u16);
        assert_eq!(v.dispi_port_read(1), MAX_XRES);
        v.vram().set_byte(100, 0xAB);
        dispi(&mut v, DISPI_ENABLE as u16, 0);
        dispi(&mut v, DISPI_XRES as u16, 640);
        dispi(&mut v, DISPI_YRES as u16, 480);
        dispi(&mut v, DISPI_BPP as u16, 32);
        dispi(&mut v, DISPI_ENABLE as u16, ENABLED | 0x40);
        assert_eq!(v.vram().byte(100), 0, "enabling clears the screen");
        let m = v.linear_mode().unwrap();
        assert_eq!((m.width, m.height, m.bpp, m.line_bytes, m.start), (640, 480, 32, 2560, 0));
        // A blue pixel at (1, 2), written as the guest would (BGRX).
        v.bar_write(0, (2 * 2560 + 4) as u64, &[0xFF, 0, 0, 0]);
        let f = v.render();
        assert_eq!((f.width, f.height), (640, 480));
        assert_eq!(f.pixel(1, 2), 0x0000FF);
        assert_eq!(v.take_change(), Change::All);
        assert_eq!(v.take_change(), Change::None);
        // Bad values are refused: an odd width, 12 bpp.
        dispi(&mut v, DISPI_XRES as u16, 641);
        dispi(&mut v, DISPI_BPP as u16, 12);
        let m = v.linear_mode().unwrap();
        assert_eq!((m.width, m.bpp), (640, 32));
    }

    #[test]
    fn the_bank_window_and_the_mmio_bar_reach_the_same_registers() {
        let mut v = StdVga::new(None, 0).unwrap();
        // Through the MMIO BAR, as Linux's bochs driver does.
        v.bar_write(2, 0x500 + 2 * DISPI_XRES as u64, &800u16.to_le_bytes());
        v.bar_write(2, 0x500 + 2 * DISPI_YRES as u64, &600u16.to_le_bytes());
        v.bar_write(2, 0x500 + 2 * DISPI_BPP as u64, &16u16.to_le_bytes());
        v.bar_write(2, 0x500 + 2 * DISPI_ENABLE as u64, &(ENABLED).to_le_bytes());
        v.bar_write(2, 0x500 + 2 * DISPI_BANK as u64, &1u16.to_le_bytes());
        // 0xF800: red in RGB565, at byte 0 of bank 1.
        v.window_write(0, 0x00);
        v.window_write(1, 0xF8);
        assert_eq!(v.vram().byte(0x1_0001), 0xF8);
        let pixel = 0x1_0000 / 2;
        let f = v.render();
        assert_eq!(f.pixel(pixel % 800, pixel / 800), 0xFF0000);
        let mut b = [0u8; 4];
        v.bar_read(2, 0x600, &mut b);
        assert_eq!(u32::from_le_bytes(b), 8);
        v.bar_read(2, 0x500 + 2 * DISPI_XRES as u64, &mut b[..2]);
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), 800);
    }
}
