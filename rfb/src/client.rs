//! A small RFB 3.8 viewer, for the tests and the benchmarks that compare
//! this server with QEMU's: the handshake, update requests, Raw pixels in
//! the native 32-bit format, ZRLE (decoded), DesktopSize, keys, text typed
//! on a US layout, and the pointer. It counts the bytes it receives. It
//! speaks over a Unix socket, or over any byte stream (the panel's screen
//! WebSocket, in the appliance tests).

use crate::{self as rfb, TILE};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

fn bad(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

pub struct Viewer<S = UnixStream> {
    pub stream: S,
    pub width: u32,
    pub height: u32,
    /// 0x00RRGGBB, row by row.
    pub pixels: Vec<u32>,
    /// The server announced QEMU's extended key event.
    pub extended_keys: bool,
    /// Every encoding a rectangle came in, once each.
    pub encodings_seen: Vec<i32>,
    /// The screen areas (x, y, w, h) the last update changed.
    pub changed: Vec<(u32, u32, u32, u32)>,
    /// Bytes received since the handshake.
    pub bytes: usize,
    /// Whether a whole-screen (non-incremental) request went out: the
    /// first request always is one, as RFC 6143 asks (QEMU's server
    /// answers incremental requests only with what changes later).
    full_requested: bool,
    zlib: flate2::Decompress,
}

impl Viewer<UnixStream> {
    /// Connects (retrying for up to 10 s while the socket appears), shakes
    /// hands and asks for `encodings`.
    pub fn connect(path: &Path, encodings: &[i32]) -> std::io::Result<Self> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        Self::over(s, encodings)
    }
}

/// The keysym of Shift_L, and the characters a US layout makes with it.
const SHIFT: u32 = 0xFFE1;
const SHIFTED: &str = "~!@#$%^&*()_+{}|:\"<>?";

