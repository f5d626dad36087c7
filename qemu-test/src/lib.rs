//! The harness for kvmos's end-to-end tests: it builds the image (through the
//! image builder's cache), boots it under QEMU exactly as `kvmos-image run`
//! does, and lets a test read and type on the serial console.
//!
//! Every QEMU process a test starts belongs to an [`Appliance`], whose `Drop`
//! kills it, so a failing or panicking test leaves no QEMU behind. The whole
//! serial output of each boot is kept in `target/qemu-test/<name>.serial.log`
//! for reading after a failure.

use anyhow::{anyhow, bail, Context, Result};
use kvmos_image_builder::pipeline::{self, Outputs};
use kvmos_image_builder::qemu::QemuOptions;
use kvmos_image_builder::Layout;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use kvmos_image_builder::qemu::{Boot, Serial};

/// TCG is slow and these machines are shared: boots get minutes, not seconds.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// Builds the image once per test process (cached kernels make it quick) and
/// returns its outputs.
pub fn image() -> Result<&'static Outputs> {
    static IMAGE: OnceLock<Result<Outputs, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            pipeline::build(&Layout::this_checkout(), &pipeline::Options::default()).map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map_err(|e| anyhow!("building the image failed: {e}"))
}

/// Where a test's files go: `target/qemu-test/<name>/`.
pub fn work_dir(name: &str) -> Result<PathBuf> {
    let dir = Layout::this_checkout().repo.join("target/qemu-test").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[derive(Default)]
struct SerialBuffer {
    text: String,
    closed: bool,
}

/// A running appliance under QEMU.
pub struct Appliance {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    serial: Arc<(Mutex<SerialBuffer>, Condvar)>,
    /// How far `expect` has read.
    cursor: usize,
    log_path: PathBuf,
}

impl Appliance {
    /// Starts QEMU with these options; the serial console is piped to us.
    pub fn boot(name: &str, mut opts: QemuOptions) -> Result<Self> {
        opts.serial = Serial::Pipe;
        let log_path = Layout::this_checkout().repo.join("target/qemu-test").join(format!("{name}.serial.log"));
        std::fs::create_dir_all(log_path.parent().context("log path")?)?;
        let mut log = std::fs::File::create(&log_path)?;
        let mut child = opts
            .command()?
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start qemu-system-x86_64 (package qemu-system-x86)")?;
        let mut stdout = child.stdout.take().context("no stdout")?;
        let serial = Arc::new((Mutex::new(SerialBuffer::default()), Condvar::new()));
        let reader_serial = Arc::clone(&serial);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = stdout.read(&mut buf).unwrap_or(0);
                let (lock, cv) = &*reader_serial;
                let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
                if n == 0 {
                    s.closed = true;
                    cv.notify_all();
                    return;
                }
                let _ = log.write_all(&buf[..n]);
                s.text.push_str(&String::from_utf8_lossy(&buf[..n]));
                cv.notify_all();
            }
        });
        let stdin = child.stdin.take();
        Ok(Self { name: name.to_string(), child, stdin, serial, cursor: 0, log_path })
    }

    /// Waits until `needle` appears on the console after what earlier calls
    /// matched; returns the text up to and including it.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.serial;
        let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(pos) = s.text[self.cursor..].find(needle) {
                let end = self.cursor + pos + needle.len();
                let seen = s.text[self.cursor..end].to_string();
                self.cursor = end;
                return Ok(seen);
            }
            let now = Instant::now();
            if s.closed || now >= deadline {
                let why = if s.closed { "QEMU exited" } else { "timed out" };
                let tail: String = s.text.chars().rev().take(3000).collect::<Vec<_>>().into_iter().rev().collect();
                bail!(
                    "[{}] {why} after {:?} waiting for {needle:?} on the serial console (full log: {}); last output:\n{tail}",
                    self.name,
                    timeout - deadline.saturating_duration_since(now),
                    self.log_path.display()
                );
            }
            s = cv.wait_timeout(s, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Everything the serial console has printed so far.
    pub fn output(&self) -> String {
        self.serial.0.lock().unwrap_or_else(|p| p.into_inner()).text.clone()
    }

    /// Types on the serial console.
    pub fn send(&mut self, text: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("the console input is closed")?;
        stdin.write_all(text.as_bytes())?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for QEMU to exit by itself (e.g. after a power-off).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("[{}] QEMU did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
