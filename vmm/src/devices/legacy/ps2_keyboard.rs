//! A PS/2 keyboard, as it sits behind the i8042 (QEMU's `hw/input/ps2.c`
//! is the reference): the commands firmware and Linux send (reset, ID,
//! LEDs, typematic rate, scancode set, enable and disable), and key
//! presses in scancode set 1 or 2.
//!
//! Keys come in as XT (set 1) make codes, the form RFB's extended key event
//! carries: one byte below 0x80, with 0x80 set for keys sent with the 0xE0
//! prefix. In set 2 a key is sent as the set-2 code, with 0xF0 before it for
//! a release. With the controller's translation on (as firmware and Linux
//! leave it), what the guest reads is set 1 again, so the keyboard hands
//! out set-1 codes directly then, as the translating 8042 would.
//!
//! Set 3 is answered but sent like set 2: no guest here asks for it.

use std::collections::VecDeque;

/// Bytes a real keyboard buffers; QEMU keeps 16 too. Keys beyond are lost.
const QUEUE_LEN: usize = 16;
/// Key events held on the host side while the keyboard's own 16-byte
/// buffer is full: a text pasted or typed by a script arrives whole, at the
/// pace the guest reads, as if typed fast. Beyond this many, keys are lost.
const TYPEAHEAD_LEN: usize = 4096;

pub const ACK: u8 = 0xFA;
const RESEND: u8 = 0xFE;
const SELF_TEST_PASSED: u8 = 0xAA;
const ECHO: u8 = 0xEE;
const PREFIX_EXTENDED: u8 = 0xE0;
const PREFIX_BREAK: u8 = 0xF0;

/// XT (set 1) make code → set-2 code. Keys with the 0xE0 prefix use the
/// code of their unprefixed twin in both sets, so one table serves both.
/// Zero: no such key.
#[rustfmt::skip]
const SET1_TO_SET2: [u8; 0x80] = [
    // 0x00: -, Esc, 1 ... 0, -, =, Backspace, Tab
    0x00, 0x76, 0x16, 0x1E, 0x26, 0x25, 0x2E, 0x36, 0x3D, 0x3E, 0x46, 0x45, 0x4E, 0x55, 0x66, 0x0D,
    // 0x10: Q W E R T Y U I O P [ ] Enter LCtrl A S
    0x15, 0x1D, 0x24, 0x2D, 0x2C, 0x35, 0x3C, 0x43, 0x44, 0x4D, 0x54, 0x5B, 0x5A, 0x14, 0x1C, 0x1B,
    // 0x20: D F G H J K L ; ' ` LShift \ Z X C V
    0x23, 0x2B, 0x34, 0x33, 0x3B, 0x42, 0x4B, 0x4C, 0x52, 0x0E, 0x12, 0x5D, 0x1A, 0x22, 0x21, 0x2A,
    // 0x30: B N M , . / RShift KP* LAlt Space Caps F1 F2 F3 F4 F5
    0x32, 0x31, 0x3A, 0x41, 0x49, 0x4A, 0x59, 0x7C, 0x11, 0x29, 0x58, 0x05, 0x06, 0x04, 0x0C, 0x03,
    // 0x40: F6 F7 F8 F9 F10 NumLock ScrollLock KP7 KP8 KP9 KP- KP4 KP5 KP6 KP+ KP1
    0x0B, 0x83, 0x0A, 0x01, 0x09, 0x77, 0x7E, 0x6C, 0x75, 0x7D, 0x7B, 0x6B, 0x73, 0x74, 0x79, 0x69,
    // 0x50: KP2 KP3 KP0 KP. SysRq - 102nd F11 F12
    0x72, 0x7A, 0x70, 0x71, 0x84, 0x00, 0x61, 0x78, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    // 0x70: Katakana, -, -, Ro, ..., Henkan, -, Muhenkan, -, Yen
    0x13, 0x00, 0x00, 0x51, 0x00, 0x00, 0x00, 0x00, 0x00, 0x64, 0x00, 0x67, 0x00, 0x6A, 0x00, 0x00,
];

/// What the keyboard waits for after a command that takes an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    Leds,
    ScancodeSet,
    Typematic,
}

#[derive(Debug)]
pub struct Ps2Keyboard {
    queue: VecDeque<u8>,
    /// Keys from the outside that wait for room in `queue`.
    typeahead: VecDeque<(u8, bool)>,
    awaiting: Option<Awaiting>,
    /// Scanning on: keys are reported.
    enabled: bool,
    scancode_set: u8,
    /// The controller translates set 2 to set 1 (its command byte bit 6).
    translate: bool,
    leds: u8,
    typematic: u8,
}

