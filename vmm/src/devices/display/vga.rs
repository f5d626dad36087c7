//! The VGA core: the registers at ports 0x3B0-0x3DF (attribute
//! controller, sequencer, DAC, graphics controller, CRT controller), the
//! 128 KiB window at 0xA0000 onto four 64 KiB planes, and rendering of
//! text modes (with the font the VGA BIOS loaded into plane 2, as on real
//! hardware) and the 16- and 256-colour graphics modes. QEMU's
//! `hw/display/vga.c` is the reference; the planes are interleaved in video
//! memory the way QEMU keeps them (plane `p` of address `a` at byte
//! `4a + p`), so chain-4 modes read video memory linearly.

use super::vram::Vram;
use super::{Change, Frame};

/// Ports from 0x3B0 to 0x3DF.
pub const PORT_BASE: u16 = 0x3B0;
pub const PORT_LEN: u64 = 0x30;
/// The legacy memory window.
pub const WINDOW_BASE: u64 = 0xA_0000;
pub const WINDOW_LEN: u64 = 0x2_0000;

// Sequencer.
const SR_CLOCKING: usize = 1;
const SR_PLANE_MASK: usize = 2;
const SR_CHAR_MAP: usize = 3;
const SR_MEMORY_MODE: usize = 4;
const SR04_CHAIN4: u8 = 0x08;
const SR01_SCREEN_OFF: u8 = 0x20;
const SR01_8DOT: u8 = 0x01;
// Graphics controller.
const GR_SET_RESET: usize = 0;
const GR_ENABLE_SET_RESET: usize = 1;
const GR_COLOR_COMPARE: usize = 2;
const GR_DATA_ROTATE: usize = 3;
const GR_READ_PLANE: usize = 4;
const GR_MODE: usize = 5;
const GR_MISC: usize = 6;
const GR_COLOR_DONT_CARE: usize = 7;
const GR_BIT_MASK: usize = 8;
// Attribute controller.
const AR_MODE: usize = 0x10;
const AR_PLANE_ENABLE: usize = 0x12;
const AR_COLOR_PAGE: usize = 0x14;
const AR_PALETTE_ADDRESS_SOURCE: u8 = 0x20;
// CRT controller.
const CR_H_DISPLAY_END: usize = 0x01;
const CR_OVERFLOW: usize = 0x07;
const CR_MAX_SCAN: usize = 0x09;
const CR_CURSOR_START: usize = 0x0A;
const CR_CURSOR_END: usize = 0x0B;
const CR_START_HI: usize = 0x0C;
const CR_START_LO: usize = 0x0D;
const CR_CURSOR_HI: usize = 0x0E;
const CR_CURSOR_LO: usize = 0x0F;
const CR_V_DISPLAY_END: usize = 0x12;
const CR_OFFSET: usize = 0x13;

/// Input status 1: display enable and vertical retrace, toggled on every
/// read so that guests polling for retrace move on.
const ST01_TOGGLE: u8 = 0x09;

/// Four bits to four bytes: bit `p` set → byte `p` all ones.
fn expand4(bits: u8) -> u32 {
    (0..4).filter(|p| bits & (1 << p) != 0).map(|p| 0xFFu32 << (8 * p)).fold(0, |a, b| a | b)
}

/// 6-bit DAC value to 8 bits.
fn c6_to_8(v: u8) -> u32 {
    let v = u32::from(v & 0x3F);
    (v << 2) | (v >> 4)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Blank,
    Text,
    Graphics16,
    Graphics256,
}

#[derive(Debug)]
pub struct Vga {
    pub sr: [u8; 8],
    sr_index: u8,
    pub gr: [u8; 16],
    gr_index: u8,
    pub ar: [u8; 0x15],
    ar_index: u8,
    ar_flip_flop: bool,
    pub cr: [u8; 0x19],
    cr_index: u8,
    misc_output: u8,
    feature_control: u8,
    st01: u8,
    dac_read_index: u8,
    dac_write_index: u8,
    dac_sub_index: u8,
    dac_state: u8,
    dac_cache: [u8; 3],
    /// 256 entries of 6-bit R, G, B.
    pub palette: [u8; 768],
    latch: u32,
    /// Added to window addresses in the 128 KiB map mode (Bochs VBE banks
    /// use their own path).
    pub bank_offset: usize,
    /// Something visible changed since [`Vga::take_change`].
    changed: bool,
}

