//! Keys for guests, from scripts (`POST /api/v1/screens/keys`) and the KVM
//! switch: a text typed on a US layout, and key combinations by name
//! (`ctrl+alt+delete`, `enter`, `f2`). A VM with a screen gets them as XT
//! scancodes through its VNC server (QEMU's numbering: keys behind the 0xE0
//! prefix have 0x80 added); a VM with only a serial console gets the bytes
//! a terminal would send.

/// One key going down or up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stroke {
    pub scancode: u16,
    pub down: bool,
}

const SHIFT: u16 = 0x2A;
const CTRL: u16 = 0x1D;

/// Named keys: names, scancode, and what a terminal sends for them.
const NAMED: &[(&[&str], u16, &str)] = &[
    (&["enter", "return"], 0x1C, "\r"),
    (&["esc", "escape"], 0x01, "\x1b"),
    (&["backspace"], 0x0E, "\x7f"),
    (&["tab"], 0x0F, "\t"),
    (&["space"], 0x39, " "),
    (&["ctrl", "control"], CTRL, ""),
    (&["shift"], SHIFT, ""),
    (&["alt"], 0x38, ""),
    (&["altgr"], 0xB8, ""),
    (&["meta", "super", "win"], 0xDB, ""),
    (&["capslock"], 0x3A, ""),
    (&["insert"], 0xD2, "\x1b[2~"),
    (&["delete", "del"], 0xD3, "\x1b[3~"),
    (&["home"], 0xC7, "\x1b[H"),
    (&["end"], 0xCF, "\x1b[F"),
    (&["pageup"], 0xC9, "\x1b[5~"),
    (&["pagedown"], 0xD1, "\x1b[6~"),
    (&["up"], 0xC8, "\x1b[A"),
    (&["down"], 0xD0, "\x1b[B"),
    (&["left"], 0xCB, "\x1b[D"),
    (&["right"], 0xCD, "\x1b[C"),
    (&["f1"], 0x3B, "\x1bOP"),
    (&["f2"], 0x3C, "\x1bOQ"),
    (&["f3"], 0x3D, "\x1bOR"),
    (&["f4"], 0x3E, "\x1bOS"),
    (&["f5"], 0x3F, "\x1b[15~"),
    (&["f6"], 0x40, "\x1b[17~"),
    (&["f7"], 0x41, "\x1b[18~"),
    (&["f8"], 0x42, "\x1b[19~"),
    (&["f9"], 0x43, "\x1b[20~"),
    (&["f10"], 0x44, "\x1b[21~"),
    (&["f11"], 0x57, "\x1b[23~"),
    (&["f12"], 0x58, "\x1b[24~"),
];

/// The US layout's rows: the characters, shifted characters, and the
/// scancode of the row's first key.
const ROWS: &[(&str, &str, u16)] = &[
    ("1234567890-=", "!@#$%^&*()_+", 0x02),
    ("qwertyuiop[]", "QWERTYUIOP{}", 0x10),
    ("asdfghjkl;'`", "ASDFGHJKL:\"~", 0x1E),
    ("\\zxcvbnm,./", "|ZXCVBNM<>?", 0x2B),
];

/// The key that types `ch` on a US keyboard, and whether Shift is held.
fn key_of(ch: char) -> Option<(u16, bool)> {
    match ch {
        ' ' => return Some((0x39, false)),
        '\n' => return Some((0x1C, false)),
        '\t' => return Some((0x0F, false)),
        _ => {}
    }
    ROWS.iter().find_map(|(plain, shifted, first)| {
        let at = |s: &str| s.chars().position(|c| c == ch).map(|i| first + i as u16);
        at(plain).map(|k| (k, false)).or_else(|| at(shifted).map(|k| (k, true)))
    })
}

fn named(name: &str) -> Option<(u16, &'static str)> {
    NAMED.iter().find(|(names, _, _)| names.contains(&name)).map(|&(_, code, seq)| (code, seq))
}

/// The strokes that type `text` on a US keyboard.
pub fn text_strokes(text: &str) -> Result<Vec<Stroke>, String> {
    let mut out = Vec::new();
    for ch in text.chars() {
        let (code, shift) = key_of(ch).ok_or_else(|| {
            format!("{ch:?} is not on a US keyboard; type ASCII text, or send the key by name in \"keys\"")
        })?;
        if shift {
            out.push(Stroke { scancode: SHIFT, down: true });
        }
        out.push(Stroke { scancode: code, down: true });
        out.push(Stroke { scancode: code, down: false });
        if shift {
            out.push(Stroke { scancode: SHIFT, down: false });
        }
    }
    Ok(out)
}

/// The parts of a combination, lower-cased: `Ctrl+Alt+Delete` → ctrl, alt,
/// delete.
fn parts(combo: &str) -> Result<Vec<String>, String> {
    let parts: Vec<String> = combo.split('+').map(|p| p.trim().to_ascii_lowercase()).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("{combo:?} is not a key combination; write keys joined by '+', like \"ctrl+alt+delete\""));
    }
    Ok(parts)
}

