//! The screen, keyboard and mouse on this host's /dev/kvm: SeaBIOS with
//! Debian's VGA BIOS boots `tiny_guest::display_disk`, which writes the
//! text buffer, echoes the scancodes it reads from the i8042 on COM1, sets
//! a VBE mode and fills the framebuffer. An RFB client (`kvmos_vmm::vnc::client`) checks
//! over the VNC socket what a viewer would see and sends keys.

mod support;

use kvmos_vmm::jail::testing::next_slot;
use kvmos_vmm::tiny_guest;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};
use support::Vm;

use kvmos_vmm::vnc::client::Viewer;
use kvmos_vmm::vnc::rfb::{
    ENCODING_DESKTOP_SIZE as DESKTOP_SIZE, ENCODING_QEMU_EXTENDED_KEY as QEMU_EXTENDED_KEY, ENCODING_RAW as RAW,
    ENCODING_ZRLE as ZRLE,
};

const T: Duration = Duration::from_secs(30);

/// Whether any pixel of text row `row` (16 scan lines, 9-pixel cells) in
/// columns `cols` has colour `c`.
fn text_cells_have(v: &Viewer, row: u32, cols: std::ops::Range<u32>, c: u32) -> bool {
    (row * 16..row * 16 + 16).any(|y| (cols.start * 9..cols.end * 9).any(|x| v.pixel(x, y) == c))
}

#[test]
fn a_vnc_viewer_sees_text_and_vbe_modes_and_types_into_the_i8042() {
    let vm = Vm::start(&tiny_guest::display_disk(), next_slot());
    vm.wait_console("TEXT\n", 1);
    let sock = vm.path("vnc.sock");
    let mode = std::fs::metadata(&sock).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
    let mut a = Viewer::connect(&sock, &[RAW, DESKTOP_SIZE, QEMU_EXTENDED_KEY]).unwrap();
    let mut b = Viewer::connect(&sock, &[ZRLE, RAW, DESKTOP_SIZE]).unwrap();
    assert_eq!((a.width, a.height), (720, 400), "text mode 3: 80×25 cells of 9×16");

    // Text mode: the guest's line in white on blue (VGA colours 15 and 1).
    a.request(false).unwrap();
    a.update().unwrap();
    assert!(a.extended_keys, "the server announces QEMU's extended key event");
    a.until(T, |v| text_cells_have(v, 10, 0..10, 0x0000AA) && text_cells_have(v, 10, 0..10, 0xFFFFFF)).unwrap();
    assert!(!text_cells_have(&a, 10, 12..40, 0x0000AA), "the blue ends with the text");
    // The screenshot API shows the same picture.
    let (status, png) = screenshot(&vm.path("api.sock"));
    assert_eq!(status, 200);
    let shot = kvmos_vmm::devices::display::Frame::from_png(&png).unwrap();
    assert_eq!((shot.width, shot.height), (720, 400));
    let shot = shot.pixels;
    assert!(shot == a.pixels, "the screenshot is the screen the viewer holds");

    // The second client gets ZRLE.
    b.request(false).unwrap();
    b.update().unwrap();
    assert!(b.encodings_seen.contains(&ZRLE), "{:?}", b.encodings_seen);

    // Keys: scancodes from one viewer, keysyms from the other.
    a.tap_scancode(0x1E).unwrap();
    vm.wait_console("K1E\nK9E\n", 1);
    a.tap_scancode(0xC8).unwrap(); // Up: E0 48, E0 C8
    vm.wait_console("KE0\nK48\nKE0\nKC8\n", 1);
    b.tap_keysym(u32::from(b'b')).unwrap();
    vm.wait_console("K30\nKB0\n", 1);
    a.tap_scancode(0x1C).unwrap();

    // The VBE mode: a desktop resize, then the two halves.
    vm.wait_console("VBE\n", 1);
    a.until(T, |v| (v.width, v.height) == (640, 480) && v.pixel(0, 0) == 0xFF8000 && v.pixel(639, 479) == 0x0000FF)
        .unwrap();
    assert_eq!(a.pixel(320, 239), 0xFF8000);
    assert_eq!(a.pixel(320, 240), 0x0000FF);
    b.until(T, |v| (v.width, v.height) == (640, 480)).unwrap();

    // A draw through the framebuffer (no trap: KVM's dirty log) reaches
    // the viewer.
    a.tap_scancode(0x39).unwrap();
    vm.wait_console("FILL\n", 1);
    a.until(T, |v| v.pixels.iter().all(|&p| p == 0x00FF00)).unwrap();

    // Idle: the guest is halted and a request waits; nothing is sent and
    // the VMM sleeps.
    a.request(true).unwrap();
    let (bytes, ticks) = (a.bytes, vm.cpu_ticks());
    a.stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut one = [0u8; 1];
    let got = a.stream.read(&mut one);
    assert!(got.is_err(), "an idle screen sent {got:?}");
    let used = vm.cpu_ticks() - ticks;
    assert_eq!(a.bytes, bytes);
    assert!(used <= 4, "the VMM used {used} ticks of CPU in 2 s of idle screen");
    a.stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();

    // Bad clients: garbage, a message cut off, absurd request sizes.
    let mut bad = Viewer::connect(&sock, &[RAW]).unwrap();
    bad.stream.write_all(&[77, 1, 2, 3]).unwrap();
    let mut cut = Viewer::connect(&sock, &[RAW]).unwrap();
    cut.stream.write_all(&[3, 0, 0]).unwrap();
    drop(cut);
    let mut huge = Viewer::connect(&sock, &[RAW]).unwrap();
    huge.request_area(false, u16::MAX, u16::MAX).unwrap();
    huge.update().unwrap();
    huge.request_area(false, 0, 0).unwrap();
    huge.update().unwrap();
    assert!(huge.pixels.iter().all(|&p| p == 0x00FF00));
    let mut closed = [0u8; 1];
    bad.stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(bad.stream.read(&mut closed).unwrap_or(0), 0, "the garbage sender is dropped");
    // The first viewer is still served.
    a.request(false).unwrap();
    a.update().unwrap();
    assert!(a.pixels.iter().all(|&p| p == 0x00FF00));
}

