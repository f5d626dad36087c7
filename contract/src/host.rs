//! `config/host.json` on the data disk: the host settings the panel saves
//! (Settings → Host) and kvmos-init applies at the next boot, before the
//! network comes up. Each value has the syntax of the `kvmos.*` boot
//! option of the same name, which init parses (and which wins over it).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the file is, under the data directory.
pub const HOST_FILE: &str = "config/host.json";

/// The file's path for the data directory `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(HOST_FILE)
}

/// The saved settings; absent ones keep init's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedSettings {
    /// `kvmos.net`: `dhcp`, `none`, or `static:ADDRESS/PREFIX,GATEWAY[,DNS]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<String>,
    /// `kvmos.hostname`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `kvmos.ntp`: an NTP server's IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ntp: Option<String>,
    /// `kvmos.iface`: the uplink's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
}

impl SavedSettings {
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The settings as `(name, value)` pairs, in the boot options' order.
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        [("net", &self.net), ("hostname", &self.hostname), ("ntp", &self.ntp), ("iface", &self.iface)]
            .into_iter()
            .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_example_reads_and_writes_back_the_same() {
        let text = include_str!("../fixtures/host.json");
        let s = SavedSettings::from_json(text).unwrap();
        assert_eq!(
            s.pairs(),
            vec![
                ("net", "static:192.168.7.20/24,192.168.7.1,192.168.7.53"),
                ("hostname", "rack4-kvm"),
                ("ntp", "192.168.7.1")
            ]
        );
        assert_eq!(s.to_json(), text.trim_end());
        assert!(SavedSettings::from_json(r#"{"hostnme":"x"}"#).is_err(), "a typo is refused, not dropped");
    }
}
