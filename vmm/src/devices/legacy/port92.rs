//! System control port A (0x92): the "fast A20" gate and a reset bit.
//!
//! KVM keeps A20 enabled, so bit 1 only reads back set; writing bit 0
//! resets the machine, which this VMM ends with the reboot exit code.

use crate::devices::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal};
use std::sync::Arc;

pub const PORT: u16 = 0x92;
const A20: u8 = 1 << 1;
const RESET: u8 = 1;

pub struct Port92 {
    exit: Arc<ExitSignal>,
}

impl Port92 {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for Port92 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = A20;
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data[0] & RESET != 0 {
            self.exit.request(ExitReason::Reboot);
        }
    }
}