/// The switch guest (`tiny_guest::switch_disk`) echoes every i8042 byte
/// on its screen and COM1 and animates a counter; the text API reads its
/// screen; a viewer that asked for SetScale 2 holds the half-size screen,
/// kept up to date, and its keys arrive as they do at full size; a scaled
/// screenshot is the same picture.
#[test]
fn a_scaled_viewer_follows_the_switch_guest_and_the_text_api_reads_it() {
    let vm = Vm::start(&tiny_guest::switch_disk("vm-a", true), next_slot());
    vm.wait_console("READY vm-a\n", 1);
    let api = vm.path("api.sock");
    let rows = screen_text(&api);
    assert_eq!(rows[0], format!("{}vm-a", tiny_guest::SWITCH_TITLE).trim_end(), "{rows:?}");

    let mut full = Viewer::connect(&vm.path("vnc.sock"), &[ZRLE, DESKTOP_SIZE, QEMU_EXTENDED_KEY]).unwrap();
    let mut half = Viewer::connect(&vm.path("vnc.sock"), &[ZRLE, DESKTOP_SIZE, QEMU_EXTENDED_KEY]).unwrap();
    half.set_scale(2).unwrap();
    half.request(false).unwrap();
    half.until(T, |v| (v.width, v.height) == (360, 200)).unwrap();
    full.request(false).unwrap();
    full.update().unwrap();
    // Row 0's blue, at half size: the title's cells are blue around grey
    // strokes.
    half.until(T, |v| (0..8).any(|y| (0..180).any(|x| v.pixel(x, y) == 0x0000AA))).unwrap();
    let blue = |v: &Viewer, w: u32, h: u32| (0..h).any(|y| (0..w).any(|x| v.pixel(x, y) == 0x0000AA));
    assert!(blue(&full, 720, 16));

    // The counter on row 24 keeps changing: both viewers keep getting it.
    let before = half.pixels.clone();
    half.until(T, |v| v.pixels != before).unwrap();
    let before = full.pixels.clone();
    full.until(T, |v| v.pixels != before).unwrap();

    // Keys from the scaled viewer: COM1, and the screen's row 2.
    half.tap_scancode(0x1E).unwrap();
    vm.wait_console("K1E\nK9E\n", 1);
    let deadline = Instant::now() + T;
    while !screen_text(&api)[2].starts_with("1E 9E") {
        assert!(Instant::now() < deadline, "row 2: {:?}", screen_text(&api)[2]);
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, png) = get(&api, "/screenshot?scale=4", "image/png");
    assert_eq!(status, 200);
    let info = png::Decoder::new(std::io::Cursor::new(png)).read_info().unwrap().info().clone();
    assert_eq!((info.width, info.height), (180, 100));
    assert_eq!(get(&api, "/screenshot?scale=99", "application/json").0, 400);
}

/// The rows of the text screen, from `GET /screen/text`.
fn screen_text(api: &Path) -> Vec<String> {
    let (status, body) = get(api, "/screen/text", "application/json");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["mode"], "text");
    v["rows"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect()
}

fn screenshot(api: &Path) -> (u16, Vec<u8>) {
    get(api, "/screenshot", "image/png")
}

fn get(api: &Path, path: &str, content_type: &str) -> (u16, Vec<u8>) {
    let mut s = UnixStream::connect(api).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let at = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&out[..at]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(head.contains(&format!("Content-Type: {content_type}")), "{head}");
    (status, out[at + 4..].to_vec())
}
