//! The appliance's host configuration: `kvmos.*` keys from the kernel command
//! line, settings saved on the data disk by the panel, and the defaults.
//!
//! Precedence: defaults < saved settings < command line. A malformed value
//! never stops boot: it is reported with the key and the expected form, and
//! that key keeps its lower-precedence value, so the server still comes up
//! reachable. Saved settings use the same value syntax as the command line.

use std::fmt;
use std::net::Ipv4Addr;

/// How the uplink gets its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetMode {
    Dhcp,
    Static(StaticNet),
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticNet {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub dns: Option<Ipv4Addr>,
}

/// Which NIC is the uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfaceSelector {
    Name(String),
    Mac([u8; 6]),
}

/// Which partition is the data disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSelector {
    Label(String),
    Path(String),
}

/// The configuration boot runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub net: NetMode,
    pub iface: Option<IfaceSelector>,
    pub hostname: Option<String>,
    pub data: DataSelector,
    pub panel_port: u16,
    pub ntp: Option<Ipv4Addr>,
    pub debug: bool,
}

pub const DEFAULT_DATA_LABEL: &str = "KVMOS_DATA";

impl Default for Config {
    fn default() -> Self {
        Self {
            net: NetMode::Dhcp,
            iface: None,
            hostname: None,
            data: DataSelector::Label(DEFAULT_DATA_LABEL.into()),
            panel_port: 443,
            ntp: None,
            debug: false,
        }
    }
}

/// Values given by one source; `None` leaves the lower source's value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub net: Option<NetMode>,
    pub iface: Option<IfaceSelector>,
    pub hostname: Option<String>,
    pub data: Option<DataSelector>,
    pub panel_port: Option<u16>,
    pub ntp: Option<Ipv4Addr>,
    pub debug: Option<bool>,
}

impl Config {
    pub fn apply(&mut self, o: Overrides) {
        if let Some(v) = o.net {
            self.net = v;
        }
        if let Some(v) = o.iface {
            self.iface = Some(v);
        }
        if let Some(v) = o.hostname {
            self.hostname = Some(v);
        }
        if let Some(v) = o.data {
            self.data = v;
        }
        if let Some(v) = o.panel_port {
            self.panel_port = v;
        }
        if let Some(v) = o.ntp {
            self.ntp = Some(v);
        }
        if let Some(v) = o.debug {
            self.debug = v;
        }
    }
}

/// Something wrong with a configuration value; boot goes on without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Malformed { source: &'static str, key: String, value: String, expected: &'static str },
    Unknown { source: &'static str, key: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Malformed { source, key, value, expected } => write!(
                f,
                "{source}: {key}={value:?} is not valid; expected {expected}. Using the default for {key} instead"
            ),
            Problem::Unknown { source, key } => write!(f, "{source}: unknown key {key} is ignored"),
        }
    }
}

const NET_FORM: &str =
    "dhcp, none, or static:<ip>/<prefix>,<gateway>[,<dns>] (e.g. static:192.0.2.10/24,192.0.2.1,192.0.2.53)";
const IFACE_FORM: &str = "an interface name (e.g. eno1) or a MAC address (e.g. 52:54:00:12:34:56)";
const HOSTNAME_FORM: &str = "letters, digits and '-' in dot-separated labels of 1-63 characters, 253 at most";
const DATA_FORM: &str = "a partition label (e.g. KVMOS_DATA) or a /dev path (e.g. /dev/nvme0n1p3)";
const PORT_FORM: &str = "a TCP port from 1 to 65535";
const IP_FORM: &str = "an IPv4 address (e.g. 192.0.2.123)";
const BOOL_FORM: &str = "nothing, 1, 0, yes, no, true or false";

/// Parses the `kvmos.*` keys of a kernel command line.
pub fn parse_cmdline(cmdline: &str) -> (Overrides, Vec<Problem>) {
    let pairs = split_cmdline(cmdline)
        .into_iter()
        .filter_map(|w| {
            let (k, v) = match w.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (w.clone(), None),
            };
            k.strip_prefix("kvmos.").map(|k| (k.to_string(), v))
        })
        .collect::<Vec<_>>();
    parse_pairs("kernel command line", "kvmos.", pairs)
}

pub fn parse_saved(json: &str) -> (Overrides, Vec<Problem>) {
    let saved = match kvmos_contract::host::SavedSettings::from_json(json) {
        Ok(s) => s,
        Err(e) => {
            return (
                Overrides::default(),
                vec![Problem::Malformed {
                    source: "saved settings",
                    key: "host.json".into(),
                    value: e.to_string(),
                    expected: "the JSON object the panel writes",
                }],
            )
        }
    };
    let pairs = saved.pairs().into_iter().map(|(k, v)| (k.to_string(), Some(v.to_string()))).collect();
    parse_pairs("saved settings", "", pairs)
}

