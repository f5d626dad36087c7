//! The screen, keyboard and mouse on this host's /dev/kvm: SeaBIOS with
//! Debian's VGA BIOS boots `tiny_guest::display_disk`, which writes the
//! text buffer, echoes the scancodes it reads from the i8042 on COM1, sets
//! a VBE mode and fills the framebuffer. A small RFB client (below) checks
//! over the VNC socket what a viewer would see and sends keys.

use kvmos_vmm::tiny_guest;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const VMM: &str = env!("CARGO_BIN_EXE_kvmos-vmm");

const RAW: i32 = 0;
const ZRLE: i32 = 16;
const DESKTOP_SIZE: i32 = -223;
const QEMU_EXTENDED_KEY: i32 = -258;

struct Vm {
    child: Child,
    dir: tempfile::TempDir,
}

impl Vm {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("display.img");
        std::fs::write(&disk, tiny_guest::display_disk()).unwrap();
        let child = Command::new(VMM)
            .args(["--firmware", "bios", "--memory-mib", "64", "--serial", "stdio"])
            .arg("--disk")
            .arg(&disk)
            .arg("--vnc-socket")
            .arg(dir.path().join("vnc.sock"))
            .arg("--api-socket")
            .arg(dir.path().join("api.sock"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("console.out")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("vmm.err")).unwrap())
            .spawn()
            .unwrap();
        Self { child, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.path("console.out")).unwrap_or_default()).into_owned()
    }

    /// Waits until the console has shown `needle` `times` times.
    fn wait_console(&self, needle: &str, times: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.console().matches(needle).count() < times {
            let err = std::fs::read_to_string(self.path("vmm.err")).unwrap_or_default();
            assert!(Instant::now() < deadline, "no {needle:?} on the console: {}\n{err}", self.console());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The VMM's user + system CPU time so far, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal RFB 3.8 viewer: the handshake, update requests, Raw pixels
/// (32-bit 0x00RRGGBB), DesktopSize, ZRLE counted but not decoded, and
/// keys.
struct Viewer {
    s: UnixStream,
    width: u32,
    height: u32,
    pixels: Vec<u32>,
    extended_keys: bool,
    encodings_seen: Vec<i32>,
    bytes: usize,
}

impl Viewer {
    fn connect(path: &Path, encodings: &[i32]) -> Self {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < deadline, "no VNC socket: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut version = [0u8; 12];
        s.read_exact(&mut version).unwrap();
        assert_eq!(&version, b"RFB 003.008\n");
        s.write_all(b"RFB 003.008\n").unwrap();
        let mut n = [0u8; 1];
        s.read_exact(&mut n).unwrap();
        let mut types = vec![0u8; n[0] as usize];
        s.read_exact(&mut types).unwrap();
        assert_eq!(types, [1], "security type None");
        s.write_all(&[1]).unwrap();
        let mut result = [0u8; 4];
        s.read_exact(&mut result).unwrap();
        assert_eq!(result, [0; 4]);
        s.write_all(&[1]).unwrap();
        let mut init = [0u8; 24];
        s.read_exact(&mut init).unwrap();
        let width = u32::from(u16::from_be_bytes([init[0], init[1]]));
        let height = u32::from(u16::from_be_bytes([init[2], init[3]]));
        assert_eq!(init[4..8], [32, 24, 0, 1], "32 bpp, depth 24, little-endian, true colour");
        let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]);
        let mut name = vec![0u8; name_len as usize];
        s.read_exact(&mut name).unwrap();
        let mut msg = vec![2, 0];
        msg.extend_from_slice(&(encodings.len() as u16).to_be_bytes());
        for e in encodings {
            msg.extend_from_slice(&e.to_be_bytes());
        }
        s.write_all(&msg).unwrap();
        Self {
            s,
            width,
            height,
            pixels: vec![0; (width * height) as usize],
            extended_keys: false,
            encodings_seen: Vec::new(),
            bytes: 0,
        }
    }

    fn request(&mut self, incremental: bool) {
        let (w, h) = (self.width as u16, self.height as u16);
        self.request_area(incremental, w, h);
    }

    fn request_area(&mut self, incremental: bool, w: u16, h: u16) {
        let mut msg = vec![3, u8::from(incremental), 0, 0, 0, 0];
        msg.extend_from_slice(&w.to_be_bytes());
        msg.extend_from_slice(&h.to_be_bytes());
        self.s.write_all(&msg).unwrap();
    }

    fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.s.read_exact(&mut b).unwrap();
        self.bytes += n;
        b
    }

    /// Reads one FramebufferUpdate and applies it.
    fn update(&mut self) {
        let head = self.read_exact(4);
        assert_eq!(head[0], 0, "a FramebufferUpdate");
        let rects = u16::from_be_bytes([head[2], head[3]]);
        for _ in 0..rects {
            let r = self.read_exact(12);
            let v = |i: usize| u32::from(u16::from_be_bytes([r[i], r[i + 1]]));
            let (x, y, w, h) = (v(0), v(2), v(4), v(6));
            let encoding = i32::from_be_bytes([r[8], r[9], r[10], r[11]]);
            self.encodings_seen.push(encoding);
            match encoding {
                RAW => {
                    let data = self.read_exact((w * h * 4) as usize);
                    for row in 0..h {
                        for col in 0..w {
                            let i = ((row * w + col) * 4) as usize;
                            let p = u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
                            self.pixels[((y + row) * self.width + x + col) as usize] = p;
                        }
                    }
                }
                ZRLE => {
                    let len = self.read_exact(4);
                    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
                    self.read_exact(len as usize);
                }
                DESKTOP_SIZE => {
                    self.width = w;
                    self.height = h;
                    self.pixels = vec![0; (w * h) as usize];
                }
                QEMU_EXTENDED_KEY => self.extended_keys = true,
                other => panic!("unexpected encoding {other}"),
            }
        }
    }

    /// Requests and applies updates until `check` holds on the screen.
    fn until(&mut self, what: &str, check: impl Fn(&Viewer) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !check(self) {
            assert!(Instant::now() < deadline, "the screen never showed {what}");
            self.request(true);
            self.update();
        }
    }

    fn pixel(&self, x: u32, y: u32) -> u32 {
        self.pixels[(y * self.width + x) as usize]
    }

    /// QEMU's extended key event: press and release of an XT scancode.
    fn tap_scancode(&mut self, keycode: u32) {
        for down in [1u16, 0] {
            let mut msg = vec![255, 0];
            msg.extend_from_slice(&down.to_be_bytes());
            msg.extend_from_slice(&0u32.to_be_bytes());
            msg.extend_from_slice(&keycode.to_be_bytes());
            self.s.write_all(&msg).unwrap();
        }
    }

    /// A plain key event: press and release of an X keysym.
    fn tap_keysym(&mut self, keysym: u32) {
        for down in [1u8, 0] {
            let mut msg = vec![4, down, 0, 0];
            msg.extend_from_slice(&keysym.to_be_bytes());
            self.s.write_all(&msg).unwrap();
        }
    }
}

