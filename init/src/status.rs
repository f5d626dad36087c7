//! What PID 1 knows about the machine, kept in /run/kvmos/status.json for
//! the panel (which shows the data disk state and warns when RAM-only) and
//! printed as the console screen.

use crate::datadisk::DataDisk;
use crate::net::{link::format_mac, NetStatus};
use std::path::Path;

pub use kvmos_contract::panel::SETUP_CODE_FILE;
pub use kvmos_contract::status::STATUS_FILE;

#[derive(Debug, Clone, Default)]
pub struct Status {
    pub version: String,
    pub hostname: String,
    pub panel_port: u16,
    pub net: NetStatus,
    pub data: Option<DataDisk>,
    pub setup_code: Option<String>,
}

impl Status {
    pub fn panel_url(&self) -> Option<String> {
        let (ip, _) = self.net.address?;
        Some(if self.panel_port == 443 {
            format!("https://{ip}/")
        } else {
            format!("https://{ip}:{}/", self.panel_port)
        })
    }

    pub fn ram_only(&self) -> bool {
        !self.data.as_ref().is_some_and(DataDisk::is_persistent)
    }

    /// The status file's contents (`kvmos_contract::status`).
    pub fn to_contract(&self) -> kvmos_contract::status::Status {
        kvmos_contract::status::Status {
            version: self.version.clone(),
            hostname: self.hostname.clone(),
            panel_port: self.panel_port,
            panel_url: self.panel_url(),
            uplink: self.net.uplink.clone(),
            mac: self.net.mac.as_ref().map(format_mac),
            address: self.net.address.map(|(a, p)| format!("{a}/{p}")),
            gateway: self.net.gateway.map(|g| g.to_string()),
            dns: self.net.dns.iter().map(|d| d.to_string()).collect(),
            network_note: self.net.note.clone(),
            ram_only: self.ram_only(),
            data_disk: self.data.as_ref().map(DataDisk::describe).unwrap_or_else(|| "not checked yet".into()),
            data_device: match &self.data {
                Some(DataDisk::Mounted { device, .. }) => Some(device.display().to_string()),
                _ => None,
            },
        }
    }

    /// Writes the status file atomically.
    pub fn write(&self) -> std::io::Result<()> {
        self.to_contract().write(Path::new(STATUS_FILE))
    }

    /// The console screen: where to point the browser, and the state of
    /// the things an admin checks first.
    pub fn screen(&self) -> String {
        let mut lines = vec![format!("kvmos {}  —  {}", self.version, self.hostname)];
        match self.panel_url() {
            Some(url) => lines.push(format!("Panel:      {url}")),
            None => lines.push("Panel:      (no address yet)".into()),
        }
        let addr = match self.net.address {
            Some((a, p)) => format!("{a}/{p} on br0"),
            None => "none".into(),
        };
        let uplink = match (&self.net.uplink, &self.net.mac) {
            (Some(u), Some(m)) => format!(" (uplink {u}, {})", format_mac(m)),
            (Some(u), None) => format!(" (uplink {u})"),
            _ => String::new(),
        };
        lines.push(format!("Address:    {addr}{uplink}"));
        if let Some(gw) = self.net.gateway {
            lines.push(format!("Gateway:    {gw}"));
        }
        if !self.net.note.is_empty() {
            lines.push(format!("Network:    {}", self.net.note));
        }
        lines.push(format!(
            "Data disk:  {}",
            self.data.as_ref().map(DataDisk::describe).unwrap_or_else(|| "not checked yet".into())
        ));
        if let Some(code) = &self.setup_code {
            lines.push(format!("Setup code: {code}   (enter it in the panel to set the admin password)"));
        }
        let width = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0) + 2;
        let rule = "─".repeat(width);
        let mut out = format!("\n{rule}\n");
        for l in lines {
            out.push_str(&format!(" {l}\n"));
        }
        out.push_str(&rule);
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn screen_shows_url_address_and_ram_only_warning() {
        let mut s =
            Status { version: "0.1.0".into(), hostname: "kvmos-123456".into(), panel_port: 443, ..Default::default() };
        s.net.address = Some(([10, 0, 2, 15].into(), 24));
        s.net.uplink = Some("eth0".into());
        s.net.mac = Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        s.data = Some(DataDisk::RamOnly { reason: "no partition labelled KVMOS_DATA was found".into() });
        let screen = s.screen();
        assert!(screen.contains("Panel:      https://10.0.2.15/"), "{screen}");
        assert!(screen.contains("10.0.2.15/24 on br0 (uplink eth0, 52:54:00:12:34:56)"), "{screen}");
        assert!(screen.contains("RAM-ONLY"), "{screen}");
        assert!(s.ram_only());
        s.panel_port = 8443;
        assert_eq!(s.panel_url().unwrap(), "https://10.0.2.15:8443/");
    }

    /// What init writes is the shared example the panel's tests read
    /// (`contract/fixtures/status.json`).
    #[test]
    fn init_writes_the_status_file_the_panel_reads() {
        let mut s = Status { version: "0.1.0".into(), hostname: "kvmos".into(), panel_port: 443, ..Default::default() };
        s.net.uplink = Some("eth0".into());
        s.net.mac = Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        s.net.address = Some(([10, 0, 2, 15].into(), 24));
        s.net.gateway = Some([10, 0, 2, 2].into());
        s.net.dns = vec![[10, 0, 2, 3].into()];
        s.net.note = "DHCP lease from 10.0.2.2".into();
        s.data = Some(DataDisk::Mounted { device: "/dev/vdb1".into(), formatted_now: false });
        let expected: kvmos_contract::status::Status =
            serde_json::from_str(include_str!("../../contract/fixtures/status.json")).unwrap();
        assert_eq!(s.to_contract(), expected);
    }
}
