//! The RFB protocol (RFC 6143) as kvmos speaks it, shared by the VMM's VNC
//! server and the panel's KVM switch (which watches and types into every
//! VM's screen over it): the messages a client sends, parsed from a byte
//! buffer; pixel formats; the Raw and ZRLE encodings of a screen area;
//! [`client`], a small viewer; and [`frame`], the rendered screen both
//! sides draw into.

pub mod client;
pub mod frame;

use crate::frame::Frame;
use flate2::{Compress, Compression, FlushCompress};

pub const VERSION: &[u8; 12] = b"RFB 003.008\n";
pub const SECURITY_NONE: u8 = 1;

pub const ENCODING_RAW: i32 = 0;
pub const ENCODING_ZRLE: i32 = 16;
pub const ENCODING_DESKTOP_SIZE: i32 = -223;
/// QEMU's extended key event: keys as XT scancodes.
pub const ENCODING_QEMU_EXTENDED_KEY: i32 = -258;

/// Bytes of a ClientCutText beyond which the client is dropped.
const MAX_CUT_TEXT: u32 = 1 << 20;
pub const TILE: u32 = 64;

/// How the client wants its pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelFormat {
    pub bits_per_pixel: u8,
    pub depth: u8,
    pub big_endian: bool,
    pub true_colour: bool,
    pub red_max: u16,
    pub green_max: u16,
    pub blue_max: u16,
    pub red_shift: u8,
    pub green_shift: u8,
    pub blue_shift: u8,
}

impl PixelFormat {
    /// The server's native format, sent in ServerInit: 32 bits, 0x00RRGGBB
    /// little-endian.
    pub const NATIVE: PixelFormat = PixelFormat {
        bits_per_pixel: 32,
        depth: 24,
        big_endian: false,
        true_colour: true,
        red_max: 255,
        green_max: 255,
        blue_max: 255,
        red_shift: 16,
        green_shift: 8,
        blue_shift: 0,
    };

    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = self.bits_per_pixel;
        b[1] = self.depth;
        b[2] = u8::from(self.big_endian);
        b[3] = u8::from(self.true_colour);
        b[4..6].copy_from_slice(&self.red_max.to_be_bytes());
        b[6..8].copy_from_slice(&self.green_max.to_be_bytes());
        b[8..10].copy_from_slice(&self.blue_max.to_be_bytes());
        b[10] = self.red_shift;
        b[11] = self.green_shift;
        b[12] = self.blue_shift;
        b
    }

    pub fn from_bytes(b: &[u8; 16]) -> Self {
        Self {
            bits_per_pixel: b[0],
            depth: b[1],
            big_endian: b[2] != 0,
            true_colour: b[3] != 0,
            red_max: u16::from_be_bytes([b[4], b[5]]),
            green_max: u16::from_be_bytes([b[6], b[7]]),
            blue_max: u16::from_be_bytes([b[8], b[9]]),
            red_shift: b[10],
            green_shift: b[11],
            blue_shift: b[12],
        }
    }

    /// Whether this server can produce the format: true colour at 8, 16
    /// or 32 bits, with shifts that fit.
    pub fn supported(&self) -> bool {
        let bits = u32::from(self.bits_per_pixel);
        self.true_colour
            && matches!(bits, 8 | 16 | 32)
            && [(self.red_max, self.red_shift), (self.green_max, self.green_shift), (self.blue_max, self.blue_shift)]
                .iter()
                .all(|&(max, shift)| u32::from(shift) < bits && (u64::from(max) << shift) < (1u64 << bits))
    }

    fn bytes(&self) -> usize {
        usize::from(self.bits_per_pixel / 8)
    }

    /// 0x00RRGGBB in this format, as a value.
    fn value(&self, rgb: u32) -> u32 {
        let scale = |c: u32, max: u16| (c * u32::from(max) + 127) / 255;
        (scale((rgb >> 16) & 0xFF, self.red_max) << self.red_shift)
            | (scale((rgb >> 8) & 0xFF, self.green_max) << self.green_shift)
            | (scale(rgb & 0xFF, self.blue_max) << self.blue_shift)
    }

    fn put(&self, out: &mut Vec<u8>, value: u32, bytes: usize) {
        let le = value.to_le_bytes();
        if self.big_endian {
            out.extend(le[..bytes].iter().rev());
        } else {
            out.extend_from_slice(&le[..bytes]);
        }
    }

    pub fn push_pixel(&self, out: &mut Vec<u8>, rgb: u32) {
        self.put(out, self.value(rgb), self.bytes());
    }

    /// ZRLE's compressed pixel: 3 bytes when a 32-bit true-colour pixel's
    /// colour bits all sit in its low (or high) 3 bytes.
    fn push_cpixel(&self, out: &mut Vec<u8>, rgb: u32) {
        let value = self.value(rgb);
        let colour_bits = (u32::from(self.red_max) << self.red_shift)
            | (u32::from(self.green_max) << self.green_shift)
            | (u32::from(self.blue_max) << self.blue_shift);
        if self.bits_per_pixel == 32 && self.depth <= 24 && colour_bits & 0xFF00_0000 == 0 {
            self.put(out, value, 3);
        } else if self.bits_per_pixel == 32 && self.depth <= 24 && colour_bits & 0xFF == 0 {
            self.put(out, value >> 8, 3);
        } else {
            self.put(out, value, self.bytes());
        }
    }
}

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    SetPixelFormat(PixelFormat),
    SetEncodings(Vec<i32>),
    UpdateRequest {
        incremental: bool,
        x: u16,
        y: u16,
        w: u16,
        h: u16,
    },
    Key {
        down: bool,
        keysym: u32,
    },
    Pointer {
        buttons: u8,
        x: u16,
        y: u16,
    },
    CutText,
    /// QEMU's extended key event: the XT scancode (0xE0 keys with 0x80).
    ExtendedKey {
        down: bool,
        keysym: u32,
        keycode: u32,
    },
    /// UltraVNC's SetScale: the client wants the screen shrunk by this
    /// whole factor (1 is full size), for thumbnails and multiviewers.
    SetScale(u8),
}

