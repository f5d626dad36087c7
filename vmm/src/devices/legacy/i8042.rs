//! Just enough of the i8042 keyboard controller for a guest to reset
//! itself: `reboot=k` makes Linux write 0xFE (pulse reset) to port 0x64.

use crate::devices::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal};
use std::sync::Arc;

const CMD_RESET: u8 = 0xfe;
/// Offset of the command/status port (0x64) from the data port (0x60).
const COMMAND_OFFSET: u64 = 4;

pub struct I8042 {
    exit: Arc<ExitSignal>,
}

impl I8042 {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty; data 0.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET) {
            self.exit.request(ExitReason::Reboot);
        }
    }
}