/// Whether any pixel of text row `row` (16 scan lines, 9-pixel cells) in
/// columns `cols` has colour `c`.
fn text_cells_have(v: &Viewer, row: u32, cols: std::ops::Range<u32>, c: u32) -> bool {
    (row * 16..row * 16 + 16).any(|y| (cols.start * 9..cols.end * 9).any(|x| v.pixel(x, y) == c))
}

#[test]
fn a_vnc_viewer_sees_text_and_vbe_modes_and_types_into_the_i8042() {
    let vm = Vm::start();
    vm.wait_console("TEXT\n", 1);
    let sock = vm.path("vnc.sock");
    let mode = std::fs::metadata(&sock).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
    let mut a = Viewer::connect(&sock, &[RAW, DESKTOP_SIZE, QEMU_EXTENDED_KEY]);
    let mut b = Viewer::connect(&sock, &[ZRLE, RAW, DESKTOP_SIZE]);
    assert_eq!((a.width, a.height), (720, 400), "text mode 3: 80×25 cells of 9×16");

    // Text mode: the guest's line in white on blue (VGA colours 15 and 1).
    a.request(false);
    a.update();
    assert!(a.extended_keys, "the server announces QEMU's extended key event");
    a.until("the text", |v| text_cells_have(v, 10, 0..10, 0x0000AA) && text_cells_have(v, 10, 0..10, 0xFFFFFF));
    assert!(!text_cells_have(&a, 10, 12..40, 0x0000AA), "the blue ends with the text");
    // The screenshot API shows the same picture.
    let (status, png) = screenshot(&vm.path("api.sock"));
    assert_eq!(status, 200);
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (720, 400));
    let shot: Vec<u32> =
        buf.chunks(3).map(|p| u32::from(p[0]) << 16 | u32::from(p[1]) << 8 | u32::from(p[2])).collect();
    assert!(shot == a.pixels, "the screenshot is the screen the viewer holds");

    // The second client gets ZRLE.
    b.request(false);
    b.update();
    assert!(b.encodings_seen.contains(&ZRLE), "{:?}", b.encodings_seen);

    // Keys: scancodes from one viewer, keysyms from the other.
    a.tap_scancode(0x1E);
    vm.wait_console("K1E\nK9E\n", 1);
    a.tap_scancode(0xC8); // Up: E0 48, E0 C8
    vm.wait_console("KE0\nK48\nKE0\nKC8\n", 1);
    b.tap_keysym(u32::from(b'b'));
    vm.wait_console("K30\nKB0\n", 1);
    a.tap_scancode(0x1C);

    // The VBE mode: a desktop resize, then the two halves.
    vm.wait_console("VBE\n", 1);
    a.until("640×480 in orange over blue", |v| {
        (v.width, v.height) == (640, 480) && v.pixel(0, 0) == 0xFF8000 && v.pixel(639, 479) == 0x0000FF
    });
    assert_eq!(a.pixel(320, 239), 0xFF8000);
    assert_eq!(a.pixel(320, 240), 0x0000FF);
    b.until("the resize", |v| (v.width, v.height) == (640, 480));

    // A draw through the framebuffer (no trap: KVM's dirty log) reaches
    // the viewer.
    a.tap_scancode(0x39);
    vm.wait_console("FILL\n", 1);
    a.until("the green fill", |v| v.pixels.iter().all(|&p| p == 0x00FF00));

    // Idle: the guest is halted and a request waits; nothing is sent and
    // the VMM sleeps.
    a.request(true);
    let (bytes, ticks) = (a.bytes, vm.cpu_ticks());
    a.s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut one = [0u8; 1];
    let got = a.s.read(&mut one);
    assert!(got.is_err(), "an idle screen sent {got:?}");
    let used = vm.cpu_ticks() - ticks;
    assert_eq!(a.bytes, bytes);
    assert!(used <= 4, "the VMM used {used} ticks of CPU in 2 s of idle screen");
    a.s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();

    // Bad clients: garbage, a message cut off, absurd request sizes.
    let mut bad = Viewer::connect(&sock, &[RAW]);
    bad.s.write_all(&[77, 1, 2, 3]).unwrap();
    let mut cut = Viewer::connect(&sock, &[RAW]);
    cut.s.write_all(&[3, 0, 0]).unwrap();
    drop(cut);
    let mut huge = Viewer::connect(&sock, &[RAW]);
    huge.request_area(false, u16::MAX, u16::MAX);
    huge.update();
    huge.request_area(false, 0, 0);
    huge.update();
    assert!(huge.pixels.iter().all(|&p| p == 0x00FF00));
    let mut closed = [0u8; 1];
    bad.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(bad.s.read(&mut closed).unwrap_or(0), 0, "the garbage sender is dropped");
    // The first viewer is still served.
    a.request(false);
    a.update();
    assert!(a.pixels.iter().all(|&p| p == 0x00FF00));
}

fn screenshot(api: &Path) -> (u16, Vec<u8>) {
    let mut s = UnixStream::connect(api).unwrap();
    s.write_all(b"GET /screenshot HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let at = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&out[..at]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(head.contains("Content-Type: image/png"), "{head}");
    (status, out[at + 4..].to_vec())
}
