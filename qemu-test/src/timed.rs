//! Output read as it comes, with when each byte came: a VM's serial
//! console for the benchmarks that time what a guest prints.

use anyhow::{bail, Result};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct TimedOutput {
    seen: Arc<Mutex<(String, Vec<Instant>)>>,
}

impl TimedOutput {
    /// Reads `from` on a thread of its own until it ends.
    pub fn read(mut from: impl Read + Send + 'static) -> Self {
        let seen = Arc::new(Mutex::new((String::new(), Vec::new())));
        let into = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = from.read(&mut buf) {
                let now = Instant::now();
                let mut g = into.lock().unwrap_or_else(|p| p.into_inner());
                for &b in &buf[..n] {
                    g.0.push(char::from(b));
                    g.1.push(now);
                }
            }
        });
        Self { seen }
    }

    /// A Unix socket's output (a VMM's console socket).
    pub fn attach(path: &std::path::Path) -> Result<Self> {
        Ok(Self::read(std::os::unix::net::UnixStream::connect(path)?))
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// When `needle` first appeared after byte `from`, waiting up to
    /// `timeout` for it.
    pub fn when(&self, from: usize, needle: &str, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let g = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(at) = g.0.get(from..).and_then(|s| s.find(needle)) {
                    return Ok(g.1[from + at]);
                }
                if Instant::now() > deadline {
                    bail!("no {needle:?} in the output: {:?}", g.0);
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
