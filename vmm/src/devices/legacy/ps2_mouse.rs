//! A PS/2 mouse behind the i8042's auxiliary port (QEMU's
//! `hw/input/ps2.c` is the reference): relative movement and three
//! buttons in 3-byte packets, and the IntelliMouse wheel (4-byte packets)
//! once the guest knocks with sample rates 200, 100, 80, as Linux and
//! Windows do.

use std::collections::VecDeque;

/// QEMU buffers 256 bytes for the mouse; beyond that, movement is lost.
const QUEUE_LEN: usize = 256;

const ACK: u8 = 0xFA;
const RESEND: u8 = 0xFE;
const SELF_TEST_PASSED: u8 = 0xAA;
const ID_STANDARD: u8 = 0x00;
const ID_INTELLIMOUSE: u8 = 0x03;

pub const BUTTON_LEFT: u8 = 1;
pub const BUTTON_RIGHT: u8 = 2;
pub const BUTTON_MIDDLE: u8 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    SampleRate,
    Resolution,
}

#[derive(Debug)]
pub struct Ps2Mouse {
    queue: VecDeque<u8>,
    awaiting: Option<Awaiting>,
    /// Data reporting on (stream mode).
    enabled: bool,
    remote: bool,
    wrap: bool,
    scaling_2to1: bool,
    resolution: u8,
    sample_rate: u8,
    /// The last three sample rates, for the IntelliMouse knock.
    rates: [u8; 3],
    id: u8,
    buttons: u8,
    /// Movement not yet sent (remote mode, or a full queue).
    dx: i32,
    dy: i32,
    dz: i32,
}

impl Default for Ps2Mouse {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
            awaiting: None,
            enabled: false,
            remote: false,
            wrap: false,
            scaling_2to1: false,
            resolution: 2,
            sample_rate: 100,
            rates: [0; 3],
            id: ID_STANDARD,
            buttons: 0,
            dx: 0,
            dy: 0,
            dz: 0,
        }
    }
}

impl Ps2Mouse {
    pub fn pop(&mut self) -> Option<u8> {
        self.queue.pop_front()
    }