fn parse_pairs(source: &'static str, prefix: &str, pairs: Vec<(String, Option<String>)>) -> (Overrides, Vec<Problem>) {
    let mut o = Overrides::default();
    let mut problems = Vec::new();
    for (key, value) in pairs {
        let full = format!("{prefix}{key}");
        let v = value.clone().unwrap_or_default();
        let bad = |expected| Problem::Malformed { source, key: full.clone(), value: v.clone(), expected };
        match key.as_str() {
            "net" => match parse_net(&v) {
                Some(n) => o.net = Some(n),
                None => problems.push(bad(NET_FORM)),
            },
            "iface" => match parse_iface(&v) {
                Some(i) => o.iface = Some(i),
                None => problems.push(bad(IFACE_FORM)),
            },
            "hostname" => match valid_hostname(&v) {
                true => o.hostname = Some(v.clone()),
                false => problems.push(bad(HOSTNAME_FORM)),
            },
            "data" => match parse_data(&v) {
                Some(d) => o.data = Some(d),
                None => problems.push(bad(DATA_FORM)),
            },
            "panel_port" => match v.parse::<u16>() {
                Ok(p) if p > 0 => o.panel_port = Some(p),
                _ => problems.push(bad(PORT_FORM)),
            },
            "ntp" => match v.parse::<Ipv4Addr>() {
                Ok(a) => o.ntp = Some(a),
                Err(_) => problems.push(bad(IP_FORM)),
            },
            "debug" => match value.as_deref() {
                None | Some("1" | "yes" | "true" | "on") => o.debug = Some(true),
                Some("0" | "no" | "false" | "off") => o.debug = Some(false),
                Some(_) => problems.push(bad(BOOL_FORM)),
            },
            _ => problems.push(Problem::Unknown { source, key: full }),
        }
    }
    (o, problems)
}