impl Default for Vga {
    fn default() -> Self {
        Self {
            sr: [0; 8],
            sr_index: 0,
            gr: [0; 16],
            gr_index: 0,
            ar: [0; 0x15],
            ar_index: 0,
            ar_flip_flop: false,
            cr: [0; 0x19],
            cr_index: 0,
            misc_output: 0,
            feature_control: 0,
            st01: 0,
            dac_read_index: 0,
            dac_write_index: 0,
            dac_sub_index: 0,
            dac_state: 0,
            dac_cache: [0; 3],
            palette: [0; 768],
            latch: 0,
            bank_offset: 0,
            changed: true,
        }
    }
}

impl Vga {
    /// Whether the CRT registers answer at 0x3Dx (colour) or 0x3Bx (mono).
    fn colour(&self) -> bool {
        self.misc_output & 1 != 0
    }

    /// Reads the port at `port` (absolute).
    pub fn port_read(&mut self, port: u16) -> u8 {
        let mono_port = matches!(port, 0x3B4 | 0x3B5 | 0x3BA);
        let colour_port = matches!(port, 0x3D4 | 0x3D5 | 0x3DA);
        if (mono_port && self.colour()) || (colour_port && !self.colour()) {
            return 0xFF;
        }
        match port {
            0x3C0 => self.ar_index,
            0x3C1 => self.ar.get(usize::from(self.ar_index & 0x1F)).copied().unwrap_or(0),
            0x3C2 => 0,
            0x3C4 => self.sr_index,
            0x3C5 => self.sr[usize::from(self.sr_index & 7)],
            0x3C7 => self.dac_state,
            0x3C8 => self.dac_write_index,
            0x3C9 => {
                let v = self.palette[usize::from(self.dac_read_index) * 3 + usize::from(self.dac_sub_index)];
                self.dac_sub_index += 1;
                if self.dac_sub_index == 3 {
                    self.dac_sub_index = 0;
                    self.dac_read_index = self.dac_read_index.wrapping_add(1);
                }
                v
            }
            0x3CA => self.feature_control,
            0x3CC => self.misc_output,
            0x3CE => self.gr_index,
            0x3CF => self.gr[usize::from(self.gr_index & 0x0F)],
            0x3B4 | 0x3D4 => self.cr_index,
            0x3B5 | 0x3D5 => self.cr.get(usize::from(self.cr_index)).copied().unwrap_or(0xFF),
            0x3BA | 0x3DA => {
                self.st01 ^= ST01_TOGGLE;
                self.ar_flip_flop = false;
                self.st01
            }
            _ => 0xFF,
        }
    }

