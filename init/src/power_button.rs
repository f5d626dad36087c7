//! The ACPI power button (and the power key of a keyboard), read from the
//! input devices the button driver registers. A press asks for an orderly
//! power-off, as `system_powerdown` in QEMU or a short press on a server does.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// struct input_event on 64-bit: a timeval (16 bytes), type, code, value.
const EVENT_SIZE: usize = 24;

/// The /dev/input/event* devices that can send KEY_POWER.
pub fn devices() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/class/input") else { return out };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("event") {
            continue;
        }
        let caps = std::fs::read_to_string(e.path().join("device/capabilities/key")).unwrap_or_default();
        if has_key(&caps, KEY_POWER) {
            out.push(PathBuf::from("/dev/input").join(name));
        }
    }
    out.sort();
    out
}

/// Reads the key capability bitmap sysfs prints: hex words, most
/// significant first, each `usize::BITS` wide.
fn has_key(caps: &str, key: u16) -> bool {
    let words: Vec<&str> = caps.split_whitespace().collect();
    let bits = usize::BITS as usize;
    let (word, bit) = (key as usize / bits, key as usize % bits);
    let Some(w) = words.len().checked_sub(1 + word).and_then(|i| words.get(i)) else { return false };
    u64::from_str_radix(w, 16).map(|v| v >> bit & 1 == 1).unwrap_or(false)
}

/// Whether an input_event record is a power key press.
pub fn is_power_press(ev: &[u8]) -> bool {
    ev.len() >= EVENT_SIZE
        && u16::from_ne_bytes([ev[16], ev[17]]) == EV_KEY
        && u16::from_ne_bytes([ev[18], ev[19]]) == KEY_POWER
        && i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]) == 1
}

/// Watches every power button; calls `pressed` for each press.
pub fn watch(pressed: impl Fn() + Send + Sync + 'static) -> Result<usize, String> {
    let devs = devices();
    let pressed = std::sync::Arc::new(pressed);
    for dev in &devs {
        let mut f = File::open(dev).map_err(|e| format!("cannot open {}: {e}", dev.display()))?;
        let p = std::sync::Arc::clone(&pressed);
        std::thread::Builder::new()
            .name("power-button".into())
            .spawn(move || {
                let mut ev = [0u8; EVENT_SIZE];
                while f.read_exact(&mut ev).is_ok() {
                    if is_power_press(&ev) {
                        p();
                    }
                }
            })
            .map_err(|e| e.to_string())?;
    }
    Ok(devs.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_bitmaps_are_read_like_the_kernel_prints_them() {
        // The ACPI button's bitmap: only KEY_POWER (116 = bit 52 of word 1).
        assert!(has_key("10000000000000 0", KEY_POWER));
        assert!(!has_key("0", KEY_POWER));
        assert!(!has_key("", KEY_POWER));
    }

    #[test]
    fn only_a_power_key_press_counts() {
        let mut ev = [0u8; EVENT_SIZE];
        ev[16..18].copy_from_slice(&EV_KEY.to_ne_bytes());
        ev[18..20].copy_from_slice(&KEY_POWER.to_ne_bytes());
        ev[20..24].copy_from_slice(&1i32.to_ne_bytes());
        assert!(is_power_press(&ev));
        ev[20..24].copy_from_slice(&0i32.to_ne_bytes());
        assert!(!is_power_press(&ev), "a release is not a press");
    }
}
