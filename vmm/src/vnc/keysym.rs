//! X keysyms (what a plain RFB key event carries) to XT scancodes, for a
//! US keyboard layout. Clients that send QEMU's extended key event give
//! the scancode themselves and skip this table; the panel's noVNC does.

/// The XT make code for `keysym` (0x80 set for 0xE0-prefixed keys), or
/// None for keys a PC keyboard does not have.
pub fn to_xt(keysym: u32) -> Option<u8> {
    let code = match keysym {
        // Letters, either case: the client sends Shift itself.
        0x61..=0x7A | 0x41..=0x5A => {
            const LETTERS: &[u8; 26] = &[
                0x1E, 0x30, 0x2E, 0x20, 0x12, 0x21, 0x22, 0x23, 0x17, 0x24, 0x25, 0x26, 0x32, 0x31, 0x18, 0x19, 0x10,
                0x13, 0x1F, 0x14, 0x16, 0x2F, 0x11, 0x2D, 0x15, 0x2C,
            ];
            LETTERS[((keysym | 0x20) - 0x61) as usize]
        }
        0x31..=0x39 => (keysym - 0x31 + 0x02) as u8,
        0x30 => 0x0B,
        0x20 => 0x39,
        // The shifted digits row and punctuation, by the key that makes them.
        0x21 => 0x02, // !
        0x40 => 0x03, // @
        0x23 => 0x04, // #
        0x24 => 0x05, // $
        0x25 => 0x06, // %
        0x5E => 0x07, // ^
        0x26 => 0x08, // &
        0x2A => 0x09, // *
        0x28 => 0x0A, // (
        0x29 => 0x0B, // )
        0x2D | 0x5F => 0x0C,
        0x3D | 0x2B => 0x0D,
        0x5B | 0x7B => 0x1A,
        0x5D | 0x7D => 0x1B,
        0x3B | 0x3A => 0x27,
        0x27 | 0x22 => 0x28,
        0x60 | 0x7E => 0x29,
        0x5C | 0x7C => 0x2B,
        0x2C | 0x3C => 0x33,
        0x2E | 0x3E => 0x34,
        0x2F | 0x3F => 0x35,
        0xFF08 => 0x0E, // BackSpace
        0xFF09 => 0x0F, // Tab
        0xFF0D => 0x1C, // Return
        0xFF1B => 0x01, // Escape
        0xFF13 => 0xC6, // Pause (sent as Ctrl-Break's E0 46)
        0xFF14 => 0x46, // Scroll_Lock
        0xFF50 => 0xC7, // Home
        0xFF51 => 0xCB, // Left
        0xFF52 => 0xC8, // Up
        0xFF53 => 0xCD, // Right
        0xFF54 => 0xD0, // Down
        0xFF55 => 0xC9, // Page_Up
        0xFF56 => 0xD1, // Page_Down
        0xFF57 => 0xCF, // End
        0xFF61 => 0xB7, // Print
        0xFF63 => 0xD2, // Insert
        0xFF67 => 0xDD, // Menu
        0xFF7F => 0x45, // Num_Lock
        0xFF8D => 0x9C, // KP_Enter
        0xFFAA => 0x37, // KP_Multiply
        0xFFAB => 0x4E, // KP_Add
        0xFFAD => 0x4A, // KP_Subtract
        0xFFAE => 0x53, // KP_Decimal
        0xFFAF => 0xB5, // KP_Divide
        0xFFB0..=0xFFB9 => [0x52, 0x4F, 0x50, 0x51, 0x4B, 0x4C, 0x4D, 0x47, 0x48, 0x49][(keysym - 0xFFB0) as usize],
        0xFFBE..=0xFFC7 => (keysym - 0xFFBE + 0x3B) as u8, // F1-F10
        0xFFC8 => 0x57,                                    // F11
        0xFFC9 => 0x58,                                    // F12
        0xFFE1 => 0x2A,                                    // Shift_L
        0xFFE2 => 0x36,                                    // Shift_R
        0xFFE3 => 0x1D,                                    // Control_L
        0xFFE4 => 0x9D,                                    // Control_R
        0xFFE5 => 0x3A,                                    // Caps_Lock
        0xFFE7 | 0xFFEB => 0xDB,                           // Meta_L, Super_L
        0xFFE8 | 0xFFEC => 0xDC,                           // Meta_R, Super_R
        0xFFE9 => 0x38,                                    // Alt_L
        0xFFEA | 0xFE03 => 0xB8,                           // Alt_R, AltGr
        0xFFFF => 0xD3,                                    // Delete
        _ => return None,
    };
    Some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn us_layout_keys_map_to_their_scancodes() {
        assert_eq!(to_xt(u32::from(b'a')), Some(0x1E));
        assert_eq!(to_xt(u32::from(b'Z')), Some(0x2C));
        assert_eq!(to_xt(u32::from(b'1')), Some(0x02));
        assert_eq!(to_xt(u32::from(b'0')), Some(0x0B));
        assert_eq!(to_xt(u32::from(b'!')), to_xt(u32::from(b'1')));
        assert_eq!(to_xt(u32::from(b'?')), Some(0x35));
        assert_eq!(to_xt(0xFF0D), Some(0x1C));
        assert_eq!(to_xt(0xFF52), Some(0xC8), "Up carries the E0 prefix");
        assert_eq!(to_xt(0xFFC9), Some(0x58));
        assert_eq!(to_xt(0x20AC), None, "the euro sign has no key of its own");
    }
}