    pub fn port_write(&mut self, port: u16, value: u8) {
        let mono_port = matches!(port, 0x3B4 | 0x3B5 | 0x3BA);
        let colour_port = matches!(port, 0x3D4 | 0x3D5 | 0x3DA);
        if (mono_port && self.colour()) || (colour_port && !self.colour()) {
            return;
        }
        self.changed = true;
        match port {
            0x3C0 | 0x3C1 => {
                if !self.ar_flip_flop {
                    self.ar_index = value & 0x3F;
                } else if let Some(r) = self.ar.get_mut(usize::from(self.ar_index & 0x1F)) {
                    *r = value;
                }
                self.ar_flip_flop = !self.ar_flip_flop;
            }
            0x3C2 => self.misc_output = value & !0x10,
            0x3C4 => self.sr_index = value & 7,
            0x3C5 => self.sr[usize::from(self.sr_index & 7)] = value,
            0x3C7 => {
                self.dac_read_index = value;
                self.dac_sub_index = 0;
                self.dac_state = 3;
            }
            0x3C8 => {
                self.dac_write_index = value;
                self.dac_sub_index = 0;
                self.dac_state = 0;
            }
            0x3C9 => {
                self.dac_cache[usize::from(self.dac_sub_index)] = value & 0x3F;
                self.dac_sub_index += 1;
                if self.dac_sub_index == 3 {
                    let at = usize::from(self.dac_write_index) * 3;
                    self.palette[at..at + 3].copy_from_slice(&self.dac_cache);
                    self.dac_sub_index = 0;
                    self.dac_write_index = self.dac_write_index.wrapping_add(1);
                }
            }
            0x3CE => self.gr_index = value & 0x0F,
            0x3CF => self.gr[usize::from(self.gr_index & 0x0F)] = value,
            0x3B4 | 0x3D4 => self.cr_index = value,
            0x3B5 | 0x3D5 => {
                let i = usize::from(self.cr_index);
                // CR0-7 are write-protected by CR11 bit 7 (except the
                // line-compare bit of CR7).
                let protected = self.cr[0x11] & 0x80 != 0 && i <= 7;
                if protected && i == CR_OVERFLOW {
                    self.cr[i] = (self.cr[i] & !0x10) | (value & 0x10);
                } else if !protected {
                    if let Some(r) = self.cr.get_mut(i) {
                        *r = value;
                    }
                }
            }
            0x3BA | 0x3DA => self.feature_control = value & 0x10,
            _ => {}
        }
    }

    /// Where a window address lands in plane addresses, per the memory map
    /// select; None outside the mapped part.
    fn window_address(&self, offset: u64) -> Option<usize> {
        let addr = (offset & 0x1_FFFF) as usize;
        match (self.gr[GR_MISC] >> 2) & 3 {
            0 => Some(addr),
            1 => (addr < 0x1_0000).then_some(addr + self.bank_offset),
            2 => addr.checked_sub(0x1_0000).filter(|a| *a < 0x8000),
            _ => addr.checked_sub(0x1_8000).filter(|a| *a < 0x8000),
        }
    }

    /// A guest read in the 0xA0000 window.
    pub fn mem_read(&mut self, vram: &Vram, offset: u64) -> u8 {
        let Some(addr) = self.window_address(offset) else { return 0xFF };
        if self.sr[SR_MEMORY_MODE] & SR04_CHAIN4 != 0 {
            return vram.byte(addr);
        }
        if self.gr[GR_MODE] & 0x10 != 0 {
            // Odd/even: even addresses in plane 0 (or 2), odd in 1 (or 3).
            let plane = (self.gr[GR_READ_PLANE] & 2) as usize | (addr & 1);
            return vram.byte(((addr & !1) << 1) | plane);
        }
        self.latch = vram.u32(addr * 4);
        if self.gr[GR_MODE] & 0x08 == 0 {
            // Read mode 0: one plane.
            (self.latch >> ((self.gr[GR_READ_PLANE] & 3) * 8)) as u8
        } else {
            // Read mode 1: colour compare.
            let mut r = (self.latch ^ expand4(self.gr[GR_COLOR_COMPARE])) & expand4(self.gr[GR_COLOR_DONT_CARE]);
            r |= r >> 16;
            r |= r >> 8;
            !(r as u8)
        }
    }

