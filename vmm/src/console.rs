//! The guest's serial console as the outside world sees it: the output goes
//! to a bounded ring buffer (the last [`RING_SIZE`] bytes, replayed to every
//! client that attaches) and to every attached client; input from any client
//! goes to the guest.
//!
//! Clients are Unix-socket connections (any number, attaching and detaching
//! at any time) and, with `--serial stdio`, this process's terminal. A client
//! that cannot keep up is disconnected rather than allowed to stall the
//! guest: the vCPU thread that emits output never blocks on a client.

use std::collections::VecDeque;
use std::io::{ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

/// Output kept for replay.
pub const RING_SIZE: usize = 64 * 1024;

#[derive(Default)]
struct Inner {
    ring: VecDeque<u8>,
    clients: Vec<UnixStream>,
    to_stdout: bool,
    total_bytes: u64,
}

#[derive(Clone, Default)]
pub struct Console {
    inner: Arc<Mutex<Inner>>,
}

impl Console {
    pub fn new(to_stdout: bool) -> Self {
        let c = Self::default();
        c.lock().to_stdout = to_stdout;
        c
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Output from the guest.
    pub fn output(&self, bytes: &[u8]) {
        let mut inner = self.lock();
        inner.total_bytes += bytes.len() as u64;
        inner.ring.extend(bytes);
        let excess = inner.ring.len().saturating_sub(RING_SIZE);
        inner.ring.drain(..excess);
        if inner.to_stdout {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(bytes);
            let _ = out.flush();
        }
        inner.clients.retain_mut(|c| match c.write_all(bytes) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!("console client dropped: {e}");
                false
            }
        });
    }

    /// Attaches a client: it gets the replay, then live output.
    pub fn attach(&self, mut stream: UnixStream) -> std::io::Result<()> {
        let mut inner = self.lock();
        let (a, b) = inner.ring.as_slices();
        stream.write_all(a)?;
        stream.write_all(b)?;
        // From here on a full socket buffer means a client that is not
        // reading: drop it instead of blocking the guest.
        stream.set_nonblocking(true)?;
        inner.clients.push(stream);
        Ok(())
    }

    /// The buffered output (for the API and tests).
    pub fn snapshot(&self) -> Vec<u8> {
        self.lock().ring.iter().copied().collect()
    }

    pub fn total_bytes(&self) -> u64 {
        self.lock().total_bytes
    }

    pub fn clients(&self) -> usize {
        self.lock().clients.len()
    }
}

/// The `Write` end vm-superio's serial device writes into.
pub struct ConsoleWriter(pub Console);

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.output(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether an error on a non-blocking client socket means "try later".
pub fn would_block(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::WouldBlock
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn ring_keeps_the_last_bytes() {
        let c = Console::new(false);
        c.output(&vec![b'a'; RING_SIZE]);
        c.output(b"tail");
        let snap = c.snapshot();
        assert_eq!(snap.len(), RING_SIZE);
        assert!(snap.ends_with(b"aaatail"));
        assert_eq!(c.total_bytes(), RING_SIZE as u64 + 4);
    }

    #[test]
    fn two_clients_get_live_output_and_a_late_one_gets_the_replay() {
        let c = Console::new(false);
        let (a_vm, mut a) = UnixStream::pair().unwrap();
        let (b_vm, mut b) = UnixStream::pair().unwrap();
        c.attach(a_vm).unwrap();
        c.attach(b_vm).unwrap();
        c.output(b"boot line 1\n");
        let (late_vm, mut late) = UnixStream::pair().unwrap();
        c.attach(late_vm).unwrap();
        c.output(b"line 2\n");
        let mut buf = vec![0u8; 64];
        for (name, s, want) in [
            ("a", &mut a, &b"boot line 1\nline 2\n"[..]),
            ("b", &mut b, &b"boot line 1\nline 2\n"[..]),
            ("late", &mut late, &b"boot line 1\nline 2\n"[..]),
        ] {
            s.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
            let mut got = Vec::new();
            while got.len() < want.len() {
                let n = s.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, want, "client {name}");
        }
        drop(a);
        c.output(b"after a left\n");
        c.output(b"again\n");
        assert_eq!(c.clients(), 2, "a closed client is dropped");
    }
}
