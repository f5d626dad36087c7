//! The netlink operations the appliance needs, over rtnetlink: find the
//! Ethernet links, bring links up, make the bridge, enslave the uplink, and
//! set addresses and the default route.

use futures::TryStreamExt;
use netlink_packet_route::link::LinkAttribute;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

/// The bridge that carries the host's address and every VM's tap.
pub const BRIDGE: &str = "br0";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub type NetResult<T> = Result<T, String>;

fn err(what: &str) -> impl Fn(rtnetlink::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// All links, in kernel order.
pub async fn links(handle: &Handle) -> NetResult<Vec<Link>> {
    let mut out = Vec::new();
    let mut stream = handle.link().get().execute();
    while let Some(msg) = stream.try_next().await.map_err(err("cannot list network links"))? {
        let mut name = String::new();
        let mut mac = None;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = n.clone(),
                LinkAttribute::Address(a) if a.len() == 6 => {
                    let mut m = [0u8; 6];
                    m.copy_from_slice(a);
                    mac = Some(m);
                }
                _ => {}
            }
        }
        out.push(Link { index: msg.header.index, name, mac });
    }
    Ok(out)
}

/// A physical Ethernet NIC: backed by a device (not virtual) with a MAC.
pub fn is_physical_ethernet(link: &Link) -> bool {
    let sys = Path::new("/sys/class/net").join(&link.name);
    link.mac.is_some()
        && sys.join("device").exists()
        && std::fs::read_to_string(sys.join("type")).map(|t| t.trim() == "1").unwrap_or(false)
        && !sys.join("wireless").exists()
}

/// Whether the link reports carrier (a cable and a link partner).
pub fn has_carrier(name: &str) -> bool {
    std::fs::read_to_string(Path::new("/sys/class/net").join(name).join("carrier"))
        .map(|c| c.trim() == "1")
        .unwrap_or(false)
}

pub async fn set_up(handle: &Handle, index: u32) -> NetResult<()> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(err("cannot bring a link up"))
}

/// Creates `br0` with the uplink's MAC (so DHCP leases stay the same as
/// without a bridge) unless it exists; returns its index.
pub async fn ensure_bridge(handle: &Handle, mac: [u8; 6]) -> NetResult<u32> {
    if let Some(l) = links(handle).await?.into_iter().find(|l| l.name == BRIDGE) {
        return Ok(l.index);
    }
    handle
        .link()
        .add(LinkBridge::new(BRIDGE).address(mac.to_vec()).up().build())
        .execute()
        .await
        .map_err(err("cannot create the bridge br0"))?;
    links(handle).await?.into_iter().find(|l| l.name == BRIDGE).map(|l| l.index).ok_or("br0 vanished".into())
}

pub async fn enslave(handle: &Handle, port: u32, bridge: u32) -> NetResult<()> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(port).controller(bridge).up().build())
        .execute()
        .await
        .map_err(err("cannot add the uplink to br0"))
}

/// Removes every IPv4 address from a link.
pub async fn flush_v4(handle: &Handle, index: u32) -> NetResult<()> {
    let mut stream = handle.address().get().set_link_index_filter(index).execute();
    let mut found = Vec::new();
    while let Some(a) = stream.try_next().await.map_err(err("cannot list addresses"))? {
        if a.header.family == netlink_packet_route::AddressFamily::Inet {
            found.push(a);
        }
    }
    for a in found {
        handle.address().del(a).execute().await.map_err(err("cannot remove an address"))?;
    }
    Ok(())
}

pub async fn set_v4(handle: &Handle, index: u32, address: Ipv4Addr, prefix: u8) -> NetResult<()> {
    flush_v4(handle, index).await?;
    handle
        .address()
        .add(index, IpAddr::V4(address), prefix)
        .replace()
        .execute()
        .await
        .map_err(err("cannot set the address"))
}

pub async fn set_default_route(handle: &Handle, index: u32, gateway: Ipv4Addr) -> NetResult<()> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).output_interface(index).build();
    handle.route().add(route).replace().execute().await.map_err(err("cannot set the default route"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_format_like_ip_link() {
        assert_eq!(format_mac(&[0x52, 0x54, 0, 0xab, 0xcd, 0xef]), "52:54:00:ab:cd:ef");
    }
}
