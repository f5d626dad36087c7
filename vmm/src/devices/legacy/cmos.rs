//! The MC146818 real-time clock and its 128 bytes of CMOS NVRAM (ports
//! 0x70/0x71), as on a PC.
//!
//! The clock reads the host's time (UTC) plus whatever offset the guest set
//! by writing the time registers, in BCD or binary and 12- or 24-hour form
//! as register B asks. The NVRAM holds what the VMM puts there for the
//! firmware (memory sizes, CPU count, boot order; see [`reg`]) and what the
//! guest writes.
//!
//! The periodic, update-ended and alarm interrupts raise IRQ 8 (SeaBIOS
//! waits with the periodic interrupt in INT 15h AH=86h, and some systems
//! keep time with it). They run on a timerfd that the VMM's event loop
//! watches ([`Cmos::timer_fd`], [`Cmos::tick`]); it is armed only while
//! the guest has one of them enabled, so an idle RTC costs nothing.

use crate::devices::bus::BusDevice;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use vmm_sys_util::timerfd::TimerFd;

pub const PORT: u16 = 0x70;
pub const PORT_LEN: u64 = 2;

/// NVRAM registers the VMM fills in for the firmware.
pub mod reg {
    pub const SECONDS: u8 = 0x00;
    pub const MINUTES: u8 = 0x02;
    pub const HOURS: u8 = 0x04;
    pub const DAY_OF_WEEK: u8 = 0x06;
    pub const DAY: u8 = 0x07;
    pub const MONTH: u8 = 0x08;
    pub const YEAR: u8 = 0x09;
    pub const A: u8 = 0x0a;
    pub const B: u8 = 0x0b;
    pub const C: u8 = 0x0c;
    pub const D: u8 = 0x0d;
    /// Base memory in KiB (640).
    pub const BASE_MEM_LOW: u8 = 0x15;
    /// Memory from 1 MiB to 64 MiB in KiB (also at 0x30/0x31).
    pub const EXT_MEM_LOW: u8 = 0x17;
    pub const EXT_MEM2_LOW_ALT: u8 = 0x30;
    pub const CENTURY: u8 = 0x32;
    /// Memory from 16 MiB to the 32-bit hole, in 64 KiB units.
    pub const MEM_ABOVE_16M_LOW: u8 = 0x34;
    /// Boot devices: 0x3D low nibble first, high nibble second; 0x38 high
    /// nibble third (1 floppy, 2 hard disk, 3 CD-ROM).
    pub const BOOT_ORDER_3: u8 = 0x38;
    pub const BOOT_ORDER_1_2: u8 = 0x3d;
    /// Memory above 4 GiB in 64 KiB units (three bytes).
    pub const MEM_ABOVE_4G: u8 = 0x5b;
    /// The number of CPUs minus one.
    pub const CPU_COUNT_MINUS_ONE: u8 = 0x5f;
}

/// Register B bits.
const B_24H: u8 = 1 << 1;
const B_BINARY: u8 = 1 << 2;
const B_UIE: u8 = 1 << 4;
const B_AIE: u8 = 1 << 5;
const B_PIE: u8 = 1 << 6;
/// Register C bits: which interrupt fired, and that one did.
const C_UF: u8 = 1 << 4;
const C_AF: u8 = 1 << 5;
const C_PF: u8 = 1 << 6;
const C_IRQF: u8 = 1 << 7;
/// Register D: the battery is good.
const D_VALID_RAM: u8 = 1 << 7;
/// An alarm byte with these top bits matches any value.
const ALARM_ANY: u8 = 0xc0;
const SECONDS_ALARM: u8 = 0x01;
const MINUTES_ALARM: u8 = 0x03;
const HOURS_ALARM: u8 = 0x05;

pub struct Cmos {
    index: u8,
    nvram: [u8; 128],
    /// Seconds the guest's clock runs ahead of the host's.
    offset: i64,
    timer: Option<TimerFd>,
    /// Raises or lowers IRQ 8.
    irq: Box<dyn Fn(bool) + Send>,
    /// The clock second last seen by [`Self::tick`], for update-ended and
    /// alarm interrupts.
    last_second: Option<i64>,
}

impl Default for Cmos {
    /// An RTC without interrupts (its timer is never armed).
    fn default() -> Self {
        Self::new(None, Box::new(|_| {}))
    }
}

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