#[derive(Debug, Clone, PartialEq, Eq, displaydoc::Display)]
pub enum ProtocolError {
    /// unknown message type {0}
    UnknownMessage(u8),
    /// unknown QEMU message {0}
    UnknownQemuMessage(u8),
    /// cut text of {0} bytes is too long
    CutTextTooLong(u32),
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Parses the first message in `buf`: `Ok(None)` if more bytes are needed,
/// else the message and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(ClientMessage, usize)>, ProtocolError> {
    let Some(&kind) = buf.first() else { return Ok(None) };
    let need = |n: usize| buf.len() >= n;
    Ok(match kind {
        0 if need(20) => {
            let mut f = [0u8; 16];
            f.copy_from_slice(&buf[4..20]);
            Some((ClientMessage::SetPixelFormat(PixelFormat::from_bytes(&f)), 20))
        }
        2 if need(4) => {
            let n = usize::from(be16(&buf[2..]));
            if need(4 + 4 * n) {
                let list = (0..n).map(|i| be32(&buf[4 + 4 * i..]) as i32).collect();
                Some((ClientMessage::SetEncodings(list), 4 + 4 * n))
            } else {
                None
            }
        }
        3 if need(10) => Some((
            ClientMessage::UpdateRequest {
                incremental: buf[1] != 0,
                x: be16(&buf[2..]),
                y: be16(&buf[4..]),
                w: be16(&buf[6..]),
                h: be16(&buf[8..]),
            },
            10,
        )),
        4 if need(8) => Some((ClientMessage::Key { down: buf[1] != 0, keysym: be32(&buf[4..]) }, 8)),
        5 if need(6) => Some((ClientMessage::Pointer { buttons: buf[1], x: be16(&buf[2..]), y: be16(&buf[4..]) }, 6)),
        6 if need(8) => {
            let len = be32(&buf[4..]);
            if len > MAX_CUT_TEXT {
                return Err(ProtocolError::CutTextTooLong(len));
            }
            need(8 + len as usize).then_some((ClientMessage::CutText, 8 + len as usize))
        }
        8 if need(4) => Some((ClientMessage::SetScale(buf[1]), 4)),
        255 if need(2) => match buf[1] {
            0 if need(12) => Some((
                ClientMessage::ExtendedKey {
                    down: be16(&buf[2..]) != 0,
                    keysym: be32(&buf[4..]),
                    keycode: be32(&buf[8..]),
                },
                12,
            )),
            0 => None,
            other => return Err(ProtocolError::UnknownQemuMessage(other)),
        },
        0 | 2..=6 | 8 | 255 => None,
        other => return Err(ProtocolError::UnknownMessage(other)),
    })
}

/// A screen area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

