//! The 16550 UART at COM1, from vm-superio, interrupt-driven through an
//! irqfd on IRQ 4. Input the guest has no room for yet waits here and is
//! fed in as the guest drains its FIFO, so a paste is never cut short.

use crate::console::{Console, ConsoleWriter};
use crate::devices::bus::BusDevice;
use std::collections::VecDeque;
use vm_superio::{serial::NoEvents, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// Raises the serial IRQ by writing the irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

pub struct SerialDevice {
    serial: Serial<IrqTrigger, NoEvents, ConsoleWriter>,
    pending: VecDeque<u8>,
}

impl SerialDevice {
    pub fn new(irq: EventFd, console: Console) -> Self {
        Self { serial: Serial::new(IrqTrigger(irq), ConsoleWriter(console)), pending: VecDeque::new() }
    }

    /// Input for the guest (keystrokes, a paste).
    pub fn queue_input(&mut self, bytes: &[u8]) {
        self.pending.extend(bytes);
        self.feed();
    }

    fn feed(&mut self) {
        let room = self.serial.fifo_capacity();
        if room == 0 || self.pending.is_empty() {
            return;
        }
        let n = room.min(self.pending.len());
        let chunk: Vec<u8> = self.pending.drain(..n).collect();
        if let Err(e) = self.serial.enqueue_raw_bytes(&chunk) {
            tracing::warn!("serial input lost: {e:?}");
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(b) = data.first_mut() {
            *b = self.serial.read(offset as u8);
        }
        self.feed();
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&b) = data.first() {
            if let Err(e) = self.serial.write(offset as u8, b) {
                tracing::debug!("serial write: {e:?}");
            }
        }
    }
}