/// Days since 1970-01-01 to a date (Howard Hinnant's civil algorithms).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl Civil {
    fn from_unix(t: i64) -> Self {
        let (year, month, day) = civil_from_days(t.div_euclid(86_400));
        let s = t.rem_euclid(86_400) as u32;
        Self { year, month, day, hour: s / 3600, minute: s / 60 % 60, second: s % 60 }
    }

    fn to_unix(self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * 86_400
            + i64::from(self.hour * 3600 + self.minute * 60 + self.second)
    }
}

fn to_bcd(v: u32) -> u8 {
    (((v / 10) << 4) | (v % 10)) as u8
}

fn from_bcd(v: u8) -> u32 {
    u32::from(v >> 4) * 10 + u32::from(v & 0xf)
}

impl Cmos {
    /// An RTC whose interrupts raise `irq`, timed by `timer`.
    pub fn new(timer: Option<TimerFd>, irq: Box<dyn Fn(bool) + Send>) -> Self {
        let mut nvram = [0u8; 128];
        nvram[reg::A as usize] = 0x26; // 32.768 kHz time base, 1024 Hz rate
        nvram[reg::B as usize] = B_24H;
        nvram[reg::D as usize] = D_VALID_RAM;
        Self { index: 0, nvram, offset: 0, timer, irq, last_second: None }
    }

