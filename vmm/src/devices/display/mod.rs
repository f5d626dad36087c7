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