impl<S: Read + Write> Viewer<S> {
    /// Shakes hands over `s` (which must time out its reads) and asks for
    /// `encodings`.
    pub fn over(mut s: S, encodings: &[i32]) -> std::io::Result<Self> {
        let mut version = [0u8; 12];
        s.read_exact(&mut version)?;
        if &version[..8] != b"RFB 003." {
            return Err(bad(format!("not an RFB server: {version:?}")));
        }
        s.write_all(b"RFB 003.008\n")?;
        let mut n = [0u8; 1];
        s.read_exact(&mut n)?;
        let mut types = vec![0u8; usize::from(n[0])];
        s.read_exact(&mut types)?;
        if !types.contains(&rfb::SECURITY_NONE) {
            return Err(bad(format!("security types {types:?} without None")));
        }
        s.write_all(&[rfb::SECURITY_NONE])?;
        let mut result = [0u8; 4];
        s.read_exact(&mut result)?;
        if result != [0; 4] {
            return Err(bad("security failed".into()));
        }
        s.write_all(&[1])?;
        let mut init = [0u8; 24];
        s.read_exact(&mut init)?;
        let width = u32::from(u16::from_be_bytes([init[0], init[1]]));
        let height = u32::from(u16::from_be_bytes([init[2], init[3]]));
        let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]);
        let mut name = vec![0u8; name_len as usize];
        s.read_exact(&mut name)?;
        // Our pixel format, whatever the server's.
        let mut msg = vec![0, 0, 0, 0];
        msg.extend_from_slice(&rfb::PixelFormat::NATIVE.to_bytes());
        msg.extend_from_slice(&[2, 0]);
        msg.extend_from_slice(&(encodings.len() as u16).to_be_bytes());
        for e in encodings {
            msg.extend_from_slice(&e.to_be_bytes());
        }
        s.write_all(&msg)?;
        Ok(Self {
            stream: s,
            width,
            height,
            pixels: vec![0; (width * height) as usize],
            extended_keys: false,
            encodings_seen: Vec::new(),
            changed: Vec::new(),
            bytes: 0,
            full_requested: false,
            zlib: flate2::Decompress::new(true),
        })
    }

    pub fn request(&mut self, incremental: bool) -> std::io::Result<()> {
        let (w, h) = (self.width as u16, self.height as u16);
        self.request_area(incremental, w, h)
    }

    pub fn request_area(&mut self, incremental: bool, w: u16, h: u16) -> std::io::Result<()> {
        let incremental = incremental && self.full_requested;
        self.full_requested = true;
        let mut msg = vec![3, u8::from(incremental), 0, 0, 0, 0];
        msg.extend_from_slice(&w.to_be_bytes());
        msg.extend_from_slice(&h.to_be_bytes());
        self.stream.write_all(&msg)
    }

    fn read_exact(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        let mut b = vec![0u8; n];
        self.stream.read_exact(&mut b)?;
        self.bytes += n;
        Ok(b)
    }

    /// Reads one message; applies it if it is a FramebufferUpdate (other
    /// server messages, bell and cut text, are skipped).
    pub fn update(&mut self) -> std::io::Result<()> {
        loop {
            let kind = self.read_exact(1)?[0];
            match kind {
                0 => break,
                2 => continue,
                3 => {
                    let head = self.read_exact(7)?;
                    let len = u32::from_be_bytes([head[3], head[4], head[5], head[6]]);
                    self.read_exact(len as usize)?;
                }
                other => return Err(bad(format!("server message {other}"))),
            }
        }
        let head = self.read_exact(3)?;
        let rects = u16::from_be_bytes([head[1], head[2]]);
        self.changed.clear();
        for _ in 0..rects {
            let r = self.read_exact(12)?;
            let v = |i: usize| u32::from(u16::from_be_bytes([r[i], r[i + 1]]));
            let (x, y, w, h) = (v(0), v(2), v(4), v(6));
            let encoding = i32::from_be_bytes([r[8], r[9], r[10], r[11]]);
            if !self.encodings_seen.contains(&encoding) {
                self.encodings_seen.push(encoding);
            }
            if encoding >= 0 {
                self.changed.push((x, y, w, h));
            }
            if encoding >= 0 && (x + w > self.width || y + h > self.height) {
                return Err(bad(format!("rectangle {x},{y} {w}×{h} outside the screen")));
            }
            match encoding {
                rfb::ENCODING_RAW => {
                    let data = self.read_exact((w * h * 4) as usize)?;
                    for (i, px) in data.chunks(4).enumerate() {
                        let (col, row) = (i as u32 % w, i as u32 / w);
                        self.pixels[((y + row) * self.width + x + col) as usize] =
                            u32::from_le_bytes([px[0], px[1], px[2], px[3]]);
                    }
                }
                rfb::ENCODING_ZRLE => {
                    let len = self.read_exact(4)?;
                    let data = self.read_exact(u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize)?;
                    let mut plain = Vec::with_capacity((w * h * 4 + 4096) as usize);
                    self.zlib
                        .decompress_vec(&data, &mut plain, flate2::FlushDecompress::Sync)
                        .map_err(|e| bad(format!("zlib: {e}")))?;
                    let rect = decode_zrle(&plain, w, h).ok_or_else(|| bad("short ZRLE data".into()))?;
                    for (i, &p) in rect.iter().enumerate() {
                        let (col, row) = (i as u32 % w, i as u32 / w);
                        self.pixels[((y + row) * self.width + x + col) as usize] = p;
                    }
                }
                rfb::ENCODING_DESKTOP_SIZE => {
                    self.width = w;
                    self.height = h;
                    self.pixels = vec![0; (w * h) as usize];
                    self.changed.push((0, 0, w, h));
                }
                rfb::ENCODING_QEMU_EXTENDED_KEY => self.extended_keys = true,
                // QEMU's other pseudo-encodings (LED state, audio...).
                e if e < 0 => {}
                other => return Err(bad(format!("unexpected encoding {other}"))),
            }
        }
        Ok(())
    }

    /// Requests and applies updates until `check` holds, for at most
    /// `timeout`.
    pub fn until(&mut self, timeout: Duration, check: impl Fn(&Self) -> bool) -> std::io::Result<()> {
        let deadline = Instant::now() + timeout;
        while !check(self) {
            if Instant::now() > deadline {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the screen never got there"));
            }
            self.request(true)?;
            self.update()?;
        }
        Ok(())
    }

    pub fn pixel(&self, x: u32, y: u32) -> u32 {
        self.pixels[(y * self.width + x) as usize]
    }

    /// UltraVNC's SetScale: from now on the screen comes shrunk `scale`
    /// times (the server answers with a DesktopSize).
    pub fn set_scale(&mut self, scale: u8) -> std::io::Result<()> {
        self.stream.write_all(&[8, scale, 0, 0])
    }

    /// QEMU's extended key event: a press or release of an XT scancode
    /// (0xE0-prefixed keys with 0x80 added, as QEMU numbers them).
    pub fn scancode(&mut self, keycode: u32, down: bool) -> std::io::Result<()> {
        let mut msg = vec![255, 0];
        msg.extend_from_slice(&u16::from(down).to_be_bytes());
        msg.extend_from_slice(&0u32.to_be_bytes());
        msg.extend_from_slice(&keycode.to_be_bytes());
        self.stream.write_all(&msg)
    }

    /// QEMU's extended key event: press and release of an XT scancode.
    pub fn tap_scancode(&mut self, keycode: u32) -> std::io::Result<()> {
        self.scancode(keycode, true)?;
        self.scancode(keycode, false)
    }

    /// A plain key event: press and release of an X keysym.
    pub fn tap_keysym(&mut self, keysym: u32) -> std::io::Result<()> {
        self.key(keysym, true)?;
        self.key(keysym, false)
    }

    fn key(&mut self, keysym: u32, down: bool) -> std::io::Result<()> {
        let mut msg = vec![4, u8::from(down), 0, 0];
        msg.extend_from_slice(&keysym.to_be_bytes());
        self.stream.write_all(&msg)
    }

    /// Types `text` as a person on a US keyboard would: Shift held for
    /// capitals and shifted symbols, Return for a newline.
    pub fn type_text(&mut self, text: &str) -> std::io::Result<()> {
        for ch in text.chars() {
            let keysym = if ch == '\n' { 0xFF0D } else { u32::from(ch) };
            let shift = ch.is_ascii_uppercase() || SHIFTED.contains(ch);
            if shift {
                self.key(SHIFT, true)?;
            }
            self.tap_keysym(keysym)?;
            if shift {
                self.key(SHIFT, false)?;
            }
        }
        Ok(())
    }

    /// Moves the pointer to (`x`, `y`) with `buttons` held (bit 0 left,
    /// 1 middle, 2 right, 3 and 4 the wheel).
    pub fn pointer(&mut self, x: u16, y: u16, buttons: u8) -> std::io::Result<()> {
        let mut msg = vec![5, buttons];
        msg.extend_from_slice(&x.to_be_bytes());
        msg.extend_from_slice(&y.to_be_bytes());
        self.stream.write_all(&msg)
    }
}

