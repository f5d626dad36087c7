//! A rendered screen, as the VMM's display draws it and RFB sends it: its
//! pixels, shrunk copies (the KVM switch's thumbnails, RFB's SetScale),
//! and PNG (screenshots).

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

    /// The frame as a PNG, for screenshots and the switch's tiles: grey
    /// levels when it is all greys (more than four), a palette of 1, 2, 4
    /// or 8 bits when it has at most 256 colours (text screens have a
    /// handful, and compress to a fraction), RGB otherwise.
    pub fn to_png(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.width.max(1), self.height.max(1));
        encoder.set_compression(png::Compression::Fast);
        let palette = if self.pixels.is_empty() { None } else { self.palette() };
        // Greys (text shrunk for a thumbnail) need no palette chunk.
        let grey = |p: &u32| (p >> 16) & 0xFF == p & 0xFF && (p >> 8) & 0xFF == p & 0xFF;
        if palette.as_ref().is_some_and(|p| p.len() > 4 && p.iter().all(grey)) {
            encoder.set_color(png::ColorType::Grayscale);
            encoder.set_depth(png::BitDepth::Eight);
            let data: Vec<u8> = self.pixels.iter().map(|p| *p as u8).collect();
            if let Ok(mut writer) = encoder.write_header() {
                let _ = writer.write_image_data(&data);
            }
            return out;
        }
        let data: Vec<u8> = match palette {
            Some(palette) => {
                let bits: u32 = match palette.len() {
                    0..=2 => 1,
                    3..=4 => 2,
                    5..=16 => 4,
                    _ => 8,
                };
                encoder.set_color(png::ColorType::Indexed);
                encoder.set_depth(match bits {
                    1 => png::BitDepth::One,
                    2 => png::BitDepth::Two,
                    4 => png::BitDepth::Four,
                    _ => png::BitDepth::Eight,
                });
                encoder.set_palette(rgb_bytes(&palette));
                let index = |p: u32| palette.binary_search(&p).unwrap_or(0) as u8;
                let mut packed = Vec::with_capacity((self.width * bits).div_ceil(8) as usize * self.height as usize);
                for row in self.pixels.chunks(self.width as usize) {
                    let (mut byte, mut used) = (0u8, 0);
                    for &p in row {
                        byte = if bits == 8 { index(p) } else { (byte << bits) | index(p) };
                        used += bits;
                        if used == 8 {
                            packed.push(byte);
                            (byte, used) = (0, 0);
                        }
                    }
                    if used > 0 {
                        packed.push(byte << (8 - used));
                    }
                }
                packed
            }
            None => {
                encoder.set_color(png::ColorType::Rgb);
                encoder.set_depth(png::BitDepth::Eight);
                if self.pixels.is_empty() {
                    vec![0; 3]
                } else {
                    rgb_bytes(&self.pixels)
                }
            }
        };
        // Writing into a Vec cannot fail, and the sizes agree.
        if let Ok(mut writer) = encoder.write_header() {
            let _ = writer.write_image_data(&data);
        }
        out
    }

    /// The frame's colours, sorted, if there are at most 256.
    fn palette(&self) -> Option<Vec<u32>> {
        let mut colours: Vec<u32> = Vec::with_capacity(16);
        for &p in &self.pixels {
            if let Err(at) = colours.binary_search(&p) {
                if colours.len() == 256 {
                    return None;
                }
                colours.insert(at, p);
            }
        }
        Some(colours)
    }
}

impl Frame {
    /// Decodes a PNG of any colour type (screenshots, for tests and
    /// tools); `None` if it is not a PNG.
    pub fn from_png(png: &[u8]) -> Option<Frame> {
        let mut decoder = png::Decoder::new(std::io::Cursor::new(png));
        decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = decoder.read_info().ok()?;
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).ok()?;
        let step = info.color_type.samples();
        let grey = matches!(info.color_type, png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha);
        let pixels = buf[..info.buffer_size()]
            .chunks(step)
            .map(|p| {
                if grey {
                    u32::from(p[0]) * 0x010101
                } else {
                    u32::from(p[0]) << 16 | u32::from(p[1]) << 8 | u32::from(p[2])
                }
            })
            .collect();
        Some(Frame { width: info.width, height: info.height, pixels })
    }
}

/// 0x00RRGGBB pixels as R, G, B bytes.
fn rgb_bytes(pixels: &[u32]) -> Vec<u8> {
    pixels.iter().flat_map(|p| [(p >> 16) as u8, (p >> 8) as u8, *p as u8]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(png: &[u8]) -> (u32, u32, Vec<u32>) {
        let f = Frame::from_png(png).unwrap();
        (f.width, f.height, f.pixels)
    }

    #[test]
    fn pngs_use_a_palette_when_the_colours_fit_and_decode_to_the_frame() {
        for colours in [1u32, 2, 3, 5, 17, 256, 300] {
            let mut f = Frame::new(37, 11);
            for (i, p) in f.pixels.iter_mut().enumerate() {
                *p = (i as u32 % colours) * 0x0101;
            }
            let png = f.to_png();
            let (w, h, px) = decode(&png);
            assert_eq!((w, h), (37, 11));
            assert_eq!(px, f.pixels, "{colours} colours");
            let indexed = png[25] == 3; // IHDR's colour type
            assert_eq!(indexed, colours <= 256, "{colours} colours");
        }
        // Greys: a grey-level PNG.
        let mut f = Frame::new(16, 3);
        for (i, p) in f.pixels.iter_mut().enumerate() {
            *p = (i as u32 % 9) * 0x1F1F1F;
        }
        let png = f.to_png();
        assert_eq!(png[25], 0, "grey levels");
        assert_eq!(decode(&png).2, f.pixels);
    }

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
