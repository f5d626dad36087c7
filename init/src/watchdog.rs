//! The hardware watchdog: if PID 1 hangs, the server resets itself instead of
//! staying unreachable. A dedicated thread pets /dev/watchdog; only an orderly
//! shutdown disarms it (the "magic close": write 'V', then close).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

nix::ioctl_read!(wdioc_gettimeout, b'W', 7, libc_int);
#[allow(non_camel_case_types)]
type libc_int = i32;

pub struct Watchdog {
    file: Arc<Mutex<Option<File>>>,
    stop: Arc<AtomicBool>,
    pub timeout: Duration,
}

/// Opens /dev/watchdog and starts petting it; `Ok(None)` when there is none.
pub fn start() -> Result<Option<Watchdog>, String> {
    let path = "/dev/watchdog";
    if !std::path::Path::new(path).exists() {
        return Ok(None);
    }
    let file = File::options().write(true).open(path).map_err(|e| format!("cannot open {path}: {e}"))?;
    let mut secs: i32 = 0;
    // SAFETY: WDIOC_GETTIMEOUT writes one int.
    let timeout = match unsafe { wdioc_gettimeout(file.as_raw_fd(), &mut secs) } {
        Ok(_) if secs > 0 => Duration::from_secs(secs as u64),
        _ => Duration::from_secs(30),
    };
    let file = Arc::new(Mutex::new(Some(file)));
    let stop = Arc::new(AtomicBool::new(false));
    let (f2, s2) = (Arc::clone(&file), Arc::clone(&stop));
    let interval = (timeout / 3).max(Duration::from_secs(1));
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                if let Some(f) = f2.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                    let _ = f.write_all(b"\0");
                }
                std::thread::sleep(interval);
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(Some(Watchdog { file, stop, timeout }))
}

impl Watchdog {
    /// Magic close: the driver stops the timer instead of resetting.
    pub fn disarm(&self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut f) = guard.take() {
            f.write_all(b"V").map_err(|e| format!("cannot disarm the watchdog: {e}"))?;
        }
        Ok(())
    }
}
