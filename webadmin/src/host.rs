//! The host: the overview the dashboard shows, the settings kvmos-init
//! applies at the next boot (`config/host.json` on the data disk, in the
//! syntax of the `kvmos.*` boot options), and reboot and power-off through
//! init's signals (SIGUSR1 reboots, SIGUSR2 powers off; init then stops the
//! panel, which powers the VMs off first).

use crate::app::{ApiError, ApiResult};
use kvmos_contract::host::SavedSettings;
use kvmos_contract::status::Status;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::Path;

/// A value from /proc/meminfo, in KiB.
pub fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.split_whitespace().next()?.parse().ok())
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DataDisk {
    pub mounted: bool,
    pub ram_only: bool,
    pub device: Option<String>,
    pub free_bytes: u64,
    pub total_bytes: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Overview {
    pub hostname: String,
    pub version: String,
    pub cpu_model: String,
    pub cpus: u16,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
    /// MemTotal - MemAvailable.
    pub memory_used_bytes: u64,
    pub kvm_available: bool,
    pub uptime_secs: u64,
    pub addresses: Vec<String>,
    pub gateway: Option<String>,
    pub data_disk: DataDisk,
    pub vms_running: usize,
    pub vms_defined: usize,
}

pub fn overview(
    data_dir: &Path,
    status_file: &Path,
    ram_only: bool,
    vms_running: usize,
    vms_defined: usize,
) -> Overview {
    let status = match Status::read(status_file) {
        Ok(status) => status.unwrap_or_default(),
        Err(e) => {
            tracing::error!("cannot read kvmos-init's {}: {e}", status_file.display());
            Status::default()
        }
    };
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_else(|| "unknown".into());
    let uptime_secs =
        std::fs::read_to_string("/proc/uptime").ok().and_then(|t| t.split('.').next()?.parse().ok()).unwrap_or(0);
    let total = meminfo("MemTotal").unwrap_or(0) * 1024;
    let available = meminfo("MemAvailable").unwrap_or(0) * 1024;
    let (free_bytes, total_bytes) = fs_space(data_dir);
    let ram_only = ram_only || status.ram_only;
    Overview {
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        cpu_model,
        cpus: std::thread::available_parallelism().map(|n| n.get() as u16).unwrap_or(1),
        memory_total_bytes: total,
        memory_free_bytes: available,
        memory_used_bytes: total.saturating_sub(available),
        // The device is root's; the VMMs open it before their jail closes.
        kvm_available: Path::new("/dev/kvm").exists(),
        uptime_secs,
        addresses: status.address.into_iter().collect(),
        gateway: status.gateway,
        data_disk: DataDisk { mounted: !ram_only, ram_only, device: status.data_device, free_bytes, total_bytes },
        vms_running,
        vms_defined,
    }
}

/// Free and total bytes of the file system holding `dir`.
pub fn fs_space(dir: &Path) -> (u64, u64) {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else { return (0, 0) };
    // SAFETY: statvfs fills the struct for a valid path.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) != 0 {
            return (0, 0);
        }
        (s.f_bavail * s.f_frsize, s.f_blocks * s.f_frsize)
    }
}

/// How the host gets its address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum NetworkSettings {
    Dhcp,
    Static { address: String, prefix: u8, gateway: String, dns: Option<String> },
}

/// The host settings the panel edits; applied at the next boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostSettings {
    pub hostname: Option<String>,
    pub network: NetworkSettings,
    /// An NTP server's IPv4 address.
    pub ntp: Option<String>,
}

fn settings_path(data_dir: &Path) -> std::path::PathBuf {
    kvmos_contract::host::path(data_dir)
}

