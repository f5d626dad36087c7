//! `/run/kvmos/status.json`: what kvmos-init knows about the machine,
//! rewritten whenever it changes (the network comes up, the address
//! changes, the data disk is checked). The panel shows it on the
//! dashboard and warns when the host runs from RAM only.

use serde::{Deserialize, Serialize};
use std::path::Path;

pub const STATUS_FILE: &str = "/run/kvmos/status.json";

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub version: String,
    pub hostname: String,
    /// The panel's HTTPS port.
    pub panel_port: u16,
    /// `https://ADDRESS[:PORT]/` once the host has an address.
    pub panel_url: Option<String>,
    /// The uplink NIC under the bridge.
    pub uplink: Option<String>,
    pub mac: Option<String>,
    /// `ADDRESS/PREFIX` of the bridge.
    pub address: Option<String>,
    pub gateway: Option<String>,
    pub dns: Vec<String>,
    /// What the network is doing, in words (e.g. "waiting for DHCP").
    pub network_note: String,
    /// No data disk: VMs and settings are lost at power-off.
    pub ram_only: bool,
    /// The data disk's state, in words.
    pub data_disk: String,
    /// The data partition's device, once mounted.
    pub data_device: Option<String>,
}

impl Status {
    /// Writes the file atomically (next to it, then renamed).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(".status.json.new");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        std::fs::rename(tmp, path)
    }

    /// Reads the file; `Ok(None)` when there is none (not on an appliance,
    /// or init has not written it yet).
    pub fn read(path: &Path) -> std::io::Result<Option<Self>> {
        crate::read_json(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_example_round_trips_through_the_file() {
        let example: Status = serde_json::from_str(include_str!("../fixtures/status.json")).unwrap();
        assert_eq!(example.address.as_deref(), Some("10.0.2.15/24"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        assert_eq!(Status::read(&path).unwrap(), None);
        example.write(&path).unwrap();
        assert_eq!(Status::read(&path).unwrap(), Some(example));
        std::fs::write(&path, r#"{"version":"x"}"#).unwrap();
        assert!(Status::read(&path).is_err(), "a partial file is an error, not silent defaults");
    }
}