    /// A guest write in the 0xA0000 window.
    pub fn mem_write(&mut self, vram: &Vram, offset: u64, value: u8) {
        let Some(addr) = self.window_address(offset) else { return };
        self.changed = true;
        let plane_mask = self.sr[SR_PLANE_MASK];
        if self.sr[SR_MEMORY_MODE] & SR04_CHAIN4 != 0 {
            if plane_mask & (1 << (addr & 3)) != 0 {
                vram.set_byte(addr, value);
            }
            return;
        }
        if self.gr[GR_MODE] & 0x10 != 0 {
            let plane = (self.gr[GR_READ_PLANE] & 2) as usize | (addr & 1);
            if plane_mask & (1 << plane) != 0 {
                vram.set_byte(((addr & !1) << 1) | plane, value);
            }
            return;
        }
        let rotate = self.gr[GR_DATA_ROTATE] & 7;
        let mut bit_mask = self.gr[GR_BIT_MASK];
        let mut val = match self.gr[GR_MODE] & 3 {
            0 => {
                let v = u32::from(value.rotate_right(u32::from(rotate))) * 0x0101_0101;
                let set_mask = expand4(self.gr[GR_ENABLE_SET_RESET]);
                (v & !set_mask) | (expand4(self.gr[GR_SET_RESET]) & set_mask)
            }
            1 => {
                let write_mask = expand4(plane_mask);
                let old = vram.u32(addr * 4);
                vram.set_u32(addr * 4, (old & !write_mask) | (self.latch & write_mask));
                return;
            }
            2 => expand4(value & 0x0F),
            _ => {
                bit_mask &= value.rotate_right(u32::from(rotate));
                expand4(self.gr[GR_SET_RESET])
            }
        };
        val = match self.gr[GR_DATA_ROTATE] >> 3 & 3 {
            1 => val & self.latch,
            2 => val | self.latch,
            3 => val ^ self.latch,
            _ => val,
        };
        let bits = u32::from(bit_mask) * 0x0101_0101;
        val = (val & bits) | (self.latch & !bits);
        let write_mask = expand4(plane_mask);
        let old = vram.u32(addr * 4);
        vram.set_u32(addr * 4, (old & !write_mask) | (val & write_mask));
    }

    /// Whether anything changed since the last call.
    pub fn take_change(&mut self) -> Change {
        if std::mem::take(&mut self.changed) {
            Change::All
        } else {
            Change::None
        }
    }

    /// Whether a change waits for [`Vga::take_change`].
    pub fn pending(&self) -> bool {
        self.changed
    }

    pub fn mark_changed(&mut self) {
        self.changed = true;
    }

    pub fn mode(&self) -> Mode {
        if self.ar_index & AR_PALETTE_ADDRESS_SOURCE == 0 || self.sr[SR_CLOCKING] & SR01_SCREEN_OFF != 0 {
            return Mode::Blank;
        }
        if self.gr[GR_MISC] & 1 == 0 {
            return Mode::Text;
        }
        match (self.gr[GR_MODE] >> 5) & 3 {
            0 => Mode::Graphics16,
            2 | 3 => Mode::Graphics256,
            // CGA 4-colour modes are not drawn.
            _ => Mode::Blank,
        }
    }

    /// The DAC colour of palette entry `index`.
    fn dac(&self, index: u8) -> u32 {
        self.dac_colour(index, false)
    }

    /// The DAC colour of palette entry `index`, whose values are 6 bits
    /// wide, or 8 (the Bochs VBE 8-bit DAC).
    pub fn dac_colour(&self, index: u8, eight_bit: bool) -> u32 {
        let at = usize::from(index) * 3;
        let c = |v: u8| if eight_bit { u32::from(v) } else { c6_to_8(v) };
        (c(self.palette[at]) << 16) | (c(self.palette[at + 1]) << 8) | c(self.palette[at + 2])
    }

    /// The 16 text/planar colours, through the attribute controller's
    /// palette registers into the DAC.
    fn palette16(&self) -> [u32; 16] {
        let mut out = [0; 16];
        for (i, o) in out.iter_mut().enumerate() {
            let v = self.ar[i];
            let index = if self.ar[AR_MODE] & 0x80 != 0 {
                ((self.ar[AR_COLOR_PAGE] & 0x0F) << 4) | (v & 0x0F)
            } else {
                ((self.ar[AR_COLOR_PAGE] & 0x0C) << 4) | (v & 0x3F)
            };
            *o = self.dac(index);
        }
        out
    }

    fn start_address(&self) -> usize {
        (usize::from(self.cr[CR_START_HI]) << 8) | usize::from(self.cr[CR_START_LO])
    }

    /// Bytes from one line to the next in video memory.
    fn line_offset(&self) -> usize {
        usize::from(self.cr[CR_OFFSET]) << 3
    }

    /// Visible scanlines, from the vertical display end.
    fn scanlines(&self) -> u32 {
        let o = u32::from(self.cr[CR_OVERFLOW]);
        let end = u32::from(self.cr[CR_V_DISPLAY_END]) | ((o & 0x02) << 7) | ((o & 0x40) << 3);
        end + 1
    }