impl Default for Ps2Keyboard {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
            typeahead: VecDeque::new(),
            awaiting: None,
            enabled: true,
            scancode_set: 2,
            translate: false,
            leds: 0,
            typematic: 0x2B,
        }
    }
}

impl Ps2Keyboard {
    /// The next byte for the controller's output buffer.
    pub fn pop(&mut self) -> Option<u8> {
        let byte = self.queue.pop_front();
        self.feed();
        byte
    }

    pub fn has_data(&self) -> bool {
        !self.queue.is_empty()
    }

    pub fn set_translation(&mut self, on: bool) {
        self.translate = on;
    }

    /// The LED state the guest last set (bit 0 Scroll, 1 Num, 2 Caps Lock).
    pub fn leds(&self) -> u8 {
        self.leds
    }

    pub fn scancode_set(&self) -> u8 {
        self.scancode_set
    }

    /// Answers are queued in full or not at all; a full queue keeps the
    /// oldest bytes, as a keyboard whose host is not reading would (keys
    /// from the outside wait in the typeahead instead).
    fn push(&mut self, bytes: &[u8]) {
        if self.queue.len() + bytes.len() <= QUEUE_LEN {
            self.queue.extend(bytes);
        }
    }

    /// A command or argument byte from the guest.
    pub fn write(&mut self, byte: u8) {
        if let Some(what) = self.awaiting.take() {
            match what {
                Awaiting::Leds => self.leds = byte & 0x07,
                Awaiting::Typematic => self.typematic = byte & 0x7F,
                Awaiting::ScancodeSet if byte == 0 => {
                    let set = self.reported_set();
                    return self.push(&[ACK, set]);
                }
                Awaiting::ScancodeSet if byte <= 3 => self.scancode_set = byte,
                Awaiting::ScancodeSet => return self.push(&[RESEND]),
            }
            return self.push(&[ACK]);
        }
        match byte {
            0xED => self.expect(Awaiting::Leds),
            0xEE => self.push(&[ECHO]),
            0xF0 => self.expect(Awaiting::ScancodeSet),
            // Identify: an MF2 keyboard. Through the translating
            // controller its second byte reads 0x41.
            0xF2 => self.push(&[ACK, 0xAB, if self.translate { 0x41 } else { 0x83 }]),
            0xF3 => self.expect(Awaiting::Typematic),
            0xF4 => {
                self.enabled = true;
                self.push(&[ACK]);
            }
            0xF5 => {
                self.set_defaults();
                self.enabled = false;
                self.push(&[ACK]);
            }
            0xF6 => {
                self.set_defaults();
                self.push(&[ACK]);
            }
            // Set-3 key modes: accepted and ignored.
            0xF7..=0xFD => self.push(&[ACK]),
            0xFE => self.push(&[RESEND]),
            0xFF => {
                self.queue.clear();
                self.typeahead.clear();
                self.set_defaults();
                self.enabled = true;
                self.push(&[ACK, SELF_TEST_PASSED]);
            }
            _ => self.push(&[RESEND]),
        }
    }

    fn expect(&mut self, what: Awaiting) {
        self.awaiting = Some(what);
        self.push(&[ACK]);
    }

    fn set_defaults(&mut self) {
        self.scancode_set = 2;
        self.leds = 0;
        self.typematic = 0x2B;
    }

    /// The set number as the guest reads it back (translated in set 1
    /// codes when the controller translates, as QEMU does).
    fn reported_set(&self) -> u8 {
        match (self.translate, self.scancode_set) {
            (true, 1) => 0x43,
            (true, 2) => 0x41,
            (true, _) => 0x3F,
            (false, set) => set,
        }
    }

    /// A key went down or up. `xt` is its XT make code, with 0x80 set for
    /// keys that carry the 0xE0 prefix. It waits on the host side while the
    /// keyboard's buffer is full. Unknown keys and keys while scanning is
    /// off are dropped.
    pub fn key(&mut self, xt: u8, down: bool) {
        if self.typeahead.len() < TYPEAHEAD_LEN {
            self.typeahead.push_back((xt, down));
        }
        self.feed();
    }

    /// Moves waiting keys into the keyboard's buffer while they fit.
    fn feed(&mut self) {
        while let Some(&(xt, down)) = self.typeahead.front() {
            let bytes = self.scancodes(xt, down);
            if self.queue.len() + bytes.len() > QUEUE_LEN {
                return;
            }
            self.typeahead.pop_front();
            self.queue.extend(bytes);
        }
    }