/// Splits a kernel command line into words, honouring double quotes the
/// way the kernel does (`key="a b"`).
fn split_cmdline(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

pub fn parse_net(v: &str) -> Option<NetMode> {
    match v {
        "dhcp" => return Some(NetMode::Dhcp),
        "none" => return Some(NetMode::None),
        _ => {}
    }
    let rest = v.strip_prefix("static:")?;
    let mut parts = rest.split(',');
    let (addr, prefix) = parts.next()?.split_once('/')?;
    let address: Ipv4Addr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok().filter(|p| (1..=32).contains(p))?;
    let gateway: Ipv4Addr = parts.next()?.parse().ok()?;
    let dns = match parts.next() {
        Some(d) => Some(d.parse().ok()?),
        None => None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(NetMode::Static(StaticNet { address, prefix, gateway, dns }))
}

/// Parses a MAC address (`52:54:00:12:34:56`, or with dashes).
pub fn parse_mac(v: &str) -> Option<[u8; 6]> {
    v.parse::<macaddr::MacAddr6>().ok().map(|m| m.into_array())
}

fn parse_iface(v: &str) -> Option<IfaceSelector> {
    if let Some(mac) = parse_mac(v) {
        return Some(IfaceSelector::Mac(mac));
    }
    let ok = !v.is_empty() && v.len() < 16 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    ok.then(|| IfaceSelector::Name(v.to_string()))
}

fn parse_data(v: &str) -> Option<DataSelector> {
    if v.starts_with("/dev/") && v.len() > 5 && !v.contains("..") {
        return Some(DataSelector::Path(v.to_string()));
    }
    let ok = !v.is_empty() && v.len() <= 36 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    ok.then(|| DataSelector::Label(v.to_string()))
}

pub fn valid_hostname(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 253
        && v.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_keys_parse() {
        let (o, p) = parse_cmdline(
            "BOOT_IMAGE=x console=ttyS0 kvmos.net=static:192.0.2.10/24,192.0.2.1,192.0.2.53 kvmos.iface=52:54:00:AB:cd:01 \
             kvmos.hostname=node7.lab kvmos.data=/dev/vdb1 kvmos.panel_port=8443 kvmos.ntp=192.0.2.5 kvmos.debug",
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(
            o.net,
            Some(NetMode::Static(StaticNet {
                address: [192, 0, 2, 10].into(),
                prefix: 24,
                gateway: [192, 0, 2, 1].into(),
                dns: Some([192, 0, 2, 53].into())
            }))
        );
        assert_eq!(o.iface, Some(IfaceSelector::Mac([0x52, 0x54, 0, 0xab, 0xcd, 1])));
        assert_eq!(o.hostname.as_deref(), Some("node7.lab"));
        assert_eq!(o.data, Some(DataSelector::Path("/dev/vdb1".into())));
        assert_eq!(o.panel_port, Some(8443));
        assert_eq!(o.ntp, Some([192, 0, 2, 5].into()));
        assert_eq!(o.debug, Some(true));
        let (o, _) = parse_cmdline("kvmos.net=none kvmos.iface=eno1 kvmos.data=MYDATA kvmos.debug=0");
        assert_eq!(o.net, Some(NetMode::None));
        assert_eq!(o.iface, Some(IfaceSelector::Name("eno1".into())));
        assert_eq!(o.data, Some(DataSelector::Label("MYDATA".into())));
        assert_eq!(o.debug, Some(false));
    }

    #[test]
    fn malformed_values_name_the_key_and_form_and_keep_the_default() {
        for bad in [
            "kvmos.net=static:10.0.0.1",
            "kvmos.net=static:10.0.0.1/33,10.0.0.254",
            "kvmos.net=static:10.0.0.300/24,10.0.0.1",
            "kvmos.net=dhcpp",
            "kvmos.net=static:10.0.0.1/24,10.0.0.2,10.0.0.3,extra",
        ] {
            let (o, p) = parse_cmdline(bad);
            assert_eq!(o.net, None, "{bad}");
            assert_eq!(p.len(), 1, "{bad}");
            let msg = p[0].to_string();
            assert!(msg.contains("kvmos.net") && msg.contains("static:<ip>/<prefix>"), "{msg}");
        }
        let (o, p) =
            parse_cmdline("kvmos.panel_port=0 kvmos.hostname=-bad- kvmos.ntp=x kvmos.debug=maybe kvmos.iface=a/b");
        assert_eq!(o, Overrides::default());
        assert_eq!(p.len(), 5);
        let mut c = Config::default();
        c.apply(o);
        assert_eq!(c, Config::default(), "every malformed key keeps its default");
    }

    #[test]
    fn unknown_keys_warn_and_other_arguments_are_ignored() {
        let (o, p) = parse_cmdline("quiet kvmos.colour=blue root=/dev/sda kvmosnet=x");
        assert_eq!(o, Overrides::default());
        assert_eq!(p, vec![Problem::Unknown { source: "kernel command line", key: "kvmos.colour".into() }]);
    }

    #[test]
    fn command_line_overrides_saved_settings_which_override_defaults() {
        let (saved, p) = parse_saved(r#"{"hostname":"saved-name","net":"static:10.1.0.5/16,10.1.0.1"}"#);
        assert!(p.is_empty(), "{p:?}");
        let (cmdline, _) = parse_cmdline("kvmos.hostname=from-cmdline");
        let mut c = Config::default();
        c.apply(saved);
        c.apply(cmdline);
        assert_eq!(c.hostname.as_deref(), Some("from-cmdline"));
        assert!(matches!(c.net, NetMode::Static(ref s) if s.prefix == 16));
        assert_eq!(c.panel_port, 443);
    }

    /// The panel's tests write this file byte for byte
    /// (`contract/fixtures/host.json`).
    #[test]
    fn init_reads_the_host_file_the_panel_writes() {
        let (o, p) = parse_saved(include_str!("../../contract/fixtures/host.json"));
        assert!(p.is_empty(), "{p:?}");
        let mut c = Config::default();
        c.apply(o);
        assert_eq!(c.hostname.as_deref(), Some("rack4-kvm"));
        match &c.net {
            NetMode::Static(s) => {
                assert_eq!((s.address, s.prefix), ([192, 168, 7, 20].into(), 24));
                assert_eq!(s.gateway, std::net::Ipv4Addr::new(192, 168, 7, 1));
                assert_eq!(s.dns, Some([192, 168, 7, 53].into()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.ntp, Some([192, 168, 7, 1].into()));
    }

    #[test]
    fn broken_saved_settings_are_reported_not_fatal() {
        let (o, p) = parse_saved("{not json");
        assert_eq!(o, Overrides::default());
        assert_eq!(p.len(), 1);
        let (_, p) = parse_saved(r#"{"net":"static:1.2.3.4"}"#);
        assert!(p[0].to_string().contains("saved settings"), "{}", p[0]);
    }

    #[test]
    fn quoted_words_stay_together() {
        assert_eq!(split_cmdline(r#"a="b c" d"#), vec!["a=b c".to_string(), "d".to_string()]);
    }
}