/// The header of one rectangle of a FramebufferUpdate.
pub fn rect_header(out: &mut Vec<u8>, r: Rect, encoding: i32) {
    for v in [r.x, r.y, r.w, r.h] {
        out.extend_from_slice(&(v as u16).to_be_bytes());
    }
    out.extend_from_slice(&encoding.to_be_bytes());
}

/// The pixels of a rectangle in the client's format, row by row.
pub fn encode_raw(out: &mut Vec<u8>, frame: &Frame, format: &PixelFormat, r: Rect) {
    let Rect { x, y, w, h } = r;
    for row in y..y + h {
        let start = (row * frame.width + x) as usize;
        for &p in &frame.pixels[start..start + w as usize] {
            format.push_pixel(out, p);
        }
    }
}

/// A ZRLE encoder: one zlib stream for the life of the connection, as the
/// encoding requires.
pub struct Zrle {
    zlib: Compress,
    scratch: Vec<u8>,
}

impl Default for Zrle {
    fn default() -> Self {
        Self { zlib: Compress::new(Compression::new(9), true), scratch: Vec::new() }
    }
}

impl Zrle {
    /// Appends a rectangle's ZRLE data (length and zlib bytes).
    pub fn encode(&mut self, out: &mut Vec<u8>, frame: &Frame, format: &PixelFormat, r: Rect) {
        let Rect { x, y, w, h } = r;
        self.scratch.clear();
        let mut ty = y;
        while ty < y + h {
            let th = TILE.min(y + h - ty);
            let mut tx = x;
            while tx < x + w {
                let tw = TILE.min(x + w - tx);
                encode_tile(&mut self.scratch, frame, format, Rect { x: tx, y: ty, w: tw, h: th });
                tx += tw;
            }
            ty += th;
        }
        let mut compressed = Vec::with_capacity(self.scratch.len() / 2 + 64);
        let mut input = &self.scratch[..];
        loop {
            compressed.reserve(input.len() / 2 + 1024);
            let before = self.zlib.total_in();
            let status = self.zlib.compress_vec(input, &mut compressed, FlushCompress::Sync);
            let used = (self.zlib.total_in() - before) as usize;
            input = &input[used..];
            // Done once all input is in and the sync flush fit.
            if status.is_err() || (input.is_empty() && compressed.len() < compressed.capacity()) {
                break;
            }
        }
        out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
        out.extend_from_slice(&compressed);
    }
}

