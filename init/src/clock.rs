//! The system clock. The kernel sets it from the RTC at boot
//! (CONFIG_RTC_HCTOSYS); this checks that it did, reads the RTC itself when
//! it did not, and corrects it by SNTP once the network knows a time server.
//! TLS certificates and the audit log need a roughly right clock.

use nix::sys::time::TimeSpec;
use nix::time::{clock_settime, ClockId};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A clock before this (2024-01-01) was never set.
const PLAUSIBLE_EPOCH: u64 = 1_704_067_200;
/// Seconds between the NTP era (1900) and the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

#[repr(C)]
#[derive(Default)]
struct RtcTime {
    tm_sec: i32,
    tm_min: i32,
    tm_hour: i32,
    tm_mday: i32,
    tm_mon: i32,
    tm_year: i32,
    tm_wday: i32,
    tm_yday: i32,
    tm_isdst: i32,
}

nix::ioctl_read!(rtc_rd_time, b'p', 0x09, RtcTime);

/// Seconds since the kernel started (from /proc/uptime).
pub fn uptime_secs() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next().and_then(|s| s.parse().ok()))
        .unwrap_or(0.0)
}

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD HH:MM:SS UTC` for a Unix time.
pub fn format_utc(t: u64) -> String {
    let days = (t / 86_400) as i64;
    let secs = t % 86_400;
    // Inverse of days_from_civil.
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", secs / 3600, secs / 60 % 60, secs % 60)
}

fn set_clock(unix: u64) -> Result<(), String> {
    let ts = TimeSpec::new(unix as i64, 0);
    clock_settime(ClockId::CLOCK_REALTIME, ts).map_err(|e| format!("cannot set the clock: {e}"))
}

/// Boot step: make sure the clock is set; returns what to tell the admin.
pub fn check() -> Result<String, String> {
    if now_unix() >= PLAUSIBLE_EPOCH {
        return Ok(format!("clock: {} (from the RTC)", format_utc(now_unix())));
    }
    let f = std::fs::File::open("/dev/rtc0")
        .map_err(|e| format!("the clock is unset and /dev/rtc0 cannot be opened: {e}"))?;
    let mut tm = RtcTime::default();
    // SAFETY: RTC_RD_TIME fills a struct rtc_time, which RtcTime mirrors.
    unsafe { rtc_rd_time(std::os::fd::AsRawFd::as_raw_fd(&f), &mut tm) }
        .map_err(|e| format!("cannot read the RTC: {e}"))?;
    let days = days_from_civil(i64::from(tm.tm_year) + 1900, i64::from(tm.tm_mon) + 1, i64::from(tm.tm_mday));
    let unix = days * 86_400 + i64::from(tm.tm_hour) * 3600 + i64::from(tm.tm_min) * 60 + i64::from(tm.tm_sec);
    let unix = u64::try_from(unix).map_err(|_| "the RTC holds a date before 1970".to_string())?;
    set_clock(unix)?;
    Ok(format!("clock: {} (read from the RTC)", format_utc(unix)))
}

/// One bounded SNTP query (RFC 4330); sets the clock from the answer.
pub fn sntp(server: Ipv4Addr) -> Result<String, String> {
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    let mut req = [0u8; 48];
    req[0] = 0b00_100_011; // LI 0, version 4, mode 3 (client)
    sock.send_to(&req, SocketAddrV4::new(server, 123)).map_err(|e| format!("cannot reach NTP server {server}: {e}"))?;
    let mut resp = [0u8; 48];
    let (n, _) = sock.recv_from(&mut resp).map_err(|e| format!("no answer from NTP server {server}: {e}"))?;
    let unix = parse_sntp(&resp[..n]).ok_or_else(|| format!("NTP server {server} sent an unusable answer"))?;
    let before = now_unix();
    set_clock(unix)?;
    Ok(format!("clock: {} from NTP server {server} (moved {} s)", format_utc(unix), unix as i64 - before as i64))
}

/// The transmit time of an SNTP server reply, as Unix seconds.
pub fn parse_sntp(resp: &[u8]) -> Option<u64> {
    if resp.len() < 48 || resp[0] & 0x07 != 4 || resp[1] == 0 {
        return None; // not a server reply, or stratum 0 ("kiss of death")
    }
    let secs = u64::from(u32::from_be_bytes(resp[40..44].try_into().ok()?));
    secs.checked_sub(NTP_UNIX_OFFSET).filter(|&t| t >= PLAUSIBLE_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2024, 1, 1) * 86_400, PLAUSIBLE_EPOCH as i64);
        assert_eq!(format_utc(PLAUSIBLE_EPOCH + 3661), "2024-01-01 01:01:01 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn sntp_replies_are_checked() {
        let mut r = [0u8; 48];
        r[0] = 0b00_100_100;
        r[1] = 2;
        r[40..44].copy_from_slice(&((PLAUSIBLE_EPOCH + NTP_UNIX_OFFSET + 5) as u32).to_be_bytes());
        assert_eq!(parse_sntp(&r), Some(PLAUSIBLE_EPOCH + 5));
        r[1] = 0;
        assert_eq!(parse_sntp(&r), None, "kiss of death");
        r[1] = 2;
        r[0] = 0b00_100_011;
        assert_eq!(parse_sntp(&r), None, "a client packet is no answer");
    }
}
