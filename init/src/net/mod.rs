//! The appliance's network: loopback, the uplink chosen by name, MAC or
//! carrier, bridge `br0` over it (VM taps join it later), and the host's
//! address on `br0` by DHCP or static configuration, with the default route
//! and /etc/resolv.conf.
//!
//! It runs on its own thread, so a network that never answers never holds up
//! boot: the thread keeps retrying with backoff and reports each change to
//! PID 1's main loop, which shows it on the console.

pub mod link;

use crate::config::{IfaceSelector, NetMode};
use dhcproto::Encodable;
use kvmos_dhcp as dhcp;
use link::{Link, NetResult, BRIDGE};
use rtnetlink::Handle;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

/// How long to wait for a configured NIC to appear, or for any NIC to show
/// carrier, before going on without.
const LINK_WAIT: Duration = Duration::from_secs(10);

/// What the network looks like now; sent to the main loop on every change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStatus {
    pub uplink: Option<String>,
    pub mac: Option<[u8; 6]>,
    pub address: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub ntp: Vec<Ipv4Addr>,
    /// One line on how things stand ("DHCP lease from 10.0.2.2", …).
    pub note: String,
}

/// What the network thread needs from the configuration.
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub mode: NetMode,
    pub iface: Option<IfaceSelector>,
    pub hostname: Option<String>,
}

/// `kvmos-` plus the last three bytes of the MAC, as the issue asks and as
/// ESXi-like appliances name themselves.
pub fn default_hostname(mac: &[u8; 6]) -> String {
    format!("kvmos-{:02x}{:02x}{:02x}", mac[3], mac[4], mac[5])
}

/// Starts the network thread. `report` receives every status change.
pub fn spawn(cfg: NetConfig, report: impl Fn(NetStatus) + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new().name("network".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                report(NetStatus { note: format!("cannot start the network runtime: {e}"), ..Default::default() });
                return;
            }
        };
        rt.block_on(run(cfg, &report));
    })?;
    Ok(())
}