    /// The screen as the guest's registers describe it.
    pub fn render(&self, vram: &Vram) -> Frame {
        match self.mode() {
            Mode::Blank => Frame::new(640, 480),
            Mode::Text => self.render_text(vram),
            Mode::Graphics16 => self.render_planar(vram),
            Mode::Graphics256 => self.render_256(vram),
        }
    }

    /// The characters of a text-mode screen, one string per row, with the
    /// code page 437 box and block characters as their Unicode twins and
    /// other non-ASCII cells as spaces; `None` outside text mode. For
    /// scripts and tests that read firmware and boot loader screens.
    pub fn text(&self, vram: &Vram) -> Option<Vec<String>> {
        if self.mode() != Mode::Text {
            return None;
        }
        let (cols, rows, _, _) = self.text_geometry();
        let mut line_base = self.start_address() * 4;
        let mut lines = Vec::with_capacity(rows as usize);
        for _ in 0..rows {
            let mut cells = vec![0u8; cols as usize * 4];
            vram.read(line_base, &mut cells);
            let line: String = cells.chunks(4).map(|cell| cp437(cell[0])).collect();
            lines.push(line.trim_end().to_string());
            line_base += self.line_offset();
        }
        Some(lines)
    }

    /// Columns, rows, character height and width of the text mode.
    fn text_geometry(&self) -> (u32, u32, u32, u32) {
        let cols = u32::from(self.cr[CR_H_DISPLAY_END]) + 1;
        let char_height = u32::from(self.cr[CR_MAX_SCAN] & 0x1F) + 1;
        let rows = (self.scanlines() / char_height).max(1);
        let char_width = if self.sr[SR_CLOCKING] & SR01_8DOT != 0 { 8 } else { 9 };
        (cols.min(200), rows.min(100), char_height, char_width)
    }

    fn render_text(&self, vram: &Vram) -> Frame {
        let (cols, rows, char_height, char_width) = self.text_geometry();
        let mut frame = Frame::new(cols * char_width, rows * char_height);
        let colours = self.palette16();
        // The character map from SR3 (the one attribute bit 3 clear
        // selects): which 8 KiB font block of plane 2.
        let map = self.sr[SR_CHAR_MAP];
        let font_block = usize::from(((map >> 4) & 1) | ((map << 1) & 6));
        let font_base = font_block * 8192 * 4 + 2;
        let blink_enabled = self.ar[AR_MODE] & 0x08 != 0;
        let line_graphics = self.ar[AR_MODE] & 0x04 != 0;
        let cursor = (usize::from(self.cr[CR_CURSOR_HI]) << 8 | usize::from(self.cr[CR_CURSOR_LO]))
            .wrapping_sub(self.start_address());
        let cursor_on = self.cr[CR_CURSOR_START] & 0x20 == 0;
        let (cursor_start, cursor_end) =
            (u32::from(self.cr[CR_CURSOR_START] & 0x1F), u32::from(self.cr[CR_CURSOR_END] & 0x1F));
        let mut line_base = self.start_address() * 4;
        for row in 0..rows {
            let mut cells = vec![0u8; cols as usize * 4];
            vram.read(line_base, &mut cells);
            for col in 0..cols {
                let cell = &cells[col as usize * 4..col as usize * 4 + 4];
                let (ch, attr) = (cell[0], cell[1]);
                let fg = colours[usize::from(attr & 0x0F)];
                let bg_index = if blink_enabled { (attr >> 4) & 7 } else { attr >> 4 };
                let bg = colours[usize::from(bg_index)];
                let glyph = font_base + usize::from(ch) * 32 * 4;
                let is_cursor = cursor_on && cursor == (row * cols + col) as usize;
                for y in 0..char_height {
                    let mut bits = vram.byte(glyph + y as usize * 4);
                    if is_cursor && y >= cursor_start && y <= cursor_end {
                        bits = 0xFF;
                    }
                    let py = row * char_height + y;
                    let line = (py * frame.width) as usize;
                    for x in 0..char_width {
                        let on = if x < 8 {
                            bits & (0x80 >> x) != 0
                        } else {
                            // The ninth column repeats the eighth for the
                            // line-drawing characters.
                            line_graphics && (0xC0..=0xDF).contains(&ch) && bits & 1 != 0
                        };
                        frame.pixels[line + (col * char_width + x) as usize] = if on { fg } else { bg };
                    }
                }
            }
            line_base += self.line_offset();
        }
        frame
    }

