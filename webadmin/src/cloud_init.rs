//! cloud-init provisioning: what a cloud image needs at its first boot
//! (host name, a user with SSH keys and an optional password, the network,
//! optional raw user-data), handed to the guest as a NoCloud seed: a small
//! FAT volume labelled `CIDATA` with `meta-data`, `user-data` and
//! `network-config`, attached read-only as the VM's last disk.
//!
//! The files are JSON, which is YAML too, so no YAML writer is needed and
//! every string is quoted correctly. The seed is made again at every start
//! from the VM's settings; its `instance-id` is a hash of its contents, so
//! cloud-init runs its once-per-instance steps again exactly when the
//! settings changed. The password is kept only as a SHA-512 crypt hash.

use crate::app::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

/// The seed volume's label, which NoCloud looks for.
pub const LABEL: &[u8; 11] = b"CIDATA     ";
/// The seed volume's size.
const SEED_BYTES: u64 = 1 << 20;
/// The longest raw user-data taken.
const MAX_USER_DATA: usize = 64 << 10;

/// The cloud-init settings of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudInit {
    /// The guest's host name; the VM's name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The user made at the first boot, with sudo rights.
    #[serde(default = "default_user")]
    pub user: String,
    /// The user's SSH public keys (`ssh-ed25519 AAAA... comment`).
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// A password for the user (console logins; SSH takes keys only).
    /// Write-only: kvmos keeps its SHA-512 crypt hash in `password_hash`.
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    #[serde(default)]
    pub network: CloudNetwork,
    /// Your own user-data (`#cloud-config` or a `#!` script), handed over
    /// instead of the one made from the fields above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
}

fn default_user() -> String {
    "admin".into()
}

/// The guest's network, on its NIC (matched by MAC).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum CloudNetwork {
    #[default]
    Dhcp,
    Static {
        /// The address with its prefix length, e.g. `192.0.2.10/24`.
        address: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gateway: Option<String>,
        #[serde(default)]
        dns: Vec<String>,
    },
}

/// What is handed to the guest: the seed's three files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Seed {
    pub meta_data: String,
    pub user_data: String,
    /// Absent when the VM has no NIC.
    pub network_config: Option<String>,
}

const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

fn bad(field: &str, message: impl std::fmt::Display) -> ApiError {
    let field = format!("cloud_init.{field}");
    ApiError::bad(&field, format!("{field}: {message}"))
}