fn ip(field: &str, v: &str) -> ApiResult<Ipv4Addr> {
    v.parse().map_err(|_| ApiError::bad(field, format!("{field}: {v:?} is not an IPv4 address like 192.0.2.10")))
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && !h.starts_with('-')
        && !h.ends_with('-')
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl HostSettings {
    pub fn load(data_dir: &Path) -> Self {
        let saved: SavedSettings = crate::store::load_json(&settings_path(data_dir)).ok().flatten().unwrap_or_default();
        let network = saved
            .net
            .as_deref()
            .and_then(|n| n.strip_prefix("static:"))
            .and_then(|s| {
                let mut parts = s.split(',');
                let (addr, prefix) = parts.next()?.split_once('/')?;
                Some(NetworkSettings::Static {
                    address: addr.to_string(),
                    prefix: prefix.parse().ok()?,
                    gateway: parts.next()?.to_string(),
                    dns: parts.next().map(String::from),
                })
            })
            .unwrap_or(NetworkSettings::Dhcp);
        Self { hostname: saved.hostname, network, ntp: saved.ntp }
    }

    /// Checks each field and writes the file init reads at boot.
    pub fn save(&self, data_dir: &Path) -> ApiResult<()> {
        if let Some(h) = &self.hostname {
            if !valid_hostname(h) {
                return Err(ApiError::bad("hostname", "hostname: 1 to 63 letters, digits or '-', not at either end"));
            }
        }
        let net = match &self.network {
            NetworkSettings::Dhcp => "dhcp".to_string(),
            NetworkSettings::Static { address, prefix, gateway, dns } => {
                ip("network.address", address)?;
                if !(1..=32).contains(prefix) {
                    return Err(ApiError::bad("network.prefix", "network.prefix: give 1 to 32 (24 for 255.255.255.0)"));
                }
                ip("network.gateway", gateway)?;
                let mut s = format!("static:{address}/{prefix},{gateway}");
                if let Some(d) = dns.as_deref().filter(|d| !d.is_empty()) {
                    ip("network.dns", d)?;
                    s.push(',');
                    s.push_str(d);
                }
                s
            }
        };
        if let Some(n) = self.ntp.as_deref().filter(|n| !n.is_empty()) {
            ip("ntp", n)?;
        }
        let old: SavedSettings = crate::store::load_json(&settings_path(data_dir)).ok().flatten().unwrap_or_default();
        let saved = SavedSettings {
            net: Some(net),
            hostname: self.hostname.clone().filter(|h| !h.is_empty()),
            ntp: self.ntp.clone().filter(|n| !n.is_empty()),
            iface: old.iface,
        };
        crate::store::save_json(&settings_path(data_dir), &saved).map_err(ApiError::from)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PowerAction {
    Reboot,
    Shutdown,
}

/// Asks kvmos-init (PID 1) to reboot or power off, through the launcher
/// (the panel may not signal PID 1 itself). Only on kvmos: init's status
/// file says it is there.
pub fn power(status_file: &Path, launcher: &crate::privsep::Launcher, action: PowerAction) -> ApiResult<()> {
    if !status_file.exists() {
        return Err(ApiError::conflict(
            "this panel is not running on kvmos (no kvmos-init status file); reboot the host yourself",
        ));
    }
    let reboot = action == PowerAction::Reboot;
    match launcher.ask(&crate::privsep::Request::Power { reboot }) {
        Ok(crate::privsep::Reply::Done) => Ok(()),
        Ok(other) => Err(ApiError::internal(format!("kvmos-init was not asked: {other:?}"))),
        Err(e) => Err(ApiError::internal(format!("cannot reach the launcher: {e:#}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_written_in_the_syntax_init_reads() {
        let dir = tempfile::tempdir().unwrap();
        let s = HostSettings {
            hostname: Some("kvm-01".into()),
            network: NetworkSettings::Static {
                address: "192.0.2.10".into(),
                prefix: 24,
                gateway: "192.0.2.1".into(),
                dns: Some("192.0.2.53".into()),
            },
            ntp: Some("192.0.2.123".into()),
        };
        s.save(dir.path()).unwrap();
        let raw: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config/host.json")).unwrap()).unwrap();
        assert_eq!(raw["net"], "static:192.0.2.10/24,192.0.2.1,192.0.2.53");
        assert_eq!(raw["hostname"], "kvm-01");
        assert_eq!(HostSettings::load(dir.path()), s);

        let bad = HostSettings {
            network: NetworkSettings::Static {
                address: "300.1.1.1".into(),
                prefix: 24,
                gateway: "192.0.2.1".into(),
                dns: None,
            },
            ..s.clone()
        };
        assert_eq!(bad.save(dir.path()).unwrap_err().field.as_deref(), Some("network.address"));
        let bad = HostSettings { hostname: Some("-bad".into()), ..s };
        assert_eq!(bad.save(dir.path()).unwrap_err().field.as_deref(), Some("hostname"));
    }

    /// What the panel writes is the shared example kvmos-init's tests read
    /// (`contract/fixtures/host.json`), byte for byte.
    #[test]
    fn the_panel_writes_the_host_file_init_reads() {
        let dir = tempfile::tempdir().unwrap();
        let s = HostSettings {
            hostname: Some("rack4-kvm".into()),
            network: NetworkSettings::Static {
                address: "192.168.7.20".into(),
                prefix: 24,
                gateway: "192.168.7.1".into(),
                dns: Some("192.168.7.53".into()),
            },
            ntp: Some("192.168.7.1".into()),
        };
        s.save(dir.path()).unwrap();
        let written = std::fs::read_to_string(settings_path(dir.path())).unwrap();
        assert_eq!(written, include_str!("../../contract/fixtures/host.json"));
    }

    /// kvmos-init's status file (the shared example its tests write) shows
    /// on the dashboard.
    #[test]
    fn the_overview_shows_what_init_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("status.json");
        std::fs::write(&status, include_str!("../../contract/fixtures/status.json")).unwrap();
        let o = overview(dir.path(), &status, false, 0, 0);
        assert_eq!(o.addresses, vec!["10.0.2.15/24"]);
        assert_eq!(o.gateway.as_deref(), Some("10.0.2.2"));
        assert_eq!(o.data_disk.device.as_deref(), Some("/dev/vdb1"));
        assert!(!o.data_disk.ram_only);
    }

    #[test]
    fn meminfo_reads_kib_values() {
        assert!(meminfo("MemTotal").unwrap() > 0);
        assert!(meminfo("NoSuchKey").is_none());
    }
}
