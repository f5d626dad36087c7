//! The i8042 keyboard controller (ports 0x60 and 0x64), with a PS/2
//! keyboard on IRQ 1 and, on the PC machine, a PS/2 mouse on its auxiliary
//! port and IRQ 12. QEMU's `hw/input/pckbd.c` is the reference.
//!
//! One output buffer is shared by both devices: the controller moves the
//! next byte into it when the guest has read the last one, the keyboard's
//! first, and raises that device's interrupt if the command byte enables
//! it. The controller's own answers (command byte, self-tests, output port)
//! go through the same buffer. Writing 0xFE to port 0x64, or an output port
//! with the reset line low, resets the machine.

use super::ps2_keyboard::Ps2Keyboard;
use super::ps2_mouse::Ps2Mouse;
use crate::devices::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal};
use std::sync::Arc;

/// Offset of the command/status port (0x64) from the data port (0x60).
const COMMAND_OFFSET: u64 = 4;

pub const KEYBOARD_IRQ: u32 = 1;
pub const MOUSE_IRQ: u32 = 12;

// Status register.
const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM: u8 = 0x04;
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;
const STATUS_UNLOCKED: u8 = 0x10;
const STATUS_AUX_DATA: u8 = 0x20;

// Command byte.
const CMD_KEYBOARD_IRQ: u8 = 0x01;
const CMD_MOUSE_IRQ: u8 = 0x02;
const CMD_SYSTEM: u8 = 0x04;
const CMD_KEYBOARD_DISABLED: u8 = 0x10;
const CMD_MOUSE_DISABLED: u8 = 0x20;
const CMD_TRANSLATE: u8 = 0x40;

// Output port: bit 0 is the CPU's reset line (active low), bit 1 A20.
const OUTPUT_PORT_RESET_N: u8 = 0x01;
const OUTPUT_PORT_DEFAULT: u8 = 0x03;

/// A controller command that takes a byte on the data port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataFor {
    CommandByte,
    OutputPort,
    KeyboardBuffer,
    MouseBuffer,
    Mouse,
}

/// Who put the byte in the output buffer: it decides the AUX status bit
/// and the interrupt line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Keyboard,
    Mouse,
}

/// Drives an ISA interrupt line (IRQ, level).
pub type IrqLine = Box<dyn Fn(u32, bool) + Send>;

pub struct I8042 {
    exit: Arc<ExitSignal>,
    irq: IrqLine,
    keyboard: Ps2Keyboard,
    /// None on a machine without the auxiliary port.
    mouse: Option<Ps2Mouse>,
    command_byte: u8,
    output_port: u8,
    last_was_command: bool,
    data_for: Option<DataFor>,
    output: Option<(u8, Source)>,
    /// The interrupt levels last driven, so a line is only touched when it
    /// changes.
    levels: (bool, bool),
}

impl I8042 {
    /// `with_mouse`: whether there is a PS/2 mouse (the direct-boot machine
    /// has IRQ 12 in use for virtio, and no mouse).
    pub fn new(exit: Arc<ExitSignal>, irq: IrqLine, with_mouse: bool) -> Self {
        let mut keyboard = Ps2Keyboard::default();
        let command_byte = CMD_KEYBOARD_IRQ | CMD_MOUSE_IRQ | CMD_SYSTEM | CMD_TRANSLATE;
        keyboard.set_translation(true);
        Self {
            exit,
            irq,
            keyboard,
            mouse: with_mouse.then(Ps2Mouse::default),
            command_byte,
            output_port: OUTPUT_PORT_DEFAULT,
            last_was_command: false,
            data_for: None,
            output: None,
            levels: (false, false),
        }
    }

    /// A key from the outside (VNC): its XT make code, with 0x80 for
    /// 0xE0-prefixed keys.
    pub fn key(&mut self, xt: u8, down: bool) {
        self.keyboard.key(xt, down);
        self.refill();
    }

    /// Relative pointer movement from the outside; see
    /// [`Ps2Mouse::movement`].
    pub fn mouse_movement(&mut self, dx: i32, dy: i32, dz: i32, buttons: u8) {
        if let Some(m) = &mut self.mouse {
            m.movement(dx, dy, dz, buttons);
        }
        self.refill();
    }

    /// Whether the guest has turned the mouse's reporting on.
    pub fn mouse_reporting(&self) -> bool {
        self.mouse.as_ref().is_some_and(Ps2Mouse::reporting)
    }