/// The scancode of one part of a combination: a named key or a character.
fn part_code(part: &str) -> Result<u16, String> {
    if let Some((code, _)) = named(part) {
        return Ok(code);
    }
    let mut chars = part.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => key_of(c).map(|(k, _)| k).ok_or_else(|| unknown(part)),
        _ => Err(unknown(part)),
    }
}

fn unknown(part: &str) -> String {
    format!(
        "unknown key {part:?}; use a character or one of enter, esc, tab, space, backspace, ctrl, shift, alt, \
         meta, delete, insert, home, end, pageup, pagedown, up, down, left, right, f1-f12"
    )
}

/// The strokes of a combination: every key pressed in order, then released
/// in reverse.
pub fn combo_strokes(combo: &str) -> Result<Vec<Stroke>, String> {
    let codes = parts(combo)?.iter().map(|p| part_code(p)).collect::<Result<Vec<_>, _>>()?;
    let mut out: Vec<Stroke> = codes.iter().map(|&scancode| Stroke { scancode, down: true }).collect();
    out.extend(codes.iter().rev().map(|&scancode| Stroke { scancode, down: false }));
    Ok(out)
}

/// What a serial terminal sends for `text`: the text, with newlines as
/// the carriage return the Enter key sends.
pub fn text_bytes(text: &str) -> Result<Vec<u8>, String> {
    if let Some(c) = text.chars().find(|&c| !(c.is_ascii_graphic() || matches!(c, ' ' | '\n' | '\t'))) {
        return Err(format!("{c:?} cannot be typed on a serial console; type printable ASCII text"));
    }
    Ok(text.replace('\n', "\r").into_bytes())
}

/// What a serial terminal sends for a combination: a named key's sequence,
/// a character, or Ctrl with a letter (a control character). Combinations
/// a terminal cannot express (Ctrl+Alt+Delete) are refused.
pub fn combo_bytes(combo: &str) -> Result<Vec<u8>, String> {
    let parts = parts(combo)?;
    let no_terminal = || format!("{combo:?} has no meaning on a serial console");
    match parts.as_slice() {
        [one] => {
            if let Some((_, seq)) = named(one) {
                return if seq.is_empty() { Err(no_terminal()) } else { Ok(seq.as_bytes().to_vec()) };
            }
            part_code(one)?;
            Ok(one.as_bytes().to_vec())
        }
        [ctrl, key] if named(ctrl).map(|n| n.0) == Some(CTRL) => {
            let c = key.chars().next().filter(|c| key.len() == 1 && c.is_ascii_lowercase()).ok_or_else(no_terminal)?;
            Ok(vec![c as u8 - b'a' + 1])
        }
        _ => Err(no_terminal()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(strokes: &[Stroke]) -> Vec<(u16, bool)> {
        strokes.iter().map(|s| (s.scancode, s.down)).collect()
    }

    #[test]
    fn text_is_typed_with_shift_where_a_us_keyboard_needs_it() {
        assert_eq!(
            codes(&text_strokes("a!\n").unwrap()),
            [
                (0x1E, true),
                (0x1E, false),
                (SHIFT, true),
                (0x02, true),
                (0x02, false),
                (SHIFT, false),
                (0x1C, true),
                (0x1C, false)
            ]
        );
        assert_eq!(codes(&text_strokes("Z").unwrap())[1], (0x2C, true));
        assert_eq!(codes(&text_strokes("/").unwrap())[0], (0x35, true));
        assert!(text_strokes("é").unwrap_err().contains("not on a US keyboard"));
    }

    #[test]
    fn combinations_press_in_order_and_release_in_reverse() {
        assert_eq!(
            codes(&combo_strokes("Ctrl+Alt+Delete").unwrap()),
            [(CTRL, true), (0x38, true), (0xD3, true), (0xD3, false), (0x38, false), (CTRL, false)]
        );
        assert_eq!(codes(&combo_strokes("f2").unwrap()), [(0x3C, true), (0x3C, false)]);
        assert_eq!(codes(&combo_strokes("ctrl+c").unwrap())[1], (0x2E, true));
        assert!(combo_strokes("ctrl+").unwrap_err().contains("joined by '+'"));
        assert!(combo_strokes("hyper").unwrap_err().contains("unknown key \"hyper\""));
    }

    #[test]
    fn serial_consoles_get_what_a_terminal_sends() {
        assert_eq!(text_bytes("ls\n").unwrap(), b"ls\r");
        assert!(text_bytes("\u{7}").is_err());
        assert_eq!(combo_bytes("enter").unwrap(), b"\r");
        assert_eq!(combo_bytes("up").unwrap(), b"\x1b[A");
        assert_eq!(combo_bytes("ctrl+c").unwrap(), [3]);
        assert_eq!(combo_bytes("x").unwrap(), b"x");
        assert!(combo_bytes("ctrl+alt+delete").unwrap_err().contains("no meaning on a serial console"));
        assert!(combo_bytes("shift").is_err());
    }
}
