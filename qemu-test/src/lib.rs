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

pub mod abuse;
pub mod browser;
pub mod debian;
pub mod https_file;
pub mod l0_qemu;
pub mod load;
pub mod nested;
pub mod panel;
pub mod ssh;
pub mod stats;
pub mod timed;

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

/// Builds the appliance's static programs once per test process (without
/// the kernels), for tests that run them on this host.
pub fn binaries() -> Result<&'static kvmos_image_builder::binaries::Binaries> {
    static BINS: OnceLock<Result<kvmos_image_builder::binaries::Binaries, String>> = OnceLock::new();
    BINS.get_or_init(|| {
        kvmos_image_builder::binaries::build(&Layout::this_checkout().repo).map_err(|e| format!("{e:#}"))
    })
    .as_ref()
    .map_err(|e| anyhow!("building the programs failed: {e}"))
}

/// kvmos-vmm with its test hooks (feature `test-hooks`: the control API's
/// `forbidden_syscall` action), for a panel on this host to run. Built
/// once per test process (a debug build, as the VMM's own tests use) and
/// copied out of cargo's way, so a later build cannot swap it under a test.
pub fn vmm_with_test_hooks() -> Result<&'static PathBuf> {
    static VMM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    VMM.get_or_init(|| {
        let repo = Layout::this_checkout().repo;
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = std::process::Command::new(cargo)
            .current_dir(&repo)
            .args(["build", "--locked", "-p", "kvmos-vmm", "--bin", "kvmos-vmm", "--features", "test-hooks"])
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err(format!("building kvmos-vmm with its test hooks failed ({status}); see cargo's output above"));
        }
        let built = kvmos_image_builder::binaries::target_dir(&repo).join("debug/kvmos-vmm");
        let copy = test_root().join("kvmos-vmm-test-hooks");
        std::fs::create_dir_all(test_root()).map_err(|e| e.to_string())?;
        std::fs::copy(built, &copy).map_err(|e| format!("{}: {e}", copy.display()))?;
        Ok(copy)
    })
    .as_ref()
    .map_err(|e| anyhow!("{e}"))
}

/// `target/qemu-test/`: serial logs and per-test folders.
fn test_root() -> PathBuf {
    Layout::this_checkout().repo.join("target/qemu-test")
}

/// Where a test's files go: `target/qemu-test/<name>/`.
pub fn work_dir(name: &str) -> Result<PathBuf> {
    let dir = test_root().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Where `needle` ends in `text`: as written, or else with every kernel
/// message (`[  seconds.micros] …` up to its line end) left out.
fn find_across_kernel_lines(text: &str, needle: &str) -> Option<usize> {
    if let Some(at) = text.find(needle) {
        return Some(at + needle.len());
    }
    // The text without kernel messages, and where each of its bytes was.
    let mut kept = String::with_capacity(text.len());
    let mut at = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if let Some(len) = kernel_message_len(&text[i..]) {
            i += len;
            continue;
        }
        let c = text[i..].chars().next()?;
        kept.push(c);
        at.extend((i..i + c.len_utf8()).map(|_| i));
        i += c.len_utf8();
    }
    let found = kept.find(needle)?;
    let last = at[found + needle.len() - 1];
    Some(last + text[last..].chars().next()?.len_utf8())
}

/// The length of a kernel message at the start of `text` (`[    4.492514] …`
/// through its newline), if one starts there.
fn kernel_message_len(text: &str) -> Option<usize> {
    let stamp = text.strip_prefix('[')?;
    let close = stamp.find("] ")?;
    let (secs, micros) = stamp[..close].trim_start().split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(secs) || micros.len() != 6 || !digits(micros) {
        return None;
    }
    let line_end = text.find('\n').map_or(text.len(), |n| n + 1);
    Some(line_end)
}