    pub fn keyboard_leds(&self) -> u8 {
        self.keyboard.leds()
    }

    fn status(&self) -> u8 {
        let mut s = STATUS_UNLOCKED;
        if self.command_byte & CMD_SYSTEM != 0 {
            s |= STATUS_SYSTEM;
        }
        if self.last_was_command {
            s |= STATUS_LAST_WAS_COMMAND;
        }
        match self.output {
            Some((_, Source::Keyboard)) => s |= STATUS_OUTPUT_FULL,
            Some((_, Source::Mouse)) => s |= STATUS_OUTPUT_FULL | STATUS_AUX_DATA,
            None => {}
        }
        s
    }

    /// Puts a byte from the controller itself in the output buffer,
    /// ahead of whatever the devices have queued.
    fn answer(&mut self, byte: u8) {
        self.output = Some((byte, Source::Keyboard));
        self.update_irqs();
    }

    /// Moves the next device byte into an empty output buffer.
    fn refill(&mut self) {
        if self.output.is_none() {
            if self.command_byte & CMD_KEYBOARD_DISABLED == 0 && self.keyboard.has_data() {
                self.output = self.keyboard.pop().map(|b| (b, Source::Keyboard));
            } else if self.command_byte & CMD_MOUSE_DISABLED == 0 {
                if let Some(b) = self.mouse.as_mut().and_then(Ps2Mouse::pop) {
                    self.output = Some((b, Source::Mouse));
                }
            }
        }
        self.update_irqs();
    }

    fn update_irqs(&mut self) {
        let kbd = matches!(self.output, Some((_, Source::Keyboard))) && self.command_byte & CMD_KEYBOARD_IRQ != 0;
        let mouse = matches!(self.output, Some((_, Source::Mouse))) && self.command_byte & CMD_MOUSE_IRQ != 0;
        if kbd != self.levels.0 {
            (self.irq)(KEYBOARD_IRQ, kbd);
        }
        if mouse != self.levels.1 && self.mouse.is_some() {
            (self.irq)(MOUSE_IRQ, mouse);
        }
        self.levels = (kbd, mouse);
    }

    fn set_command_byte(&mut self, byte: u8) {
        self.command_byte = byte;
        self.keyboard.set_translation(byte & CMD_TRANSLATE != 0);
        self.refill();
    }

    fn write_output_port(&mut self, byte: u8) {
        self.output_port = byte;
        if byte & OUTPUT_PORT_RESET_N == 0 {
            self.exit.request(ExitReason::Reboot);
        }
    }

    fn command(&mut self, cmd: u8) {
        match cmd {
            0x20 => self.answer(self.command_byte),
            0x60 => self.data_for = Some(DataFor::CommandByte),
            0xA7 => self.set_command_byte(self.command_byte | CMD_MOUSE_DISABLED),
            0xA8 => self.set_command_byte(self.command_byte & !CMD_MOUSE_DISABLED),
            // Port tests: 0 is "no fault"; a missing mouse reads as its
            // clock line stuck low.
            0xA9 => self.answer(if self.mouse.is_some() { 0x00 } else { 0x01 }),
            0xAA => {
                // Self-test: passes, and leaves the keyboard clock off, as
                // QEMU's controller does.
                self.command_byte |= CMD_SYSTEM;
                self.answer(0x55);
            }
            0xAB => self.answer(0x00),
            0xAD => self.set_command_byte(self.command_byte | CMD_KEYBOARD_DISABLED),
            0xAE => self.set_command_byte(self.command_byte & !CMD_KEYBOARD_DISABLED),
            // Input port: keyboard not inhibited, colour display.
            0xC0 => self.answer(0x80),
            0xD0 => {
                let mut out = self.output_port & 0x03;
                if matches!(self.output, Some((_, Source::Keyboard))) {
                    out |= 0x10;
                }
                if matches!(self.output, Some((_, Source::Mouse))) {
                    out |= 0x20;
                }
                self.answer(out);
            }
            0xD1 => self.data_for = Some(DataFor::OutputPort),
            0xD2 => self.data_for = Some(DataFor::KeyboardBuffer),
            0xD3 => self.data_for = Some(DataFor::MouseBuffer),
            0xD4 => self.data_for = Some(DataFor::Mouse),
            0xE0 => self.answer(0x00),
            // Pulse output lines: bit 0 clear pulses the reset line.
            0xF0..=0xFF if cmd & 1 == 0 => self.exit.request(ExitReason::Reboot),
            _ => {}
        }
    }