    pub fn has_data(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Whether the guest has switched the wheel on.
    pub fn has_wheel(&self) -> bool {
        self.id == ID_INTELLIMOUSE
    }

    /// Whether the guest reads the mouse at all: pointer events go
    /// elsewhere while it does not.
    pub fn reporting(&self) -> bool {
        self.enabled && !self.remote
    }

    fn push(&mut self, bytes: &[u8]) -> bool {
        if self.queue.len() + bytes.len() > QUEUE_LEN {
            return false;
        }
        self.queue.extend(bytes);
        true
    }

    /// A command or argument byte from the guest (after 0xD4 to the
    /// controller).
    pub fn write(&mut self, byte: u8) {
        if let Some(what) = self.awaiting.take() {
            match what {
                Awaiting::SampleRate => {
                    self.sample_rate = byte;
                    self.rates = [self.rates[1], self.rates[2], byte];
                    if self.rates == [200, 100, 80] {
                        self.id = ID_INTELLIMOUSE;
                    }
                }
                Awaiting::Resolution => self.resolution = byte.min(3),
            }
            self.push(&[ACK]);
            return;
        }
        if self.wrap && byte != 0xEC && byte != 0xFF {
            self.push(&[byte]);
            return;
        }
        match byte {
            0xE6 => self.ack_after(|m| m.scaling_2to1 = false),
            0xE7 => self.ack_after(|m| m.scaling_2to1 = true),
            0xE8 => self.expect(Awaiting::Resolution),
            0xE9 => {
                let status = (u8::from(self.remote) << 6)
                    | (u8::from(self.enabled) << 5)
                    | (u8::from(self.scaling_2to1) << 4)
                    | (self.buttons & 7);
                self.push(&[ACK, status, self.resolution, self.sample_rate]);
            }
            0xEA => self.ack_after(|m| m.remote = false),
            0xEB => {
                self.push(&[ACK]);
                self.send_packet(true);
            }
            0xEC => self.ack_after(|m| m.wrap = false),
            0xEE => self.ack_after(|m| m.wrap = true),
            0xF0 => self.ack_after(|m| m.remote = true),
            0xF2 => {
                let id = self.id;
                self.push(&[ACK, id]);
            }
            0xF3 => self.expect(Awaiting::SampleRate),
            0xF4 => self.ack_after(|m| m.enabled = true),
            0xF5 => self.ack_after(|m| m.enabled = false),
            0xF6 => self.ack_after(Self::set_defaults),
            0xFF => {
                self.queue.clear();
                self.set_defaults();
                self.id = ID_STANDARD;
                self.wrap = false;
                self.rates = [0; 3];
                self.push(&[ACK, SELF_TEST_PASSED, ID_STANDARD]);
            }
            _ => {
                self.push(&[RESEND]);
            }
        }
    }

    fn ack_after(&mut self, change: impl FnOnce(&mut Self)) {
        change(self);
        self.push(&[ACK]);
    }

    fn expect(&mut self, what: Awaiting) {
        self.awaiting = Some(what);
        self.push(&[ACK]);
    }

    fn set_defaults(&mut self) {
        self.enabled = false;
        self.remote = false;
        self.scaling_2to1 = false;
        self.resolution = 2;
        self.sample_rate = 100;
        self.dx = 0;
        self.dy = 0;
        self.dz = 0;
    }

    /// The pointer moved by `dx` right and `dy` down (screen directions),
    /// the wheel by `dz` (positive: towards the user), with `buttons`
    /// held. Sent at once in stream mode; kept for a read in remote mode.
    pub fn movement(&mut self, dx: i32, dy: i32, dz: i32, buttons: u8) {
        let changed = buttons != self.buttons;
        self.buttons = buttons & 7;
        // Movement is kept for a remote-mode read, and dropped while
        // reporting is off.
        if !self.remote && !self.enabled {
            return;
        }
        // PS/2 counts y upwards.
        self.dx = self.dx.saturating_add(dx);
        self.dy = self.dy.saturating_sub(dy);
        if self.has_wheel() {
            self.dz = self.dz.saturating_add(dz);
        }
        if !self.reporting() {
            return;
        }
        if self.send_packet(changed) {
            while self.send_packet(false) {}
        }
    }

    /// Queues one packet with as much of the pending movement as fits;
    /// false if the queue is full (or there was nothing to say).
    fn send_packet(&mut self, always: bool) -> bool {
        if !always && self.dx == 0 && self.dy == 0 && self.dz == 0 {
            return false;
        }
        let x = self.dx.clamp(-255, 255);
        let y = self.dy.clamp(-255, 255);
        let z = self.dz.clamp(-7, 7);
        let mut head = 0x08 | self.buttons;
        if x < 0 {
            head |= 0x10;
        }
        if y < 0 {
            head |= 0x20;
        }
        let packet = [head, x as u8, y as u8, (z as u8) & 0x0F];
        let len = if self.has_wheel() { 4 } else { 3 };
        if !self.push(&packet[..len]) {
            return false;
        }
        self.dx -= x;
        self.dy -= y;
        self.dz -= z;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(m: &mut Ps2Mouse) -> Vec<u8> {
        std::iter::from_fn(|| m.pop()).collect()
    }

    #[test]
    fn reset_id_and_the_intellimouse_knock() {
        let mut m = Ps2Mouse::default();
        m.write(0xFF);
        assert_eq!(drain(&mut m), [ACK, 0xAA, 0x00]);
        m.write(0xF2);
        assert_eq!(drain(&mut m), [ACK, 0x00]);
        for rate in [200, 100, 80] {
            m.write(0xF3);
            m.write(rate);
        }
        assert_eq!(drain(&mut m), [ACK; 6]);
        m.write(0xF2);
        assert_eq!(drain(&mut m), [ACK, 0x03]);
        m.write(0xE9);
        assert_eq!(drain(&mut m), [ACK, 0x00, 2, 80]);
        m.write(0x12);
        assert_eq!(drain(&mut m), [RESEND]);
    }

    #[test]
    fn packets_carry_movement_buttons_and_the_wheel() {
        let mut m = Ps2Mouse::default();
        m.movement(5, 5, 0, 0);
        assert!(!m.has_data(), "reporting is off until the guest enables it");
        m.write(0xF4);
        drain(&mut m);
        // Right 3, up 2 on screen, left button.
        m.movement(3, -2, 0, BUTTON_LEFT);
        assert_eq!(drain(&mut m), [0x09, 3, 2]);
        // Left and down: both signs.
        m.movement(-1, 4, 0, 0);
        assert_eq!(drain(&mut m), [0x38, 0xFF, 0xFC]);
        // A big move is split into packets of at most 255.
        m.movement(300, 0, 0, 0);
        assert_eq!(drain(&mut m), [0x08, 255, 0, 0x08, 45, 0]);
        // A button change alone is a packet.
        m.movement(0, 0, 0, BUTTON_RIGHT);
        assert_eq!(drain(&mut m), [0x0A, 0, 0]);
        for rate in [200, 100, 80] {
            m.write(0xF3);
            m.write(rate);
        }
        drain(&mut m);
        m.movement(0, 0, -1, BUTTON_RIGHT);
        assert_eq!(drain(&mut m), [0x0A, 0, 0, 0x0F]);
    }

    #[test]
    fn remote_mode_holds_movement_for_a_read_and_wrap_echoes() {
        let mut m = Ps2Mouse::default();
        m.write(0xF0);
        m.write(0xF4);
        drain(&mut m);
        m.movement(7, 0, 0, 0);
        assert!(!m.has_data());
        m.write(0xEB);
        assert_eq!(drain(&mut m), [ACK, 0x08, 7, 0]);
        m.write(0xEE);
        m.write(0x42);
        m.write(0xEC);
        assert_eq!(drain(&mut m), [ACK, 0x42, ACK]);
    }
}