impl CloudInit {
    /// Checks every field; errors name the field and say what to give.
    pub fn validate(&self) -> ApiResult<()> {
        if let Some(h) = &self.hostname {
            let label_ok = |l: &str| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            };
            if h.len() > 253 || !h.split('.').all(label_ok) {
                return Err(bad(
                    "hostname",
                    "use lowercase letters, digits and '-', in dot-separated parts of at most 63",
                ));
            }
        }
        let user_ok = self.user.len() <= 32
            && self.user.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && self.user.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !user_ok || self.user == "root" {
            return Err(bad("user", "a user name such as admin: lowercase letters, digits, '_' and '-', not root"));
        }
        for (i, key) in self.ssh_keys.iter().enumerate() {
            let mut parts = key.split_whitespace();
            let (kind, blob) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let blob_ok = blob.len() >= 16 && blob.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
            if !SSH_KEY_TYPES.contains(&kind) || !blob_ok || key.contains('\n') || key.len() > 16 << 10 {
                return Err(bad(
                    &format!("ssh_keys[{i}]"),
                    "not an SSH public key; paste one line of ~/.ssh/id_ed25519.pub (ssh-ed25519 AAAA... you@host)",
                ));
            }
        }
        if let Some(p) = &self.password {
            if p.chars().count() < 8 || p.len() > 128 {
                return Err(bad("password", "use 8 to 128 characters"));
            }
        }
        if let CloudNetwork::Static { address, gateway, dns } = &self.network {
            let (ip, prefix) = address.split_once('/').unwrap_or((address, ""));
            let ip: Option<IpAddr> = ip.parse().ok();
            let max = if ip.is_some_and(|i| i.is_ipv6()) { 128 } else { 32 };
            if ip.is_none() || !prefix.parse::<u8>().is_ok_and(|p| (1..=max).contains(&p)) {
                return Err(bad("network.address", "give the address with its prefix length, e.g. 192.0.2.10/24"));
            }
            if gateway.as_ref().is_some_and(|g| g.parse::<IpAddr>().is_err()) {
                return Err(bad("network.gateway", "give an IP address, e.g. 192.0.2.1"));
            }
            if dns.len() > 3 {
                return Err(bad("network.dns", "at most 3 name servers"));
            }
            if let Some(i) = dns.iter().position(|d| d.parse::<IpAddr>().is_err()) {
                return Err(bad(&format!("network.dns[{i}]"), "give an IP address, e.g. 192.0.2.53"));
            }
        }
        match &self.user_data {
            Some(u) if u.len() > MAX_USER_DATA => {
                return Err(bad("user_data", format!("at most {} KiB", MAX_USER_DATA >> 10)));
            }
            Some(u) if !u.starts_with("#cloud-config") && !u.starts_with("#!") => {
                return Err(bad("user_data", "start it with #cloud-config (or #! for a script)"));
            }
            Some(_) => {}
            None if self.ssh_keys.is_empty() && self.password.is_none() && self.password_hash.is_none() => {
                return Err(bad("ssh_keys", format!("give an SSH key or a password, or {} cannot log in", self.user)));
            }
            None => {}
        }
        Ok(())
    }

    /// Replaces the password by its SHA-512 crypt hash, before the
    /// settings are stored.
    pub fn seal(&mut self) -> ApiResult<()> {
        if let Some(p) = self.password.take() {
            let params = sha_crypt::Sha512Params::new(sha_crypt::ROUNDS_DEFAULT)
                .map_err(|e| ApiError::internal(format!("{e:?}")))?;
            let hash = sha_crypt::sha512_simple(&p, &params).map_err(|e| ApiError::internal(format!("{e:?}")))?;
            self.password_hash = Some(hash);
        }
        Ok(())
    }

    /// The seed for VM `vm_id` called `vm_name`, whose NIC (if any) has
    /// `mac`.
    pub fn seed(&self, vm_id: &str, vm_name: &str, mac: Option<&str>) -> Seed {
        let hostname = self.hostname.clone().unwrap_or_else(|| vm_name.to_string());
        let user_data = match &self.user_data {
            Some(raw) => raw.clone(),
            None => {
                let mut user = serde_json::json!({
                    "name": self.user,
                    "shell": "/bin/bash",
                    "sudo": "ALL=(ALL) NOPASSWD:ALL",
                    "lock_passwd": self.password_hash.is_none(),
                    "ssh_authorized_keys": self.ssh_keys,
                });
                if let Some(h) = &self.password_hash {
                    user["passwd"] = h.clone().into();
                }
                let config = serde_json::json!({
                    "hostname": hostname,
                    "preserve_hostname": false,
                    // The host name resolves (sudo warns at every use
                    // when it does not).
                    "manage_etc_hosts": true,
                    "users": [user],
                    "ssh_pwauth": false,
                });
                format!("#cloud-config\n{}\n", serde_json::to_string_pretty(&config).unwrap_or_default())
            }
        };
        let network_config = mac.map(|mac| {
            let mut nic = serde_json::json!({"match": {"macaddress": mac}, "set-name": "eth0"});
            match &self.network {
                CloudNetwork::Dhcp => nic["dhcp4"] = true.into(),
                CloudNetwork::Static { address, gateway, dns } => {
                    nic["dhcp4"] = false.into();
                    nic["addresses"] = serde_json::json!([address]);
                    if let Some(g) = gateway {
                        let default = if g.contains(':') { "::/0" } else { "0.0.0.0/0" };
                        nic["routes"] = serde_json::json!([{"to": default, "via": g}]);
                    }
                    if !dns.is_empty() {
                        nic["nameservers"] = serde_json::json!({"addresses": dns});
                    }
                }
            }
            let config = serde_json::json!({"version": 2, "ethernets": {"eth0": nic}});
            format!("{}\n", serde_json::to_string_pretty(&config).unwrap_or_default())
        });
        // The instance changes when what is handed over changes.
        let mut hash = Sha256::new();
        hash.update(&user_data);
        hash.update(network_config.as_deref().unwrap_or(""));
        hash.update(&hostname);
        let instance = format!("kvmos-{vm_id}-{}", &hex::encode(hash.finalize())[..12]);
        let meta = serde_json::json!({"instance-id": instance, "local-hostname": hostname});
        Seed {
            meta_data: format!("{}\n", serde_json::to_string_pretty(&meta).unwrap_or_default()),
            user_data,
            network_config,
        }
    }
}

