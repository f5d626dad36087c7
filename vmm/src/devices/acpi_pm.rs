//! ACPI fixed hardware: the PM1a event block (status and enable registers,
//! with the power button) and the PM1a control block (SCI_EN, and the sleep
//! request a guest writes to power off).
//!
//! Pressing the power button sets PWRBTN_STS and raises the SCI (level, IRQ
//! 9) while the guest has PWRBTN_EN set; the guest's ACPI driver turns that
//! into a KEY_POWER event and its init shuts down. The guest then writes
//! SLP_TYP=S5 with SLP_EN to PM1a_CNT, which the VMM turns into a power-off.

use crate::devices::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal};
use std::sync::Arc;

/// The SLP_TYP value of S5 (soft off) that the DSDT's `\_S5` package names.
pub const S5_SLP_TYP: u16 = 5;
const PWRBTN: u16 = 1 << 8;
const SCI_EN: u16 = 1;
const SLP_EN: u16 = 1 << 13;
/// Offsets within the device: PM1a_STS, PM1a_EN, PM1a_CNT, then the PM
/// timer (the PIIX4 layout).
const STS: u64 = 0;
const EN: u64 = 2;
const CNT: u64 = 4;
pub const TMR: u64 = 8;
/// Bytes the device spans (event block 4, control block 2, padding, timer 4).
pub const LEN: u64 = 12;
/// The ACPI PM timer runs at 3.579545 MHz and is 24 bits wide (the FADT
/// leaves TMR_VAL_EXT clear).
const PM_TIMER_HZ: u128 = 3_579_545;
const PM_TIMER_MASK: u32 = 0x00ff_ffff;

pub struct AcpiPm {
    sts: u16,
    en: u16,
    cnt: u16,
    set_sci: Box<dyn Fn(bool) + Send>,
    exit: Arc<ExitSignal>,
    epoch: std::time::Instant,
}

impl AcpiPm {
    /// `set_sci` drives the SCI line (true = asserted).
    pub fn new(set_sci: Box<dyn Fn(bool) + Send>, exit: Arc<ExitSignal>) -> Self {
        Self { sts: 0, en: 0, cnt: SCI_EN, set_sci, exit, epoch: std::time::Instant::now() }
    }

    /// A press of the power button.
    pub fn press_power_button(&mut self) {
        self.sts |= PWRBTN;
        self.update_sci();
    }

    /// Whether the guest has armed the power button event.
    pub fn power_button_enabled(&self) -> bool {
        self.en & PWRBTN != 0
    }

    fn timer(&self) -> u32 {
        ((self.epoch.elapsed().as_nanos() * PM_TIMER_HZ / 1_000_000_000) as u32) & PM_TIMER_MASK
    }

    fn update_sci(&self) {
        (self.set_sci)(self.sts & self.en != 0);
    }
}

fn word(data: &[u8]) -> u16 {
    match data.len() {
        0 => 0,
        1 => u16::from(data[0]),
        _ => u16::from_le_bytes([data[0], data[1]]),
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            STS => u32::from(self.sts),
            EN => u32::from(self.en),
            CNT => u32::from(self.cnt),
            TMR => self.timer(),
            _ => 0,
        };
        for (i, b) in data.iter_mut().enumerate() {
            *b = v.to_le_bytes().get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let v = word(data);
        match offset {
            // Status bits are cleared by writing 1.
            STS => {
                self.sts &= !v;
                self.update_sci();
            }
            EN => {
                self.en = v;
                self.update_sci();
            }
            CNT => {
                self.cnt = (v & !SLP_EN) | SCI_EN;
                let slp_typ = (v >> 10) & 7;
                if v & SLP_EN != 0 && slp_typ == S5_SLP_TYP {
                    self.exit.request(ExitReason::PowerOff);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn power_button_raises_sci_until_acknowledged_and_s5_powers_off() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let line = Arc::new(AtomicBool::new(false));
        let l2 = Arc::clone(&line);
        let mut pm = AcpiPm::new(Box::new(move |v| l2.store(v, Ordering::SeqCst)), Arc::clone(&exit));
        pm.press_power_button();
        assert!(!line.load(Ordering::SeqCst), "no SCI until the guest enables the event");
        pm.write(EN, &PWRBTN.to_le_bytes());
        assert!(line.load(Ordering::SeqCst));
        let mut b = [0u8; 2];
        pm.read(STS, &mut b);
        assert_eq!(u16::from_le_bytes(b) & PWRBTN, PWRBTN);
        pm.write(STS, &PWRBTN.to_le_bytes());
        assert!(!line.load(Ordering::SeqCst), "acknowledged");
        pm.read(CNT, &mut b);
        assert_eq!(u16::from_le_bytes(b) & SCI_EN, SCI_EN, "ACPI mode is always on");
        assert_eq!(exit.reason(), None);
        pm.write(CNT, &((S5_SLP_TYP << 10) | SLP_EN).to_le_bytes());
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));
    }

    #[test]
    fn the_pm_timer_counts_at_3_58_mhz() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut pm = AcpiPm::new(Box::new(|_| {}), exit);
        let read = |pm: &mut AcpiPm| {
            let mut b = [0u8; 4];
            pm.read(TMR, &mut b);
            u32::from_le_bytes(b)
        };
        let a = read(&mut pm);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let ticks = read(&mut pm).wrapping_sub(a) & PM_TIMER_MASK;
        // 20 ms is 71,591 ticks; allow for a slow, busy machine.
        assert!((71_000..400_000).contains(&ticks), "{ticks} ticks in 20 ms");
    }
}
