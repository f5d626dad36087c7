//! QEMU's debug console (port 0x402): SeaBIOS and OVMF write their debug
//! log there, a byte at a time. Reading the port gives 0xE9, which is how
//! the firmware knows someone is listening. Lines go to a file when the VM
//! configuration names one (`firmware_log`), and are dropped otherwise.

use crate::devices::bus::BusDevice;
use std::io::Write;

pub const PORT: u16 = 0x402;
const READBACK: u8 = 0xe9;
/// A runaway guest cannot fill the disk: the log stops here.
const MAX_LOG: u64 = 16 << 20;

pub struct DebugCon {
    out: Option<std::fs::File>,
    line: Vec<u8>,
    written: u64,
    started: std::time::Instant,
}

impl DebugCon {
    pub fn new(out: Option<std::fs::File>) -> Self {
        Self { out, line: Vec::new(), written: 0, started: std::time::Instant::now() }
    }

    fn flush_line(&mut self) {
        let Some(out) = self.out.as_mut() else { return };
        let line = format!("[{:9.3}] {}\n", self.started.elapsed().as_secs_f64(), String::from_utf8_lossy(&self.line));
        self.written += line.len() as u64;
        if self.written <= MAX_LOG {
            let _ = out.write_all(line.as_bytes());
        }
        self.line.clear();
    }
}

impl BusDevice for DebugCon {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = if self.out.is_some() { READBACK } else { 0xff };
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if self.out.is_none() {
            return;
        }
        for &b in data {
            match b {
                b'\n' => self.flush_line(),
                b'\r' => {}
                _ if self.line.len() < 4096 => self.line.push(b),
                _ => {}
            }
        }
    }
}