impl Seed {
    /// Writes the seed volume to `path`: FAT12, labelled `CIDATA`, the
    /// files in its root. Written to a temporary file and renamed, so a
    /// VM never sees half a seed.
    pub fn write_image(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp)?;
        file.set_len(SEED_BYTES)?;
        fatfs::format_volume(
            &mut file,
            fatfs::FormatVolumeOptions::new().volume_label(*LABEL).fat_type(fatfs::FatType::Fat12),
        )?;
        {
            let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new())?;
            let files = [
                ("meta-data", Some(&self.meta_data)),
                ("user-data", Some(&self.user_data)),
                ("network-config", self.network_config.as_ref()),
            ];
            for (name, text) in files {
                if let Some(text) = text {
                    let mut f = fs.root_dir().create_file(name)?;
                    f.truncate()?;
                    f.write_all(text.as_bytes())?;
                    f.flush()?;
                }
            }
            fs.unmount()?;
        }
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKvmosKvmosKvmosKvmosKvmosKvmosKvmosKvmos admin@laptop";

    fn settings() -> CloudInit {
        CloudInit {
            hostname: Some("web1".into()),
            user: "ops".into(),
            ssh_keys: vec![KEY.into()],
            password: None,
            password_hash: None,
            network: CloudNetwork::Static {
                address: "192.0.2.10/24".into(),
                gateway: Some("192.0.2.1".into()),
                dns: vec!["192.0.2.53".into()],
            },
            user_data: None,
        }
    }

    fn field(c: CloudInit) -> Option<String> {
        c.validate().err().and_then(|e| e.field)
    }

    #[test]
    fn each_mistake_names_its_field() {
        assert!(settings().validate().is_ok());
        assert_eq!(
            field(CloudInit { hostname: Some("Web_1".into()), ..settings() }).as_deref(),
            Some("cloud_init.hostname")
        );
        assert_eq!(field(CloudInit { user: "root".into(), ..settings() }).as_deref(), Some("cloud_init.user"));
        assert_eq!(
            field(CloudInit { ssh_keys: vec![KEY.into(), "hello".into()], ..settings() }).as_deref(),
            Some("cloud_init.ssh_keys[1]")
        );
        assert_eq!(
            field(CloudInit { password: Some("short".into()), ..settings() }).as_deref(),
            Some("cloud_init.password")
        );
        let net = |address: &str, dns: &[&str]| CloudInit {
            network: CloudNetwork::Static {
                address: address.into(),
                gateway: None,
                dns: dns.iter().map(|d| d.to_string()).collect(),
            },
            ..settings()
        };
        assert_eq!(field(net("192.0.2.10", &[])).as_deref(), Some("cloud_init.network.address"));
        assert_eq!(field(net("192.0.2.10/33", &[])).as_deref(), Some("cloud_init.network.address"));
        assert_eq!(field(net("192.0.2.10/24", &["x"])).as_deref(), Some("cloud_init.network.dns[0]"));
        assert!(net("2001:db8::10/64", &["2001:db8::53"]).validate().is_ok());
        assert_eq!(
            field(CloudInit { user_data: Some("users: []".into()), ..settings() }).as_deref(),
            Some("cloud_init.user_data")
        );
        let nobody = CloudInit { ssh_keys: vec![], ..settings() };
        let e = nobody.validate().unwrap_err();
        assert_eq!(e.field.as_deref(), Some("cloud_init.ssh_keys"));
        assert!(e.message.contains("ops cannot log in"), "{}", e.message);
        assert!(CloudInit { password: Some("a good password".into()), ..nobody }.validate().is_ok());
    }

    #[test]
    fn the_password_is_kept_only_as_a_hash() {
        let mut c = CloudInit { password: Some("correct horse battery".into()), ..settings() };
        c.seal().unwrap();
        assert!(c.password.is_none());
        let hash = c.password_hash.clone().unwrap();
        assert!(hash.starts_with("$6$"), "{hash}");
        assert!(sha_crypt::sha512_check("correct horse battery", &hash).is_ok());
        let stored = serde_json::to_string(&CloudInit { password: Some("typed again".into()), ..c.clone() }).unwrap();
        assert!(!stored.contains("typed again") && stored.contains("$6$"), "never stored in clear: {stored}");
        let seed = c.seed("ab12", "web1", None);
        assert!(seed.user_data.contains(&hash) && seed.user_data.contains(r#""lock_passwd": false"#));
    }

    #[test]
    fn the_seed_carries_the_settings_and_its_instance_follows_them() {
        let seed = settings().seed("ab12", "vmname", Some("52:54:00:12:34:56"));
        assert!(seed.user_data.starts_with("#cloud-config\n"));
        let user: serde_json::Value = serde_json::from_str(&seed.user_data["#cloud-config\n".len()..]).unwrap();
        assert_eq!(user["hostname"], "web1");
        assert_eq!(user["manage_etc_hosts"], true);
        assert_eq!(user["users"][0]["name"], "ops");
        assert_eq!(user["users"][0]["ssh_authorized_keys"][0], KEY);
        assert_eq!(user["users"][0]["lock_passwd"], true);
        let net: serde_json::Value = serde_json::from_str(seed.network_config.as_deref().unwrap()).unwrap();
        let nic = &net["ethernets"]["eth0"];
        assert_eq!(nic["match"]["macaddress"], "52:54:00:12:34:56");
        assert_eq!(nic["addresses"][0], "192.0.2.10/24");
        assert_eq!(nic["routes"][0]["via"], "192.0.2.1");
        let meta: serde_json::Value = serde_json::from_str(&seed.meta_data).unwrap();
        let instance = meta["instance-id"].as_str().unwrap().to_string();
        assert!(instance.starts_with("kvmos-ab12-"));
        assert_eq!(settings().seed("ab12", "vmname", Some("52:54:00:12:34:56")).meta_data, seed.meta_data, "stable");
        let changed =
            CloudInit { hostname: Some("web2".into()), ..settings() }.seed("ab12", "vmname", Some("52:54:00:12:34:56"));
        assert_ne!(
            serde_json::from_str::<serde_json::Value>(&changed.meta_data).unwrap()["instance-id"],
            instance.as_str()
        );
        // The VM's name is the host name when none is given; no NIC, no network-config.
        let plain =
            CloudInit { hostname: None, network: CloudNetwork::Dhcp, ..settings() }.seed("ab12", "vmname", None);
        assert!(plain.meta_data.contains(r#""local-hostname": "vmname""#) && plain.network_config.is_none());
        // Raw user-data goes as it is.
        let raw = CloudInit { user_data: Some("#!/bin/sh\necho hi\n".into()), ..settings() }.seed("ab12", "v", None);
        assert_eq!(raw.user_data, "#!/bin/sh\necho hi\n");
    }

    #[test]
    fn the_seed_volume_is_fat_labelled_cidata_with_the_three_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        let seed = settings().seed("ab12", "vmname", Some("52:54:00:12:34:56"));
        seed.write_image(&path).unwrap();
        let mut file = std::fs::File::open(&path).unwrap();
        assert_eq!(file.metadata().unwrap().len(), SEED_BYTES);
        let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label(), "CIDATA");
        for (name, want) in [("meta-data", &seed.meta_data), ("user-data", &seed.user_data)] {
            let mut text = String::new();
            fs.root_dir().open_file(name).unwrap().read_to_string(&mut text).unwrap();
            assert_eq!(&text, want, "{name}");
        }
        let mut net = String::new();
        fs.root_dir().open_file("network-config").unwrap().read_to_string(&mut net).unwrap();
        assert_eq!(Some(net), seed.network_config);
    }

    /// cloud-init itself (Debian's package, installed by the host tools)
    /// accepts what kvmos hands over: the user-data passes its schema, and
    /// the network-config converts to the static ifupdown configuration a
    /// Debian guest would get.
    #[test]
    fn cloud_init_accepts_the_seed() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = CloudInit { password: Some("a good password".into()), ..settings() };
        c.seal().unwrap();
        let seed = c.seed("ab12", "vmname", Some("52:54:00:12:34:56"));
        std::fs::write(dir.path().join("user-data"), &seed.user_data).unwrap();
        std::fs::write(dir.path().join("network-config"), seed.network_config.unwrap()).unwrap();
        let schema = std::process::Command::new("cloud-init")
            .args(["schema", "-c"])
            .arg(dir.path().join("user-data"))
            .output()
            .expect("cloud-init (Debian's cloud-init package) is installed by the host tools");
        assert!(
            schema.status.success(),
            "{}{}",
            String::from_utf8_lossy(&schema.stdout),
            String::from_utf8_lossy(&schema.stderr)
        );
        let out = dir.path().join("out");
        let convert = std::process::Command::new("cloud-init")
            .args(["devel", "net-convert", "-k", "yaml", "-D", "debian", "-O", "eni", "-p"])
            .arg(dir.path().join("network-config"))
            .arg("-d")
            .arg(&out)
            .output()
            .unwrap();
        assert!(convert.status.success(), "{}", String::from_utf8_lossy(&convert.stderr));
        let eni = std::fs::read_to_string(out.join("etc/network/interfaces.d/50-cloud-init")).unwrap();
        assert!(eni.contains("iface eth0 inet static") && eni.contains("address 192.0.2.10/24"), "{eni}");
        assert!(eni.contains("default gw 192.0.2.1") && eni.contains("dns-nameservers 192.0.2.53"), "{eni}");
    }
}