/// One ZRLE tile: solid when it has one colour, a packed palette for up to
/// 16 colours (text screens need two), raw otherwise.
fn encode_tile(out: &mut Vec<u8>, frame: &Frame, format: &PixelFormat, r: Rect) {
    let Rect { x, y, w, h } = r;
    let mut palette: Vec<u32> = Vec::with_capacity(16);
    'scan: for row in y..y + h {
        let start = (row * frame.width + x) as usize;
        for &p in &frame.pixels[start..start + w as usize] {
            if !palette.contains(&p) {
                if palette.len() == 16 {
                    palette.clear();
                    break 'scan;
                }
                palette.push(p);
            }
        }
    }
    match palette.len() {
        1 => {
            out.push(1);
            format.push_cpixel(out, palette[0]);
        }
        n @ 2..=16 => {
            out.push(n as u8);
            for &c in &palette {
                format.push_cpixel(out, c);
            }
            let bits = match n {
                2 => 1,
                3..=4 => 2,
                _ => 4,
            };
            for row in y..y + h {
                let start = (row * frame.width + x) as usize;
                let (mut byte, mut used) = (0u8, 0);
                for &p in &frame.pixels[start..start + w as usize] {
                    let index = palette.iter().position(|&c| c == p).unwrap_or(0) as u8;
                    byte = (byte << bits) | index;
                    used += bits;
                    if used == 8 {
                        out.push(byte);
                        (byte, used) = (0, 0);
                    }
                }
                if used > 0 {
                    out.push(byte << (8 - used));
                }
            }
        }
        _ => {
            out.push(0);
            for row in y..y + h {
                let start = (row * frame.width + x) as usize;
                for &p in &frame.pixels[start..start + w as usize] {
                    format.push_cpixel(out, p);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_whole_or_wait_for_more() {
        let req = [3, 1, 0, 0, 0, 0, 0x04, 0x00, 0x03, 0x00];
        assert_eq!(
            parse(&req),
            Ok(Some((ClientMessage::UpdateRequest { incremental: true, x: 0, y: 0, w: 1024, h: 768 }, 10)))
        );
        assert_eq!(parse(&req[..9]), Ok(None));
        let enc = [2, 0, 0, 2, 0, 0, 0, 16, 0xFF, 0xFF, 0xFF, 0x21];
        assert_eq!(parse(&enc), Ok(Some((ClientMessage::SetEncodings(vec![16, -223]), 12))));
        let key = [255, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 0x1E];
        assert_eq!(parse(&key), Ok(Some((ClientMessage::ExtendedKey { down: true, keysym: 0x61, keycode: 0x1E }, 12))));
        assert_eq!(parse(&[6, 0, 0, 0, 0, 0, 0, 2, b'h']), Ok(None));
        assert_eq!(parse(&[6, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']), Ok(Some((ClientMessage::CutText, 10))));
        assert_eq!(parse(&[6, 0, 0, 0, 0xFF, 0, 0, 0]), Err(ProtocolError::CutTextTooLong(0xFF00_0000)));
        assert_eq!(parse(&[8, 4, 0]), Ok(None));
        assert_eq!(parse(&[8, 4, 0, 0]), Ok(Some((ClientMessage::SetScale(4), 4))));
        assert_eq!(parse(&[9]), Err(ProtocolError::UnknownMessage(9)));
        assert_eq!(parse(&[255, 7]), Err(ProtocolError::UnknownQemuMessage(7)));
    }

    #[test]
    fn pixel_formats_convert_and_unsupported_ones_are_refused() {
        let mut out = Vec::new();
        PixelFormat::NATIVE.push_pixel(&mut out, 0x112233);
        assert_eq!(out, [0x33, 0x22, 0x11, 0]);
        // noVNC's format: red in the low byte.
        let rgbx = PixelFormat { red_shift: 0, blue_shift: 16, ..PixelFormat::NATIVE };
        out.clear();
        rgbx.push_pixel(&mut out, 0x112233);
        assert_eq!(out, [0x11, 0x22, 0x33, 0]);
        let rgb565 = PixelFormat {
            bits_per_pixel: 16,
            depth: 16,
            big_endian: true,
            red_max: 31,
            green_max: 63,
            blue_max: 31,
            red_shift: 11,
            green_shift: 5,
            blue_shift: 0,
            ..PixelFormat::NATIVE
        };
        assert!(rgb565.supported());
        out.clear();
        rgb565.push_pixel(&mut out, 0xFF0000);
        assert_eq!(out, [0xF8, 0x00]);
        assert!(!PixelFormat { true_colour: false, ..PixelFormat::NATIVE }.supported());
        assert!(!PixelFormat { bits_per_pixel: 24, ..PixelFormat::NATIVE }.supported());
        assert!(!PixelFormat { red_shift: 40, ..PixelFormat::NATIVE }.supported());
        assert_eq!(PixelFormat::from_bytes(&PixelFormat::NATIVE.to_bytes()), PixelFormat::NATIVE);
    }

    /// Inflates one rectangle's ZRLE data and decodes its tiles, as the
    /// test viewer does.
    fn decode_zrle(data: &[u8], w: u32, h: u32) -> Vec<u32> {
        let len = be32(data) as usize;
        let mut plain = Vec::with_capacity(1 << 20);
        let mut z = flate2::Decompress::new(true);
        z.decompress_vec(&data[4..4 + len], &mut plain, flate2::FlushDecompress::Sync).unwrap();
        crate::client::decode_zrle(&plain, w, h).unwrap()
    }

    #[test]
    fn zrle_round_trips_solid_palette_and_raw_tiles() {
        let mut f = Frame::new(150, 70);
        for y in 0..70 {
            for x in 0..150 {
                f.pixels[(y * 150 + x) as usize] = match x {
                    0..64 => 0x203040,
                    64..128 => {
                        if (x + y) % 3 == 0 {
                            0xFFFFFF
                        } else {
                            0x000080
                        }
                    }
                    _ => (x * 7919 + y * 104729) & 0xFFFFFF,
                };
            }
        }
        let mut z = Zrle::default();
        let mut out = Vec::new();
        z.encode(&mut out, &f, &PixelFormat::NATIVE, Rect { x: 0, y: 0, w: 150, h: 70 });
        assert_eq!(decode_zrle(&out, 150, 70), f.pixels);
        // The stream goes on: a second rectangle compresses against the first.
        let mut again = Vec::new();
        z.encode(&mut again, &f, &PixelFormat::NATIVE, Rect { x: 0, y: 0, w: 150, h: 70 });
        assert!(again.len() < out.len(), "{} vs {}", again.len(), out.len());
    }
}