    /// What the keyboard sends for a key, in its current set; nothing for
    /// unknown keys or while scanning is off.
    fn scancodes(&self, xt: u8, down: bool) -> Vec<u8> {
        if !self.enabled {
            return Vec::new();
        }
        let extended = xt & 0x80 != 0;
        let code = xt & 0x7F;
        let set2 = SET1_TO_SET2[usize::from(code)];
        if set2 == 0 {
            return Vec::new();
        }
        let mut bytes = Vec::with_capacity(3);
        if extended {
            bytes.push(PREFIX_EXTENDED);
        }
        if self.scancode_set == 1 || self.translate {
            bytes.push(if down { code } else { code | 0x80 });
        } else {
            if !down {
                bytes.push(PREFIX_BREAK);
            }
            bytes.push(set2);
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(k: &mut Ps2Keyboard) -> Vec<u8> {
        std::iter::from_fn(|| k.pop()).collect()
    }

    /// A burst of keys (a pasted text) once overflowed the 16-byte buffer
    /// and lost keys: now they wait on the host side and all arrive, in
    /// order, as the guest reads.
    #[test]
    fn a_burst_longer_than_the_buffer_arrives_whole() {
        let mut k = Ps2Keyboard::default();
        k.set_translation(true);
        for i in 0..200u8 {
            let xt = 0x10 + i % 10;
            k.key(xt, true);
            k.key(xt, false);
        }
        assert!(k.queue.len() <= QUEUE_LEN);
        let got = drain(&mut k);
        assert_eq!(got.len(), 400);
        for (i, pair) in got.chunks(2).enumerate() {
            let xt = 0x10 + (i % 10) as u8;
            assert_eq!(pair, [xt, xt | 0x80], "key {i}");
        }
    }

    #[test]
    fn commands_answer_as_a_keyboard_does() {
        let mut k = Ps2Keyboard::default();
        k.write(0xFF);
        assert_eq!(drain(&mut k), [ACK, 0xAA]);
        k.write(0xF2);
        assert_eq!(drain(&mut k), [ACK, 0xAB, 0x83]);
        k.write(0xED);
        k.write(0x05);
        assert_eq!(drain(&mut k), [ACK, ACK]);
        assert_eq!(k.leds(), 5);
        k.write(0xF0);
        k.write(0x00);
        assert_eq!(drain(&mut k), [ACK, ACK, 2]);
        k.write(0xF0);
        k.write(0x01);
        assert_eq!(drain(&mut k), [ACK, ACK]);
        assert_eq!(k.scancode_set(), 1);
        k.write(0xF0);
        k.write(0x09);
        assert_eq!(drain(&mut k), [ACK, RESEND], "no such set");
        k.write(0xEE);
        assert_eq!(drain(&mut k), [ECHO]);
        k.write(0x42);
        assert_eq!(drain(&mut k), [RESEND], "unknown command");
    }

    #[test]
    fn keys_come_out_in_the_set_the_guest_reads() {
        let mut k = Ps2Keyboard::default();
        // Set 2, untranslated: A is 1C, break F0 1C; Up is E0 75.
        k.key(0x1E, true);
        k.key(0x1E, false);
        k.key(0xC8, true);
        k.key(0xC8, false);
        assert_eq!(drain(&mut k), [0x1C, 0xF0, 0x1C, 0xE0, 0x75, 0xE0, 0xF0, 0x75]);
        // Through the translating controller the guest reads set 1.
        k.set_translation(true);
        k.key(0x1E, true);
        k.key(0x1E, false);
        k.key(0x9D, true);
        assert_eq!(drain(&mut k), [0x1E, 0x9E, 0xE0, 0x1D]);
        k.write(0xF2);
        assert_eq!(drain(&mut k), [ACK, 0xAB, 0x41]);
    }

    #[test]
    fn disabled_scanning_drops_keys_and_a_full_buffer_holds_them_back() {
        let mut k = Ps2Keyboard::default();
        k.write(0xF5);
        assert_eq!(drain(&mut k), [ACK]);
        k.key(0x1E, true);
        assert!(!k.has_data());
        k.write(0xF4);
        drain(&mut k);
        for _ in 0..40 {
            k.key(0x1E, true);
        }
        assert_eq!(k.queue.len(), QUEUE_LEN, "the keyboard's own buffer is full");
        assert_eq!(drain(&mut k).len(), 40, "the rest waited");
        k.key(0x00, true);
        k.key(0x7F, true);
        assert!(!k.has_data(), "keys with no code are dropped");
    }
}