    /// A timerfd for the interrupts, non-blocking so that the event loop
    /// never waits on it after the guest disarmed it.
    pub fn new_timer() -> std::io::Result<TimerFd> {
        let t = TimerFd::new().map_err(std::io::Error::from)?;
        // SAFETY: fcntl on a descriptor this function owns.
        unsafe {
            let flags = libc::fcntl(t.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(t.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        Ok(t)
    }

    /// The timerfd the event loop waits on.
    pub fn timer_fd(&self) -> Option<RawFd> {
        self.timer.as_ref().map(|t| t.as_raw_fd())
    }

    /// How often the periodic interrupt fires (register A's rate).
    fn periodic(&self) -> Option<Duration> {
        let rate = u32::from(self.nvram[reg::A as usize] & 0x0f);
        let hz = match rate {
            0 => return None,
            1 | 2 => 32_768u32 >> (rate + 6),
            r => 32_768u32 >> (r - 1),
        };
        Some(Duration::from_nanos(1_000_000_000 / u64::from(hz)))
    }

    /// Arms the timer for what register B enables, or disarms it.
    fn reprogram(&mut self) {
        let b = self.nvram[reg::B as usize];
        let period = match (b & B_PIE != 0, b & (B_UIE | B_AIE) != 0) {
            (true, _) => self.periodic(),
            (false, true) => Some(Duration::from_millis(100)),
            (false, false) => None,
        };
        let Some(timer) = self.timer.as_mut() else { return };
        let result = match period {
            Some(p) => timer.reset(p, Some(p)),
            None => timer.clear(),
        };
        if let Err(e) = result {
            tracing::warn!("RTC: cannot program the interrupt timer: {e}");
        }
    }

    /// The timer fired: sets the flags of the interrupts that are due and
    /// raises IRQ 8 for the enabled ones.
    pub fn tick(&mut self) {
        let expired = self.timer.as_mut().and_then(|t| {
            let mut n = 0u64;
            // SAFETY: reads 8 bytes into `n` from a non-blocking timerfd.
            let r = unsafe { libc::read(t.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
            (r == 8).then_some(n)
        });
        if expired.is_none() {
            return;
        }
        let b = self.nvram[reg::B as usize];
        let mut c = self.nvram[reg::C as usize];
        if b & B_PIE != 0 {
            c |= C_PF;
        }
        let now = self.now();
        let second = now.to_unix();
        if self.last_second != Some(second) {
            self.last_second = Some(second);
            c |= C_UF;
            let matches = |alarm: u8, v: u32| alarm & ALARM_ANY == ALARM_ANY || self.decode(alarm) == v;
            let n = &self.nvram;
            if matches(n[SECONDS_ALARM as usize], now.second)
                && matches(n[MINUTES_ALARM as usize], now.minute)
                && matches(n[HOURS_ALARM as usize], now.hour)
            {
                c |= C_AF;
            }
        }
        let fire =
            (b & B_PIE != 0 && c & C_PF != 0) || (b & B_UIE != 0 && c & C_UF != 0) || (b & B_AIE != 0 && c & C_AF != 0);
        if fire {
            c |= C_IRQF;
            (self.irq)(true);
            (self.irq)(false);
        }
        self.nvram[reg::C as usize] = c;
    }

    /// Sets an NVRAM byte (for the firmware, before the VM runs).
    pub fn set(&mut self, index: u8, value: u8) {
        if let Some(b) = self.nvram.get_mut(usize::from(index)) {
            *b = value;
        }
    }

    /// Fills in the memory sizes the firmware reads when fw_cfg has no
    /// memory map: `low` bytes of RAM below the 32-bit hole and `high`
    /// bytes from 4 GiB up; and the CPU count.
    pub fn set_memory_and_cpus(&mut self, low: u64, high: u64, cpus: u8) {
        const MIB: u64 = 1 << 20;
        self.set(reg::BASE_MEM_LOW, (640 & 0xff) as u8);
        self.set(reg::BASE_MEM_LOW + 1, (640 >> 8) as u8);
        let ext_kib = (low.saturating_sub(MIB) / 1024).min(0xffff) as u16;
        for at in [reg::EXT_MEM_LOW, reg::EXT_MEM2_LOW_ALT] {
            self.set(at, ext_kib as u8);
            self.set(at + 1, (ext_kib >> 8) as u8);
        }
        let above_16m = (low.saturating_sub(16 * MIB) >> 16).min(0xffff) as u16;
        self.set(reg::MEM_ABOVE_16M_LOW, above_16m as u8);
        self.set(reg::MEM_ABOVE_16M_LOW + 1, (above_16m >> 8) as u8);
        let above_4g = high >> 16;
        for i in 0..3 {
            self.set(reg::MEM_ABOVE_4G + i, (above_4g >> (8 * i)) as u8);
        }
        self.set(reg::CPU_COUNT_MINUS_ONE, cpus.saturating_sub(1));
        // Hard disk first when the firmware has no boot order of its own.
        self.set(reg::BOOT_ORDER_1_2, 0x02);
    }

    fn now(&self) -> Civil {
        let host = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        Civil::from_unix(host + self.offset)
    }

    fn encode(&self, v: u32) -> u8 {
        if self.nvram[reg::B as usize] & B_BINARY != 0 {
            v as u8
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> u32 {
        if self.nvram[reg::B as usize] & B_BINARY != 0 {
            u32::from(v)
        } else {
            from_bcd(v)
        }
    }

    fn read_register(&mut self, index: u8) -> u8 {
        let t = self.now();
        let b = self.nvram[reg::B as usize];
        match index {
            reg::SECONDS => self.encode(t.second),
            reg::MINUTES => self.encode(t.minute),
            reg::HOURS if b & B_24H != 0 => self.encode(t.hour),
            reg::HOURS => {
                let h12 = if t.hour.is_multiple_of(12) { 12 } else { t.hour % 12 };
                self.encode(h12) | if t.hour >= 12 { 0x80 } else { 0 }
            }
            reg::DAY_OF_WEEK => {
                let dow = (days_from_civil(t.year, t.month, t.day) + 4).rem_euclid(7) as u32 + 1;
                self.encode(dow)
            }
            reg::DAY => self.encode(t.day),
            reg::MONTH => self.encode(t.month),
            reg::YEAR => self.encode((t.year.rem_euclid(100)) as u32),
            reg::CENTURY => self.encode((t.year / 100) as u32),
            // Never mid-update: UIP reads as 0.
            reg::A => self.nvram[reg::A as usize] & 0x7f,
            reg::C => std::mem::take(&mut self.nvram[reg::C as usize]),
            reg::D => D_VALID_RAM,
            i => self.nvram.get(usize::from(i)).copied().unwrap_or(0xff),
        }
    }

    fn write_register(&mut self, index: u8, value: u8) {
        let mut t = self.now();
        let v = || self.decode(value);
        match index {
            reg::SECONDS => t.second = v().min(59),
            reg::MINUTES => t.minute = v().min(59),
            reg::HOURS if self.nvram[reg::B as usize] & B_24H != 0 => t.hour = self.decode(value).min(23),
            reg::HOURS => {
                let h = self.decode(value & 0x7f) % 12;
                t.hour = h + if value & 0x80 != 0 { 12 } else { 0 };
            }
            reg::DAY => t.day = v().clamp(1, 31),
            reg::MONTH => t.month = v().clamp(1, 12),
            reg::YEAR => t.year = t.year - t.year.rem_euclid(100) + i64::from(v().min(99)),
            reg::CENTURY => t.year = i64::from(v()) * 100 + t.year.rem_euclid(100),
            reg::C | reg::D | reg::DAY_OF_WEEK => return,
            reg::A | reg::B => {
                // Register A's update-in-progress bit is read-only.
                let v = if index == reg::A { value & 0x7f } else { value };
                self.nvram[usize::from(index)] = v;
                self.reprogram();
                return;
            }
            i => {
                if let Some(b) = self.nvram.get_mut(usize::from(i)) {
                    *b = value;
                }
                return;
            }
        }
        let host = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        self.offset = t.to_unix() - host;
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if offset == 1 {
            data[0] = self.read_register(self.index);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            // Bit 7 masks NMIs; the index is the low 7 bits.
            0 => self.index = data[0] & 0x7f,
            _ => self.write_register(self.index, data[0]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(c: &mut Cmos, index: u8) -> u8 {
        c.write(0, &[index | 0x80]);
        let mut b = [0u8];
        c.read(1, &mut b);
        b[0]
    }

    fn write(c: &mut Cmos, index: u8, v: u8) {
        c.write(0, &[index]);
        c.write(1, &[v]);
    }

    #[test]
    fn civil_dates_round_trip() {
        for t in [0i64, 951_782_400, 1_795_000_000, 4_102_444_800] {
            assert_eq!(Civil::from_unix(t).to_unix(), t);
        }
        assert_eq!(
            Civil::from_unix(951_782_400),
            Civil { year: 2000, month: 2, day: 29, hour: 0, minute: 0, second: 0 }
        );
    }

    #[test]
    fn the_clock_reads_bcd_and_the_guest_can_set_it() {
        let mut c = Cmos::default();
        let year = from_bcd(read(&mut c, reg::YEAR));
        let now = Civil::from_unix(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64);
        assert_eq!(i64::from(year), now.year % 100);
        assert_eq!(from_bcd(read(&mut c, reg::CENTURY)), (now.year / 100) as u32);
        assert_eq!(read(&mut c, reg::D), 0x80);
        assert_eq!(read(&mut c, reg::A) & 0x80, 0, "never in an update");

        write(&mut c, reg::YEAR, 0x99);
        assert_eq!(read(&mut c, reg::YEAR), 0x99);
        write(&mut c, reg::B, B_24H | B_BINARY);
        assert_eq!(read(&mut c, reg::YEAR), 99);
        assert_eq!(read(&mut c, reg::CENTURY), 20);
    }

    #[test]
    fn the_periodic_interrupt_raises_irq8_until_disabled() {
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::sync::Arc;
        let raised = Arc::new(AtomicU32::new(0));
        let r = Arc::clone(&raised);
        let irq = Box::new(move |level: bool| {
            if level {
                r.fetch_add(1, Ordering::SeqCst);
            }
        });
        let mut c = Cmos::new(Some(Cmos::new_timer().unwrap()), irq);
        c.tick();
        assert_eq!(raised.load(Ordering::SeqCst), 0, "disarmed: nothing to read");
        // 1024 Hz (rate 6), periodic interrupt on.
        write(&mut c, reg::A, 0x26);
        write(&mut c, reg::B, B_24H | B_PIE);
        std::thread::sleep(Duration::from_millis(20));
        c.tick();
        assert_eq!(raised.load(Ordering::SeqCst), 1);
        let flags = read(&mut c, reg::C);
        assert_eq!(flags & (C_IRQF | C_PF), C_IRQF | C_PF);
        assert_eq!(read(&mut c, reg::C), 0, "reading C clears it");
        write(&mut c, reg::B, B_24H);
        std::thread::sleep(Duration::from_millis(20));
        c.tick();
        assert_eq!(raised.load(Ordering::SeqCst), 1, "disabled again");
    }

    #[test]
    fn memory_sizes_land_where_seabios_reads_them() {
        let mut c = Cmos::default();
        c.set_memory_and_cpus(0xc000_0000, 1 << 30, 4);
        let w = |c: &mut Cmos, i: u8| u16::from(read(c, i)) | (u16::from(read(c, i + 1)) << 8);
        assert_eq!(w(&mut c, reg::EXT_MEM2_LOW_ALT), 0xffff);
        // (3 GiB - 16 MiB) / 64 KiB
        assert_eq!(w(&mut c, reg::MEM_ABOVE_16M_LOW), 0xbf00);
        assert_eq!([read(&mut c, 0x5b), read(&mut c, 0x5c), read(&mut c, 0x5d)], [0x00, 0x40, 0x00]);
        assert_eq!(read(&mut c, reg::CPU_COUNT_MINUS_ONE), 3);
        // The NVRAM keeps what the guest writes.
        write(&mut c, 0x40, 0x5a);
        assert_eq!(read(&mut c, 0x40), 0x5a);
    }
}
