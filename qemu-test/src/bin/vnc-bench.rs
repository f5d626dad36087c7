//! kvmos-vmm's VNC server against QEMU's, side by side on this host's KVM
//! (where SeaBIOS runs): the same display guest
//! (`tiny_guest::display_disk_sized(1024, 768)`), the same SeaBIOS and VGA
//! BIOS, QEMU as `qemu-system-x86_64 -accel kvm -M pc -vga std -vnc
//! unix:PATH`, and the same RFB viewer (`kvmos_vmm::vnc::client`) asking
//! for ZRLE. Runs alternate, `N` each (default 3):
//!
//! - full-screen update: bytes of a new viewer's first (whole-screen)
//!   update, with ZRLE and with Raw, of the 1024×768 VBE screen (orange
//!   over blue), and with ZRLE of the 720×400 text screen before it;
//! - latency: from the key press that makes the guest fill its
//!   framebuffer green to the viewer holding the all-green frame (the
//!   guest's own fill time, the same in both, is included), and from the
//!   `FILL` the guest writes on COM1 after its last pixel to the viewer
//!   holding the frame (the server's own delay: its refresh tick,
//!   rendering, encoding; the serial console is read from a pipe);
//! - idle: bytes received and VMM CPU time over 5 s while the guest is
//!   halted and the viewer has an update request waiting.
//!
//! `cargo run --release -p kvmos-qemu-test --bin vnc-bench -- [N]`

use anyhow::{bail, Context, Result};
use kvmos_qemu_test::stats::median;
use kvmos_qemu_test::timed::TimedOutput;
use kvmos_vmm::vnc::client::Viewer;
use kvmos_vmm::vnc::rfb::{ENCODING_DESKTOP_SIZE, ENCODING_QEMU_EXTENDED_KEY, ENCODING_RAW, ENCODING_ZRLE};
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const W: u32 = 1024;
const H: u32 = 768;
const IDLE: Duration = Duration::from_secs(5);

struct Figures {
    /// From the guest's FILL on COM1 to the viewer holding the frame.
    drawn_ms: f64,
    text_zrle: usize,
    full_zrle: usize,
    full_raw: usize,
    latency_ms: f64,
    idle_bytes: usize,
    idle_cpu_ms: u64,
}

fn cpu_ms(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let f: Vec<&str> = stat.rsplit_once(')').context("stat")?.1.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(ticks * 1000 / hz)
}

fn start(which: &str, dir: &Path, vmm: &Path, qemu: &Path) -> Result<Child> {
    let disk = dir.join("display.img");
    let sock = dir.join("vnc.sock");
    let _ = std::fs::remove_file(&sock);
    let mut cmd = if which == "kvmos" {
        let mut c = Command::new(vmm);
        // Jailed, as the panel runs it (uid 990001: nothing else here uses it).
        c.args(["--jail-uid", "990001", "--jail-gid", "990001"])
            .args(["--firmware", "bios", "--memory-mib", "64", "--serial", "stdio", "--disk"])
            .arg(&disk)
            .arg("--vnc-socket")
            .arg(&sock);
        c
    } else {
        let mut c = Command::new(qemu);
        c.args(["-accel", "kvm", "-M", "pc", "-m", "64", "-nodefaults", "-display", "none", "-vga", "std"])
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", disk.display()))
            .args(["-serial", "stdio"])
            .arg("-vnc")
            .arg(format!("unix:{}", sock.display()));
        c
    };
    Ok(cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?)
}