    fn data(&mut self, byte: u8) {
        match self.data_for.take() {
            Some(DataFor::CommandByte) => self.set_command_byte(byte),
            Some(DataFor::OutputPort) => self.write_output_port(byte),
            Some(DataFor::KeyboardBuffer) => self.answer(byte),
            Some(DataFor::MouseBuffer) => {
                if self.mouse.is_some() {
                    self.output = Some((byte, Source::Mouse));
                    self.update_irqs();
                }
            }
            Some(DataFor::Mouse) => {
                if let Some(m) = &mut self.mouse {
                    m.write(byte);
                }
                self.refill();
            }
            None => {
                // Talking to the keyboard enables its interface, as on
                // real controllers.
                self.command_byte &= !CMD_KEYBOARD_DISABLED;
                self.keyboard.write(byte);
                self.refill();
            }
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = if offset == COMMAND_OFFSET {
            self.status()
        } else if offset == 0 {
            match self.output.take() {
                Some((byte, _)) => {
                    // The read drops the line; the next byte raises it
                    // again. An edge per byte: Linux (IOAPIC, edge) would
                    // otherwise see one interrupt for a burst of answers.
                    self.update_irqs();
                    self.refill();
                    byte
                }
                // An empty buffer reads as the last byte again on real
                // hardware; zero is what QEMU gives.
                None => 0,
            }
        } else {
            0xFF
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&byte) = data.first() else { return };
        if offset == COMMAND_OFFSET {
            self.last_was_command = true;
            self.command(byte);
        } else if offset == 0 {
            self.last_was_command = false;
            self.data(byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    type Lines = Arc<Mutex<Vec<(u32, bool)>>>;

    fn controller(with_mouse: bool) -> (I8042, Lines, Arc<ExitSignal>) {
        let lines: Lines = Arc::default();
        let l = Arc::clone(&lines);
        let exit = Arc::new(ExitSignal::new().unwrap());
        let c =
            I8042::new(Arc::clone(&exit), Box::new(move |irq, level| l.lock().unwrap().push((irq, level))), with_mouse);
        (c, lines, exit)
    }

    fn status(c: &mut I8042) -> u8 {
        let mut b = [0];
        c.read(COMMAND_OFFSET, &mut b);
        b[0]
    }

    fn data(c: &mut I8042) -> u8 {
        let mut b = [0];
        c.read(0, &mut b);
        b[0]
    }

    /// Every byte waiting, read the way a polling guest reads them.
    fn drain(c: &mut I8042) -> Vec<(u8, bool)> {
        let mut out = Vec::new();
        while status(c) & STATUS_OUTPUT_FULL != 0 {
            let aux = status(c) & STATUS_AUX_DATA != 0;
            out.push((data(c), aux));
        }
        out
    }

    #[test]
    fn controller_commands_self_test_and_command_byte() {
        let (mut c, _, _) = controller(true);
        c.write(COMMAND_OFFSET, &[0xAA]);
        assert_eq!(drain(&mut c), [(0x55, false)]);
        c.write(COMMAND_OFFSET, &[0x60]);
        c.write(0, &[0x45]);
        c.write(COMMAND_OFFSET, &[0x20]);
        assert_eq!(drain(&mut c), [(0x45, false)]);
        assert_ne!(status(&mut c) & STATUS_LAST_WAS_COMMAND, 0);
        c.write(COMMAND_OFFSET, &[0xA9]);
        assert_eq!(drain(&mut c), [(0x00, false)]);
        // Loop-back through the mouse buffer, as Linux probes the port.
        c.write(COMMAND_OFFSET, &[0xD3]);
        c.write(0, &[0x5A]);
        assert_eq!(drain(&mut c), [(0x5A, true)]);
        let (mut no_mouse, _, _) = controller(false);
        no_mouse.write(COMMAND_OFFSET, &[0xA9]);
        assert_eq!(drain(&mut no_mouse), [(0x01, false)]);
        no_mouse.write(COMMAND_OFFSET, &[0xD3]);
        no_mouse.write(0, &[0x5A]);
        assert!(drain(&mut no_mouse).is_empty());
    }

    #[test]
    fn keys_raise_irq1_translated_and_mouse_bytes_irq12() {
        let (mut c, lines, _) = controller(true);
        c.key(0x1E, true);
        assert_eq!(lines.lock().unwrap().as_slice(), [(KEYBOARD_IRQ, true)]);
        assert_eq!(data(&mut c), 0x1E);
        assert_eq!(lines.lock().unwrap().last(), Some(&(KEYBOARD_IRQ, false)));
        // Untranslated: set 2.
        c.write(COMMAND_OFFSET, &[0x60]);
        c.write(0, &[CMD_KEYBOARD_IRQ | CMD_MOUSE_IRQ]);
        c.key(0x1E, false);
        assert_eq!(drain(&mut c), [(0xF0, false), (0x1C, false)]);
        // The mouse through 0xD4: reset, then enable, then a movement.
        c.write(COMMAND_OFFSET, &[0xD4]);
        c.write(0, &[0xFF]);
        c.write(COMMAND_OFFSET, &[0xD4]);
        c.write(0, &[0xF4]);
        assert_eq!(drain(&mut c), [(0xFA, true), (0xAA, true), (0x00, true), (0xFA, true)]);
        lines.lock().unwrap().clear();
        c.mouse_movement(1, 1, 0, 0);
        assert_eq!(lines.lock().unwrap().as_slice(), [(MOUSE_IRQ, true)]);
        assert_eq!(drain(&mut c), [(0x28, true), (1, true), (0xFF, true)]);
    }

    /// Linux's atkbd asks for the keyboard's ID and waits for three bytes
    /// (ACK, 0xAB, 0x83) on IRQ 1, which its IOAPIC pin takes as edges: the
    /// line must fall at each read and rise again for the next byte. (It
    /// once stayed high through the burst, and Linux found no keyboard.)
    #[test]
    fn each_byte_of_a_burst_is_a_rising_edge_on_irq1() {
        let (mut c, lines, _) = controller(true);
        c.write(0, &[0xF2]);
        let mut bytes = Vec::new();
        while c.status() & STATUS_OUTPUT_FULL != 0 {
            bytes.push(data(&mut c));
        }
        assert_eq!(bytes, [0xFA, 0xAB, 0x41], "ACK and the ID, translated");
        let edges: Vec<(u32, bool)> = lines.lock().unwrap().clone();
        assert_eq!(
            edges,
            [(1, true), (1, false), (1, true), (1, false), (1, true), (1, false)],
            "up and down once per byte"
        );
    }

    #[test]
    fn the_interrupt_enable_bits_and_port_disables_are_obeyed() {
        let (mut c, lines, _) = controller(true);
        c.write(COMMAND_OFFSET, &[0x60]);
        c.write(0, &[CMD_TRANSLATE]);
        c.key(0x1E, true);
        assert!(lines.lock().unwrap().is_empty(), "IRQ 1 masked in the command byte");
        assert_eq!(drain(&mut c), [(0x1E, false)]);
        c.write(COMMAND_OFFSET, &[0xAD]);
        c.key(0x1E, true);
        assert!(drain(&mut c).is_empty(), "keyboard interface disabled");
        c.write(COMMAND_OFFSET, &[0xAE]);
        assert_eq!(drain(&mut c), [(0x1E, false)], "held until enabled");
    }

    #[test]
    fn reset_through_the_pulse_command_and_the_output_port() {
        let (mut c, _, exit) = controller(false);
        c.write(COMMAND_OFFSET, &[0xFF]);
        assert_eq!(exit.reason(), None, "0xFF pulses no line");
        c.write(COMMAND_OFFSET, &[0xD1]);
        c.write(0, &[0x03]);
        assert_eq!(exit.reason(), None, "A20 on, reset high");
        c.write(COMMAND_OFFSET, &[0xFE]);
        assert_eq!(exit.reason(), Some(ExitReason::Reboot));
        let (mut c, _, exit) = controller(false);
        c.write(COMMAND_OFFSET, &[0xD1]);
        c.write(0, &[0x02]);
        assert_eq!(exit.reason(), Some(ExitReason::Reboot));
    }

    #[test]
    fn garbage_on_both_ports_is_harmless() {
        let (mut c, _, _) = controller(true);
        let mut x = 0x1234_5678u32;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let byte = (x >> 8) as u8;
            // Keep clear of the reset pulses and output port writes.
            if x & 1 == 0 && byte < 0xD1 {
                c.write(COMMAND_OFFSET, &[byte]);
            } else if x & 2 == 0 {
                c.write(0, &[byte]);
            } else {
                let mut b = [0; 4];
                c.read(u64::from(x & 7), &mut b);
            }
            c.key((x >> 16) as u8, x & 4 == 0);
            c.mouse_movement((x >> 20) as i8 as i32, 0, 0, 0);
        }
    }
}