async fn run(cfg: NetConfig, report: &(impl Fn(NetStatus) + Send)) {
    let (connection, handle, _) = match rtnetlink::new_connection() {
        Ok(c) => c,
        Err(e) => {
            report(NetStatus { note: format!("cannot open netlink: {e}"), ..Default::default() });
            return;
        }
    };
    tokio::spawn(connection);
    let mut status = NetStatus::default();
    if let Err(e) = bring_up_loopback(&handle).await {
        report(NetStatus { note: e, ..Default::default() });
    }
    // Wait for an uplink, however long it takes (a NIC driver that probes
    // late, a cable plugged in later): say so, and keep looking.
    let uplink = loop {
        match choose_uplink(&handle, cfg.iface.as_ref()).await {
            Ok(Some(l)) => break l,
            Ok(None) => status.note = "no Ethernet interface found; still looking".into(),
            Err(e) => status.note = e,
        }
        report(status.clone());
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    status.uplink = Some(uplink.name.clone());
    status.mac = uplink.mac;
    let mac = uplink.mac.unwrap_or_default();
    let bridge = match make_bridge(&handle, &uplink, mac).await {
        Ok(b) => b,
        Err(e) => {
            status.note = format!("{e}; the host has no network");
            report(status);
            return;
        }
    };
    match cfg.mode {
        NetMode::None => {
            status.note = "kvmos.net=none: br0 is up without a host address".into();
            report(status);
        }
        NetMode::Static(s) => {
            let r = configure(
                &handle,
                bridge,
                s.address,
                s.prefix,
                Some(s.gateway),
                &s.dns.into_iter().collect::<Vec<_>>(),
            )
            .await;
            status.address = Some((s.address, s.prefix));
            status.gateway = Some(s.gateway);
            status.dns = s.dns.into_iter().collect();
            status.note = match r {
                Ok(()) => "static address".into(),
                Err(e) => format!("static address not fully applied: {e}"),
            };
            report(status);
        }
        NetMode::Dhcp => {
            let hostname = cfg.hostname.clone().unwrap_or_else(|| default_hostname(&mac));
            if let Err(e) = run_dhcp(&handle, bridge, mac, hostname, status.clone(), report).await {
                status.note = format!("DHCP stopped: {e}");
                report(status);
            }
        }
    }
}

async fn bring_up_loopback(handle: &Handle) -> NetResult<()> {
    let lo = link::links(handle).await?.into_iter().find(|l| l.name == "lo").ok_or("no loopback interface")?;
    link::set_up(handle, lo.index).await
}

/// The configured uplink, or the first Ethernet NIC with carrier, or the
/// first Ethernet NIC at all once [`LINK_WAIT`] has passed.
async fn choose_uplink(handle: &Handle, wanted: Option<&IfaceSelector>) -> NetResult<Option<Link>> {
    let deadline = Instant::now() + LINK_WAIT;
    let mut brought_up = std::collections::BTreeSet::new();
    loop {
        let all = link::links(handle).await?;
        if let Some(sel) = wanted {
            let found = all.iter().find(|l| match sel {
                IfaceSelector::Name(n) => &l.name == n,
                IfaceSelector::Mac(m) => l.mac.as_ref() == Some(m),
            });
            if let Some(l) = found {
                return Ok(Some(l.clone()));
            }
        } else {
            let eth: Vec<&Link> = all.iter().filter(|l| link::is_physical_ethernet(l)).collect();
            for l in &eth {
                // Carrier is only reported for links that are up.
                if brought_up.insert(l.index) {
                    link::set_up(handle, l.index).await?;
                }
            }
            if let Some(l) = eth.iter().find(|l| link::has_carrier(&l.name)) {
                return Ok(Some((*l).clone()));
            }
            if Instant::now() >= deadline {
                return Ok(eth.first().map(|l| (*l).clone()));
            }
        }
        if Instant::now() >= deadline && wanted.is_some() {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn make_bridge(handle: &Handle, uplink: &Link, mac: [u8; 6]) -> NetResult<u32> {
    let bridge = link::ensure_bridge(handle, mac).await?;
    link::enslave(handle, uplink.index, bridge).await?;
    link::set_up(handle, bridge).await?;
    Ok(bridge)
}

async fn configure(
    handle: &Handle,
    bridge: u32,
    address: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
    dns: &[Ipv4Addr],
) -> NetResult<()> {
    link::set_v4(handle, bridge, address, prefix).await?;
    if let Some(gw) = gateway {
        link::set_default_route(handle, bridge, gw).await?;
    }
    write_resolv_conf(dns).map_err(|e| format!("cannot write /etc/resolv.conf: {e}"))
}

fn write_resolv_conf(dns: &[Ipv4Addr]) -> std::io::Result<()> {
    let text: String = dns.iter().map(|d| format!("nameserver {d}\n")).collect();
    std::fs::create_dir_all("/etc")?;
    std::fs::write("/etc/resolv.conf.new", text)?;
    std::fs::rename("/etc/resolv.conf.new", "/etc/resolv.conf")
}

/// Opens the DHCP client socket: UDP port 68 bound to br0, broadcast allowed.
fn dhcp_socket() -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(BRIDGE.as_bytes()))?;
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())?;
    s.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(s.into())
}

async fn run_dhcp(
    handle: &Handle,
    bridge: u32,
    mac: [u8; 6],
    hostname: String,
    mut status: NetStatus,
    report: &(impl Fn(NetStatus) + Send),
) -> NetResult<()> {
    let socket = dhcp_socket().map_err(|e| format!("cannot open the DHCP socket: {e}"))?;
    let seed = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]])
        ^ std::process::id().rotate_left(16)
        ^ (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0));
    let mut client = dhcp::Client::new(mac, Some(hostname), seed, Instant::now());
    status.note = "waiting for a DHCP server".into();
    report(status.clone());
    let mut silent_since = Instant::now();
    let mut said_waiting = false;
    let mut buf = vec![0u8; 1500];
    let mut actions = client.on_timeout(Instant::now());
    loop {
        for action in actions.drain(..) {
            match action {
                dhcp::Action::Send(msg, dest) => {
                    let to = match dest {
                        dhcp::Destination::Broadcast => SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
                        dhcp::Destination::Server(s) => SocketAddrV4::new(s, 67),
                    };
                    let bytes = msg.to_vec().map_err(|e| format!("cannot encode a DHCP message: {e}"))?;
                    if let Err(e) = socket.send_to(&bytes, to).await {
                        status.note = format!("cannot send DHCP: {e}; retrying");
                        report(status.clone());
                    }
                }
                dhcp::Action::Bound(l) | dhcp::Action::Renewed(l) => {
                    let changed = status.address != Some((l.address, l.prefix)) || status.gateway != l.router;
                    if changed {
                        let r = configure(handle, bridge, l.address, l.prefix, l.router, &l.dns).await;
                        status.address = Some((l.address, l.prefix));
                        status.gateway = l.router;
                        status.dns = l.dns.clone();
                        status.ntp = l.ntp.clone();
                        status.note = match r {
                            Ok(()) => format!("DHCP lease from {} for {} s", l.server, l.lease_time.as_secs()),
                            Err(e) => format!("DHCP lease not fully applied: {e}"),
                        };
                        report(status.clone());
                    }
                    silent_since = Instant::now();
                    said_waiting = false;
                }
                dhcp::Action::Lost => {
                    let _ = link::flush_v4(handle, bridge).await;
                    status.address = None;
                    status.gateway = None;
                    status.note = "DHCP lease lost; asking again".into();
                    report(status.clone());
                    silent_since = Instant::now();
                }
            }
        }
        if client.lease().is_none() && !said_waiting && silent_since.elapsed() > Duration::from_secs(30) {
            said_waiting = true;
            status.note = "no DHCP server answered in 30 s; still trying in the background".into();
            report(status.clone());
        }
        let deadline = tokio::time::Instant::from_std(client.deadline());
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, _)) = r {
                    actions = client.on_datagram(&buf[..n], Instant::now());
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                actions = client.on_timeout(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_hostname_uses_the_last_three_mac_bytes() {
        assert_eq!(default_hostname(&[0x52, 0x54, 0x00, 0x12, 0x34, 0x56]), "kvmos-123456");
    }
}