    /// How many times each line repeats (double scan and max scan line).
    fn line_repeat(&self) -> u32 {
        let mut repeat = u32::from(self.cr[CR_MAX_SCAN] & 0x1F) + 1;
        if self.cr[CR_MAX_SCAN] & 0x80 != 0 {
            repeat *= 2;
        }
        repeat
    }

    /// Mode 12h and kin: four planes, one bit each per pixel.
    fn render_planar(&self, vram: &Vram) -> Frame {
        let width = (u32::from(self.cr[CR_H_DISPLAY_END]) + 1) * 8;
        let height = (self.scanlines() / self.line_repeat()).max(1);
        let (width, height) = (width.min(2048), height.min(1536));
        let mut frame = Frame::new(width, height);
        let colours = self.palette16();
        let enable = self.ar[AR_PLANE_ENABLE] & 0x0F;
        let mut base = self.start_address() * 4;
        let mut line = vec![0u8; (width as usize / 8) * 4];
        for y in 0..height {
            vram.read(base, &mut line);
            for x in 0..width {
                let unit = &line[(x / 8) as usize * 4..(x / 8) as usize * 4 + 4];
                let bit = 7 - (x % 8);
                let index = (0..4).fold(0u8, |c, p| c | (((unit[p] >> bit) & 1) << p)) & enable;
                frame.pixels[(y * width + x) as usize] = colours[usize::from(index)];
            }
            base += self.line_offset();
        }
        frame
    }

    /// Mode 13h and kin: one byte per pixel, chained.
    fn render_256(&self, vram: &Vram) -> Frame {
        let width = (u32::from(self.cr[CR_H_DISPLAY_END]) + 1) * 4;
        let height = (self.scanlines() / self.line_repeat()).max(1);
        let (width, height) = (width.min(2048), height.min(1536));
        let mut frame = Frame::new(width, height);
        let mut base = self.start_address() * 4;
        let mut line = vec![0u8; width as usize];
        for y in 0..height {
            vram.read(base, &mut line);
            for (x, &index) in line.iter().enumerate() {
                frame.pixels[y as usize * width as usize + x] = self.dac(index);
            }
            base += self.line_offset();
        }
        frame
    }
}