fn run(which: &str, dir: &Path, vmm: &Path, qemu: &Path) -> Result<Figures> {
    let mut child = start(which, dir, vmm, qemu)?;
    let console = TimedOutput::read(child.stdout.take().context("the serial console's pipe")?);
    let result = measure(&child, &console, dir);
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn measure(child: &Child, console: &TimedOutput, dir: &Path) -> Result<Figures> {
    let sock = dir.join("vnc.sock");
    let wait_console = |needle: &str| console.when(0, needle, Duration::from_secs(60));
    wait_console("TEXT\n")?;
    // The guest's line is white on blue (QEMU draws the blue as 0x0000A8,
    // kvmos-vmm as 0x0000AA: 6-bit DAC values widened two ways).
    let text_zrle = first_update(&sock, ENCODING_ZRLE, |v| v.pixels.iter().any(|&p| p & 0xFFFF00 == 0 && p >= 0xA0))?;
    let encodings = [ENCODING_ZRLE, ENCODING_RAW, ENCODING_DESKTOP_SIZE, ENCODING_QEMU_EXTENDED_KEY];
    let mut v = Viewer::connect(&sock, &encodings)?;
    v.request(false)?;
    v.update()?;
    v.tap_scancode(0x1C)?; // Enter: the guest sets 1024×768
    wait_console("VBE\n")?;
    let drawn =
        |v: &Viewer| (v.width, v.height) == (W, H) && v.pixel(0, 0) == 0xFF8000 && v.pixel(W - 1, H - 1) == 0xFF;
    v.until(Duration::from_secs(30), drawn)?;

    // One full-screen update to a new viewer, ZRLE and Raw.
    let full_zrle = first_update(&sock, ENCODING_ZRLE, drawn)?;
    let full_raw = first_update(&sock, ENCODING_RAW, drawn)?;

    // Latency: key press → the all-green frame in the viewer.
    v.request(true)?;
    let t0 = Instant::now();
    v.tap_scancode(0x39)?;
    while !v.pixels.iter().all(|&p| p == 0x00FF00) {
        v.update()?;
        if !v.pixels.iter().all(|&p| p == 0x00FF00) {
            v.request(true)?;
        }
    }
    let green = Instant::now();
    let latency_ms = green.duration_since(t0).as_secs_f64() * 1000.0;
    // The guest writes FILL on COM1 right after its last pixel: from then
    // to the viewer holding the green frame is the server's own delay.
    let fill = wait_console("FILL\n")?;
    let drawn_ms = green.saturating_duration_since(fill).as_secs_f64() * 1000.0;

    // Idle: a request waits; count what arrives and the VMM's CPU.
    std::thread::sleep(Duration::from_millis(500));
    v.request(true)?;
    // kvmos-vmm's jailed child runs the VM; QEMU is its own process.
    let vm_pid = kvmos_vmm::jail::jailed_child(child.id()).unwrap_or(child.id());
    let cpu0 = cpu_ms(vm_pid)?;
    let t0 = Instant::now();
    let mut idle_bytes = 0;
    let mut buf = [0u8; 65536];
    while t0.elapsed() < IDLE {
        v.stream.set_read_timeout(Some((IDLE - t0.elapsed()).max(Duration::from_millis(1))))?;
        match v.stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                idle_bytes += n;
                // QEMU answers a waiting request with an empty update now
                // and then; ask again as a viewer would.
                v.request(true)?;
            }
            Err(_) => break,
        }
    }
    let idle_cpu_ms = cpu_ms(vm_pid)? - cpu0;
    Ok(Figures { drawn_ms, text_zrle, full_zrle, full_raw, latency_ms, idle_bytes, idle_cpu_ms })
}

/// The bytes a new viewer asking for `encoding` receives, after its one
/// whole-screen request, until it holds the whole screen (`ready`): one
/// update from kvmos-vmm, sometimes two from QEMU.
fn first_update(sock: &Path, encoding: i32, ready: impl Fn(&Viewer) -> bool) -> Result<usize> {
    let mut v = Viewer::connect(sock, &[encoding])?;
    let before = v.bytes;
    v.request(false)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready(&v) {
        if Instant::now() > deadline {
            bail!("a new viewer never got the whole screen");
        }
        v.update()?;
        if !ready(&v) {
            v.request(true)?;
        }
    }
    Ok(v.bytes - before)
}

fn main() -> Result<()> {
    let n: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let bins = kvmos_qemu_test::binaries()?;
    let qemu = kvmos_image_builder::host_programs::locate("qemu-system-x86_64")?;
    let dir = kvmos_qemu_test::work_dir("vnc-bench")?;
    std::fs::write(dir.join("display.img"), kvmos_vmm::tiny_guest::display_disk_sized(W as u16, H as u16))?;
    let mut results: Vec<(&str, Figures)> = Vec::new();
    for i in 0..n {
        for which in ["kvmos", "qemu"] {
            let f = run(which, &dir, &bins.vmm, &qemu).with_context(|| format!("{which} run {}", i + 1))?;
            println!(
                "{which:5} run {}: text screen ZRLE {} B; VBE screen ZRLE {} B, Raw {} B; key→frame {:.1} ms, FILL→frame {:.1} ms; idle {} B and {} ms CPU in {} s",
                i + 1,
                f.text_zrle,
                f.full_zrle,
                f.full_raw,
                f.latency_ms,
                f.drawn_ms,
                f.idle_bytes,
                f.idle_cpu_ms,
                IDLE.as_secs()
            );
            results.push((which, f));
        }
    }
    println!("\nmedians of {n} runs each ({W}×{H}, same viewer, same guest):");
    println!(
        "{:5} {:>14} {:>14} {:>12} {:>16} {:>17} {:>14} {:>16}",
        "",
        "text ZRLE (B)",
        "full ZRLE (B)",
        "full Raw (B)",
        "key→frame (ms)",
        "FILL→frame (ms)",
        "idle (B/s)",
        "idle CPU (ms/s)"
    );
    for which in ["kvmos", "qemu"] {
        let of = |f: &dyn Fn(&Figures) -> f64| {
            median(&results.iter().filter(|r| r.0 == which).map(|r| f(&r.1)).collect::<Vec<_>>())
        };
        println!(
            "{which:5} {:>14.0} {:>14.0} {:>12.0} {:>16.1} {:>17.1} {:>14.1} {:>16.2}",
            of(&|f| f.text_zrle as f64),
            of(&|f| f.full_zrle as f64),
            of(&|f| f.full_raw as f64),
            of(&|f| f.latency_ms),
            of(&|f| f.drawn_ms),
            of(&|f| f.idle_bytes as f64 / IDLE.as_secs_f64()),
            of(&|f| f.idle_cpu_ms as f64 / IDLE.as_secs_f64()),
        );
    }
    Ok(())
}