/// The last 3000 characters of a console, for an error message.
fn tail(text: &str) -> String {
    let start = text.char_indices().rev().nth(2999).map_or(0, |(i, _)| i);
    text[start..].to_string()
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

/// What every appliance boot prints once kvmos-init runs (init/src/boot.rs).
const INIT_STARTED: &str = ": running as PID 1";
/// What a Linux kernel prints when a CPU stopped taking part in RCU.
const RCU_STALL: &str = "rcu: INFO: rcu_sched detected stalls";

impl Appliance {
    /// Starts QEMU with these options and waits until kvmos-init runs; the
    /// serial console is piped to us and stays unread, so `expect` sees the
    /// whole boot.
    ///
    /// QEMU 7.2's TCG now and then loses a vCPU's timer interrupt while the
    /// kernel boots on two vCPUs: the CPU idles for good and the kernel
    /// reports an RCU stall before init starts (about one boot in a hundred
    /// on these machines). Nothing of kvmos has run by then, so such a boot is
    /// started once more, its console kept as `<name>.stalled.serial.log`.
    pub fn boot(name: &str, opts: QemuOptions) -> Result<Self> {
        Self::boot_until(name, opts, INIT_STARTED)
    }

    /// [`Appliance::boot`] for an initramfs whose init is not kvmos-init:
    /// `started` is the first line that init prints.
    pub fn boot_until(name: &str, opts: QemuOptions, started: &str) -> Result<Self> {
        let mut stalled_once = false;
        loop {
            let vm = Self::start(name, opts.clone())?;
            let stalled = vm.wait_on_console(BOOT_TIMEOUT, &format!("init to start ({started:?})"), |text| {
                if text.contains(started) {
                    Some(false)
                } else {
                    text.contains(RCU_STALL).then_some(true)
                }
            })?;
            if !stalled {
                return Ok(vm);
            }
            if stalled_once {
                bail!(
                    "[{name}] the kernel stalled before init twice in a row (RCU stall; see {})",
                    vm.log_path.display()
                );
            }
            stalled_once = true;
            let kept = test_root().join(format!("{name}.stalled.serial.log"));
            eprintln!(
                "[{name}] the kernel stalled before init (QEMU TCG lost a timer interrupt); booting again, the stalled console is in {}",
                kept.display()
            );
            let log = vm.log_path.clone();
            drop(vm);
            std::fs::copy(log, &kept)?;
        }
    }

    /// Waits until `check` finds what it looks for in the whole console
    /// text, or QEMU exits, or `timeout` passes; `what` names it in the error.
    fn wait_on_console<T>(&self, timeout: Duration, what: &str, mut check: impl FnMut(&str) -> Option<T>) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.serial;
        let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(found) = check(&s.text) {
                return Ok(found);
            }
            let now = Instant::now();
            if s.closed || now >= deadline {
                let why = if s.closed { "QEMU exited" } else { "timed out" };
                bail!(
                    "[{}] {why} after {:?} waiting for {what} on the serial console (full log: {}); last output:\n{}",
                    self.name,
                    timeout - deadline.saturating_duration_since(now),
                    self.log_path.display(),
                    tail(&s.text)
                );
            }
            s = cv.wait_timeout(s, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Starts QEMU with these options; the serial console is piped to us.
    fn start(name: &str, mut opts: QemuOptions) -> Result<Self> {
        opts.serial = Serial::Pipe;
        let log_path = test_root().join(format!("{name}.serial.log"));
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
    ///
    /// The kernel prints its messages on the same console, and one can land
    /// in the middle of a line init is writing (`kvmos-init: read[ 4.49]
    /// br0: …⏎y`). A needle that is not found as written is looked for
    /// again with the kernel's lines taken out.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let cursor = self.cursor;
        let (end, seen) = self.wait_on_console(timeout, &format!("{needle:?}"), |text| {
            let rest = &text[cursor..];
            let end = cursor + find_across_kernel_lines(rest, needle)?;
            Some((end, text[cursor..end].to_string()))
        })?;
        self.cursor = end;
        Ok(seen)
    }

    /// How many bytes the serial console has printed so far.
    pub fn output_len(&self) -> usize {
        self.serial.0.lock().unwrap_or_else(|p| p.into_inner()).text.len()
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

impl Appliance {
    /// Sends one command to the QEMU human monitor (needs
    /// `QemuOptions::monitor_socket`), e.g. `system_powerdown`; returns
    /// what the monitor printed for it.
    pub fn monitor(&self, socket: &std::path::Path, command: &str) -> Result<String> {
        use std::os::unix::net::UnixStream;
        let mut s = UnixStream::connect(socket)
            .with_context(|| format!("cannot reach the QEMU monitor at {}", socket.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        // HMP echoes input as it reads it and prints a new prompt once the
        // command ran; closing earlier can drop the command.
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        let read_until_prompt = |s: &mut UnixStream, seen: &mut Vec<u8>, buf: &mut [u8], count: usize| -> Result<()> {
            let deadline = Instant::now() + Duration::from_secs(30);
            while String::from_utf8_lossy(seen).matches("(qemu) ").count() < count {
                if Instant::now() > deadline {
                    bail!("the QEMU monitor did not answer: {}", String::from_utf8_lossy(seen));
                }
                match s.read(buf) {
                    Ok(0) => bail!("the QEMU monitor closed the connection"),
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        };
        read_until_prompt(&mut s, &mut seen, &mut buf, 1)?;
        let start = seen.len();
        s.write_all(format!("{command}\n").as_bytes())?;
        read_until_prompt(&mut s, &mut seen, &mut buf, 2)?;
        Ok(String::from_utf8_lossy(&seen[start..]).into_owned())
    }

    /// Types a debug command (see init/src/debug.rs) and waits for its answer.
    pub fn debug(&mut self, command: &str, answer: &str) -> Result<String> {
        self.send(&format!("kvmos-debug {command}\n"))?;
        self.expect(answer, Duration::from_secs(120))
    }
}

/// A test data disk: a GPT disk image with one ext4 partition.
pub struct DataDisk {
    pub path: PathBuf,
    pub offset: u64,
    pub size: u64,
}

impl DataDisk {
    /// Makes a disk of `size_mib` MiB whose first partition holds ext4
    /// labelled `label` (made by mkfs.ext4, as an admin would).
    pub fn create(path: &std::path::Path, size_mib: u64, label: &str) -> Result<Self> {
        let d = Self::create_blank(path, size_mib, "data")?;
        // Written in place at the partition's offset: the disk stays sparse.
        let st = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", label, "-E"])
            .arg(format!("offset={}", d.offset))
            .arg(path)
            .arg(format!("{}k", d.size / 1024))
            .status()?;
        if !st.success() {
            bail!("mkfs.ext4 failed ({st})");
        }
        Ok(d)
    }

    /// Makes a disk whose one partition is named `gpt_name` in the GPT and
    /// holds nothing but zeros (what `kvmos-image build --data-size` makes).
    pub fn create_blank(path: &std::path::Path, size_mib: u64, gpt_name: &str) -> Result<Self> {
        let total = size_mib << 20;
        let offset = 1u64 << 20;
        let size = total - 2 * offset;
        let f = std::fs::File::options().read(true).write(true).create(true).truncate(true).open(path)?;
        f.set_len(total)?;
        let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(total / 512 - 1)?);
        let mut f2 = f.try_clone()?;
        mbr.overwrite_lba0(&mut f2)?;
        let mut disk = gpt::GptConfig::new()
            .writable(true)
            .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
            .create_from_device(f2, None)?;
        disk.add_partition_at(gpt_name, 1, offset / 512, size / 512, gpt::partition_types::LINUX_FS, 0)?;
        disk.write()?;
        Ok(Self { path: path.to_path_buf(), offset, size })
    }

    /// Copies the partition out to its own file (for e2fsck and dumpe2fs).
    pub fn extract_partition(&self, out: &std::path::Path) -> Result<()> {
        use std::io::{Seek, SeekFrom};
        let mut disk = std::fs::File::open(&self.path)?;
        disk.seek(SeekFrom::Start(self.offset))?;
        let mut o = std::fs::File::create(out)?;
        std::io::copy(&mut (&mut disk).take(self.size), &mut o)?;
        Ok(())
    }

    /// Runs `e2fsck -fn` on the partition; Ok with its report when clean.
    pub fn check_clean(&self) -> Result<String> {
        let part = self.path.with_extension("check");
        self.extract_partition(&part)?;
        let out = std::process::Command::new("e2fsck").args(["-fn"]).arg(&part).output()?;
        let dump = std::process::Command::new("dumpe2fs").arg("-h").arg(&part).output()?;
        let _ = std::fs::remove_file(&part);
        let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let header = String::from_utf8_lossy(&dump.stdout).into_owned();
        let state_clean = header.lines().any(|l| l.starts_with("Filesystem state:") && l.trim_end().ends_with("clean"));
        if !out.status.success() || !state_clean {
            bail!("the data disk is not clean (e2fsck {}):\n{report}\n{header}", out.status);
        }
        Ok(report)
    }
}

/// GETs `https://127.0.0.1:PORT/PATH` from the host, accepting the
/// appliance's self-signed certificate; returns the status and body.
pub fn https_get(port: u16, path: &str) -> Result<(u16, String)> {
    let tls = ureq::tls::TlsConfig::builder().disable_verification(true).build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_global(Some(Duration::from_secs(20)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent.get(format!("https://127.0.0.1:{port}{path}")).call()?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string()?;
    Ok((status, body))
}

/// Polls [`https_get`] until it answers 200, for at most `timeout`.
pub fn wait_https(port: u16, path: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let err = match https_get(port, path) {
            Ok((200, body)) => return Ok(body),
            Ok((status, body)) => anyhow!("HTTP {status}: {body}"),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            bail!("https://127.0.0.1:{port}{path} did not answer 200 within {timeout:?}: {err:#}");
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_split_by_kernel_messages_is_still_found() {
        let text = "kvmos-init: read[    4.492514] br0: port 1(eth0) entered blocking state\r\n\
                    y[    4.498204] br0: port 1(eth0) entered disabled state\r\n\r\nnext";
        let end = find_across_kernel_lines(text, "kvmos-init: ready").unwrap();
        assert_eq!(&text[end - 1..end], "y");
        // As written, when it is there; kernel messages themselves too.
        assert_eq!(find_across_kernel_lines("a ready b", "ready"), Some(7));
        assert!(find_across_kernel_lines(text, "entered disabled state").is_some());
        // What is left reads as init wrote it.
        assert!(find_across_kernel_lines(text, "kvmos-init: ready\r\nnext").is_some());
        assert_eq!(find_across_kernel_lines("[not a stamp] ready", "not ready"), None);
    }
}