/// A text cell's character as Unicode: ASCII as it is, code page 437's
/// line and block characters (what firmware menus and boot loaders draw
/// boxes with) as their Unicode forms, anything else as a space.
fn cp437(ch: u8) -> char {
    const BOXES: &str = "░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀";
    match ch {
        0x20..=0x7E => char::from(ch),
        0xB0..=0xDF => BOXES.chars().nth(usize::from(ch - 0xB0)).unwrap_or(' '),
        _ => ' ',
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vram() -> Vram {
        Vram::new(256 * 1024).unwrap()
    }

    fn set(v: &mut Vga, index_port: u16, index: u8, value: u8) {
        v.port_write(index_port, index);
        v.port_write(index_port + 1, value);
    }

    /// Mode 3 as the VGA BIOS programs it (80×25, 9×16 cells), with a
    /// grey-on-black palette.
    fn text_mode() -> Vga {
        let mut v = Vga::default();
        v.port_write(0x3C2, 0x67);
        for (i, val) in [(1, 0x00), (2, 0x03), (3, 0x00), (4, 0x02)] {
            set(&mut v, 0x3C4, i, val);
        }
        for (i, val) in [(5, 0x10), (6, 0x0E)] {
            set(&mut v, 0x3CE, i, val);
        }
        for (i, val) in [(0x01, 79), (0x07, 0x1F), (0x09, 0x4F), (0x0A, 0x0D), (0x0B, 0x0E), (0x12, 0x8F), (0x13, 0x28)]
        {
            set(&mut v, 0x3D4, i, val);
        }
        v.port_read(0x3DA);
        for i in 0..16 {
            v.port_write(0x3C0, i);
            v.port_write(0x3C0, i);
        }
        v.port_write(0x3C0, 0x20);
        // DAC: entry 0 black, entry 7 grey, entry 15 white.
        v.port_write(0x3C8, 0);
        for _ in 0..3 {
            v.port_write(0x3C9, 0);
        }
        v.port_write(0x3C8, 7);
        for _ in 0..3 {
            v.port_write(0x3C9, 0x2A);
        }
        v.port_write(0x3C8, 15);
        for _ in 0..3 {
            v.port_write(0x3C9, 0x3F);
        }
        v
    }

    #[test]
    fn text_mode_draws_the_font_from_plane_2_in_the_attribute_colours() {
        let mem = vram();
        let mut v = text_mode();
        // A font load as the VGA BIOS does it: planar, plane 2 only.
        set(&mut v, 0x3C4, 2, 0x04);
        set(&mut v, 0x3C4, 4, 0x06);
        set(&mut v, 0x3CE, 4, 0x02);
        set(&mut v, 0x3CE, 5, 0x00);
        set(&mut v, 0x3CE, 6, 0x04);
        set(&mut v, 0x3CE, 8, 0xFF);
        // Glyph 'A': row 0 is 0b1000_0001, the rest empty.
        v.mem_write(&mem, u64::from(b'A') * 32, 0x81);
        // Back to text: odd/even, planes 0 and 1.
        set(&mut v, 0x3C4, 2, 0x03);
        set(&mut v, 0x3C4, 4, 0x02);
        set(&mut v, 0x3CE, 4, 0x00);
        set(&mut v, 0x3CE, 5, 0x10);
        set(&mut v, 0x3CE, 6, 0x0E);
        // 'A' white on black at row 0, column 1 (0xB8002).
        v.mem_write(&mem, 0x1_8002, b'A');
        v.mem_write(&mem, 0x1_8003, 0x0F);
        assert_eq!(v.mem_read(&mem, 0x1_8002), b'A', "the text buffer reads back");
        let f = v.render(&mem);
        assert_eq!((f.width, f.height), (720, 400));
        assert_eq!(f.pixel(9, 0), 0xFFFFFF, "left pixel of the glyph row");
        assert_eq!(f.pixel(10, 0), 0);
        assert_eq!(f.pixel(16, 0), 0xFFFFFF, "right pixel");
        assert_eq!(f.pixel(17, 0), 0, "ninth column stays background for letters");
        assert_eq!(f.pixel(9, 1), 0);
        // The same screen as text: 80×25, NUL cells as spaces, a box
        // corner from code page 437.
        v.mem_write(&mem, 0x1_8004, 0xC9);
        let text = v.text(&mem).unwrap();
        assert_eq!(text.len(), 25);
        assert_eq!(text[0], " A╔");
        assert_eq!(text[1], "");
    }

    #[test]
    fn the_cursor_is_drawn_on_its_scan_lines() {
        let mem = vram();
        let mut v = text_mode();
        set(&mut v, 0x3D4, 0x0E, 0);
        set(&mut v, 0x3D4, 0x0F, 81);
        v.mem_write(&mem, 0x1_8000 + 81 * 2 + 1, 0x07);
        let f = v.render(&mem);
        assert_eq!(f.pixel(9, 16 + 13), 0xAAAAAA, "cursor line in the foreground colour");
        assert_eq!(f.pixel(9, 16 + 12), 0, "above the cursor");
        set(&mut v, 0x3D4, 0x0A, 0x20);
        assert_eq!(v.render(&mem).pixel(9, 16 + 13), 0, "cursor off");
    }

    #[test]
    fn planar_write_modes_set_reset_and_latches() {
        let mem = vram();
        let mut v = Vga::default();
        set(&mut v, 0x3C4, 2, 0x0F);
        set(&mut v, 0x3CE, 6, 0x05);
        set(&mut v, 0x3CE, 8, 0xFF);
        // Write mode 2: colour 0b1010 to all eight pixels.
        set(&mut v, 0x3CE, 5, 0x02);
        v.mem_write(&mem, 0, 0x0A);
        assert_eq!(mem.u32(0), 0xFF00FF00);
        // Read mode 0 of plane 1, which also loads the latches.
        set(&mut v, 0x3CE, 4, 1);
        set(&mut v, 0x3CE, 5, 0x00);
        assert_eq!(v.mem_read(&mem, 0), 0xFF);
        // Write mode 1 copies the latches elsewhere.
        set(&mut v, 0x3CE, 5, 0x01);
        v.mem_write(&mem, 5, 0);
        assert_eq!(mem.u32(20), 0xFF00FF00);
        // Write mode 0 with set/reset on plane 0 and bit mask 0xF0.
        set(&mut v, 0x3CE, 5, 0x00);
        set(&mut v, 0x3CE, 0, 0x01);
        set(&mut v, 0x3CE, 1, 0x01);
        set(&mut v, 0x3CE, 8, 0xF0);
        v.mem_read(&mem, 0);
        v.mem_write(&mem, 0, 0x00);
        // Plane 0 from set/reset, the others from the data byte (0), in
        // the masked bits; the rest from the latches.
        assert_eq!(mem.u32(0), 0x0F000FF0);
        // Read mode 1: which pixels have colour 0b1010 (the right four;
        // the left four are now 0b0001).
        set(&mut v, 0x3CE, 5, 0x08);
        set(&mut v, 0x3CE, 2, 0x0A);
        set(&mut v, 0x3CE, 7, 0x0F);
        assert_eq!(v.mem_read(&mem, 0), 0x0F);
    }

    #[test]
    fn mode_13h_is_chained_and_double_scanned() {
        let mem = vram();
        let mut v = Vga::default();
        v.port_write(0x3C2, 0x63);
        set(&mut v, 0x3C4, 2, 0x0F);
        set(&mut v, 0x3C4, 4, 0x0E);
        set(&mut v, 0x3CE, 5, 0x40);
        set(&mut v, 0x3CE, 6, 0x05);
        for (i, val) in [(0x01, 79), (0x07, 0x1F), (0x09, 0x41), (0x12, 0x8F), (0x13, 0x28)] {
            set(&mut v, 0x3D4, i, val);
        }
        v.port_read(0x3DA);
        v.port_write(0x3C0, 0x20);
        v.port_write(0x3C8, 4);
        for c in [0x3F, 0, 0] {
            v.port_write(0x3C9, c);
        }
        v.mem_write(&mem, 320 + 3, 4);
        let f = v.render(&mem);
        assert_eq!((f.width, f.height), (320, 200));
        assert_eq!(f.pixel(3, 1), 0xFF0000);
        assert_eq!(f.pixel(2, 1), 0);
        // The DAC reads back what was written.
        v.port_write(0x3C7, 4);
        assert_eq!([v.port_read(0x3C9), v.port_read(0x3C9), v.port_read(0x3C9)], [0x3F, 0, 0]);
    }

    #[test]
    fn retrace_toggles_and_garbage_is_harmless() {
        let mem = vram();
        let mut v = Vga::default();
        v.port_write(0x3C2, 1);
        let a = v.port_read(0x3DA);
        let b = v.port_read(0x3DA);
        assert_ne!(a & 8, b & 8);
        assert_eq!(v.port_read(0x3BA), 0xFF, "mono status is off in colour mode");
        let mut x = 0x9E37_79B9u32;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let port = PORT_BASE + (x % PORT_LEN as u32) as u16;
            match x >> 30 {
                0 => v.port_write(port, (x >> 8) as u8),
                1 => {
                    v.port_read(port);
                }
                2 => v.mem_write(&mem, u64::from(x >> 8) % WINDOW_LEN, x as u8),
                _ => {
                    v.mem_read(&mem, u64::from(x >> 8) % WINDOW_LEN);
                }
            }
            if x.is_multiple_of(5000) {
                let f = v.render(&mem);
                assert_eq!(f.pixels.len(), (f.width * f.height) as usize);
            }
        }
    }
}
