//! The VM's display: QEMU's standard VGA ([`stdvga`]), whose VGA core
//! ([`vga`]) keeps text and legacy graphics modes and whose Bochs VBE
//! registers set the linear framebuffer modes, in video memory ([`vram`])
//! that the guest also sees directly through a KVM memory slot.
//!
//! What the guest shows is rendered into a [`Frame`] for the VNC server
//! and for screenshots.

pub mod stdvga;
pub mod vga;
pub mod vram;

/// A rendered screen: `width` × `height` pixels, row by row, each
/// 0x00RRGGBB.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u32>,
}

impl Frame {
    pub fn new(width: u32, height: u32) -> Self {
        Self { width, height, pixels: vec![0; width as usize * height as usize] }
    }

    pub fn pixel(&self, x: u32, y: u32) -> u32 {
        self.pixels[(y * self.width + x) as usize]
    }

    /// The size of this frame shrunk by a whole `scale` (at least 1×1; a
    /// partial block at the right or bottom edge makes a pixel of its own).
    pub fn scaled_size(&self, scale: u32) -> (u32, u32) {
        let s = scale.max(1);
        (self.width.div_ceil(s).max(1), self.height.div_ceil(s).max(1))
    }

    /// This frame shrunk by `scale` ([`Frame::shrink_into`] on all of it).
    pub fn shrunk(&self, scale: u32) -> Frame {
        let (w, h) = self.scaled_size(scale);
        let mut out = Frame::new(w, h);
        self.shrink_into(&mut out, scale, (0, 0, w, h));
        out
    }

    /// Writes the area `x, y, w, h` of `dst` (this frame shrunk by
    /// `scale`, see [`Frame::scaled_size`]): each of its pixels is the mean
    /// of the `scale`×`scale` block it stands for, so text stays legible
    /// as grey strokes instead of dropping out.
    pub fn shrink_into(&self, dst: &mut Frame, scale: u32, (x, y, w, h): (u32, u32, u32, u32)) {
        let s = scale.max(1);
        for dy in y..(y + h).min(dst.height) {
            let (y0, y1) = (dy * s, ((dy + 1) * s).min(self.height));
            for dx in x..(x + w).min(dst.width) {
                let (x0, x1) = (dx * s, ((dx + 1) * s).min(self.width));
                let (mut r, mut g, mut b, mut n) = (0u32, 0u32, 0u32, 0u32);
                for sy in y0..y1 {
                    let row = (sy * self.width) as usize;
                    for &p in &self.pixels[row + x0 as usize..row + x1 as usize] {
                        r += (p >> 16) & 0xFF;
                        g += (p >> 8) & 0xFF;
                        b += p & 0xFF;
                        n += 1;
                    }
                }
                let n = n.max(1);
                dst.pixels[(dy * dst.width + dx) as usize] = ((r / n) << 16) | ((g / n) << 8) | (b / n);
            }
        }
    }

    /// The frame as an RGB PNG, for screenshots.
    pub fn to_png(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.width.max(1), self.height.max(1));
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fast);
        let rgb: Vec<u8> = if self.pixels.is_empty() {
            vec![0; 3]
        } else {
            self.pixels.iter().flat_map(|p| [(p >> 16) as u8, (p >> 8) as u8, *p as u8]).collect()
        };
        // Writing into a Vec cannot fail, and the sizes agree.
        if let Ok(mut writer) = encoder.write_header() {
            let _ = writer.write_image_data(&rgb);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinking_averages_blocks_and_keeps_partial_edges() {
        // 5×3: a white column at x=0, the rest black; shrunk by 2.
        let mut f = Frame::new(5, 3);
        for y in 0..3 {
            f.pixels[(y * 5) as usize] = 0xFFFFFF;
        }
        assert_eq!(f.scaled_size(2), (3, 2));
        let (w, h) = f.scaled_size(2);
        let mut small = Frame::new(w, h);
        f.shrink_into(&mut small, 2, (0, 0, w, h));
        // Each 2×2 block at the left holds two white pixels of four.
        assert_eq!(small.pixel(0, 0), 0x7F7F7F);
        assert_eq!(small.pixel(1, 0), 0);
        // The bottom row stands for the one source row left: 1 of 2.
        assert_eq!(small.pixel(0, 1), 0x7F7F7F);
        assert_eq!(small.pixel(2, 1), 0, "the right edge's block is one column wide");
        // Scale 1 copies; an area outside the frame is clipped.
        let mut same = Frame::new(5, 3);
        f.shrink_into(&mut same, 1, (0, 0, 99, 99));
        assert_eq!(same, f);
    }
}

/// Where the display changed since the last look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing the guest did can have changed the picture.
    None,
    /// These framebuffer rows (first, count) may have changed.
    Rows(u32, u32),
    /// Anything may have changed (mode, palette, text).
    All,
}