/// Decodes a w×h rectangle of (inflated) ZRLE tiles with 3-byte cpixels:
/// raw, solid, packed palette, and the RLE kinds QEMU also sends.
pub fn decode_zrle(d: &[u8], w: u32, h: u32) -> Option<Vec<u32>> {
    let mut out = vec![0u32; (w * h) as usize];
    let (x, y) = (0, 0);
    let cpixel = |b: &[u8]| Some(u32::from(*b.first()?) | u32::from(*b.get(1)?) << 8 | u32::from(*b.get(2)?) << 16);
    let mut at = 0usize;
    let mut ty = y;
    while ty < y + h {
        let th = TILE.min(y + h - ty);
        let mut tx = x;
        while tx < x + w {
            let tw = TILE.min(x + w - tx);
            let mut tile = Vec::with_capacity((tw * th) as usize);
            let sub = *d.get(at)?;
            at += 1;
            let palette_len = usize::from(sub & 0x7F);
            let palette: Vec<u32> = (0..palette_len).map(|i| cpixel(d.get(at + 3 * i..)?)).collect::<Option<_>>()?;
            at += 3 * palette_len;
            match sub {
                0 => {
                    for _ in 0..tw * th {
                        tile.push(cpixel(d.get(at..)?)?);
                        at += 3;
                    }
                }
                1 => tile.resize((tw * th) as usize, palette[0]),
                2..=16 => {
                    let bits = match sub {
                        2 => 1,
                        3..=4 => 2,
                        _ => 4,
                    };
                    for _ in 0..th {
                        for c in 0..tw {
                            let bit = c * bits;
                            let byte = *d.get(at + (bit / 8) as usize)?;
                            let index = (byte >> (8 - bits - bit % 8)) & ((1 << bits) - 1);
                            tile.push(*palette.get(usize::from(index))?);
                        }
                        at += (tw * bits).div_ceil(8) as usize;
                    }
                }
                128 | 130.. => {
                    while tile.len() < (tw * th) as usize {
                        let (colour, mut run) = if sub == 128 {
                            let c = cpixel(d.get(at..)?)?;
                            at += 3;
                            (c, 1)
                        } else {
                            let i = *d.get(at)?;
                            at += 1;
                            if i & 0x80 == 0 {
                                (*palette.get(usize::from(i))?, 0)
                            } else {
                                (*palette.get(usize::from(i & 0x7F))?, 1)
                            }
                        };
                        if sub == 128 || run == 1 {
                            run = 1;
                            loop {
                                let b = *d.get(at)?;
                                at += 1;
                                run += usize::from(b);
                                if b != 255 {
                                    break;
                                }
                            }
                        } else {
                            run = 1;
                        }
                        tile.extend(std::iter::repeat_n(colour, run));
                    }
                }
                _ => return None,
            }
            for (i, &p) in tile.iter().take((tw * th) as usize).enumerate() {
                let (c, r) = (i as u32 % tw, i as u32 / tw);
                out[((ty + r) * w + tx + c) as usize] = p;
            }
            tx += tw;
        }
        ty += th;
    }
    Some(out)
}
