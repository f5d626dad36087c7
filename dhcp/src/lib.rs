//! kvmos-init's DHCPv4 client (RFC 2131) as a state machine free of I/O, so
//! it can be tested against scripted server replies and fuzzed with
//! arbitrary ones. Messages are encoded and decoded by `dhcproto`;
//! [`Client::on_datagram`] takes a reply as it came off the wire.
//!
//! INIT → SELECTING (DISCOVER) → REQUESTING (REQUEST) → BOUND; at T1 it
//! renews with the server that gave the lease (unicast), at T2 it rebinds
//! with any server (broadcast), and at expiry it drops the address and starts
//! over. Every wait is bounded and retransmissions back off exponentially,
//! so a silent network costs nothing but a packet now and then.

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// What the network gave us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub ntp: Vec<Ipv4Addr>,
    pub server: Ipv4Addr,
    pub lease_time: Duration,
    pub t1: Duration,
    pub t2: Duration,
    /// When the lease (or its last renewal) was acknowledged.
    pub acquired: Instant,
}

/// Where a message must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Broadcast,
    Server(Ipv4Addr),
}

/// What the driver must do after feeding the state machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Send(Box<Message>, Destination),
    /// A new lease: configure the address, route and DNS.
    Bound(Lease),
    /// The same address, extended.
    Renewed(Lease),
    /// The lease expired or was refused: remove the address.
    Lost,
}

#[derive(Debug, Clone)]
enum State {
    Init,
    Selecting { attempt: u32 },
    Requesting { offer: Box<Message>, attempt: u32 },
    Bound { lease: Lease },
    Renewing { lease: Lease },
    Rebinding { lease: Lease },
}

/// The client for one interface.
pub struct Client {
    mac: [u8; 6],
    hostname: Option<String>,
    state: State,
    xid: u32,
    deadline: Instant,
}

/// First retransmission delay; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(64);
/// REQUESTs sent for one offer before starting over with DISCOVER.
const REQUEST_ATTEMPTS: u32 = 4;
/// RFC 2131 4.4.5: renewal retransmissions wait half the remaining time,
/// but at least this long.
const MIN_RENEW_RETRY: Duration = Duration::from_secs(60);

fn backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF.saturating_mul(1 << attempt.min(6)).min(MAX_BACKOFF)
}

impl Client {
    /// `seed` varies the transaction ids between boots and interfaces.
    pub fn new(mac: [u8; 6], hostname: Option<String>, seed: u32, now: Instant) -> Self {
        Self { mac, hostname, state: State::Init, xid: seed, deadline: now }
    }

    /// When [`Client::on_timeout`] must next be called.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    pub fn lease(&self) -> Option<&Lease> {
        match &self.state {
            State::Bound { lease } | State::Renewing { lease } | State::Rebinding { lease } => Some(lease),
            _ => None,
        }
    }

    /// A short name of the state.
    #[cfg(test)]
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::Init => "init",
            State::Selecting { .. } => "selecting",
            State::Requesting { .. } => "requesting",
            State::Bound { .. } => "bound",
            State::Renewing { .. } => "renewing",
            State::Rebinding { .. } => "rebinding",
        }
    }

    /// Called when the deadline passes (and once at the start).
    pub fn on_timeout(&mut self, now: Instant) -> Vec<Action> {
        match std::mem::replace(&mut self.state, State::Init) {
            State::Init => self.discover(now, 0),
            State::Selecting { attempt } => self.discover(now, attempt + 1),
            State::Requesting { offer, attempt } if attempt + 1 < REQUEST_ATTEMPTS => {
                self.request_offer(*offer, now, attempt + 1)
            }
            State::Requesting { .. } => self.discover(now, 0),
            State::Bound { lease } => {
                self.next_xid();
                self.renew(lease, now)
            }
            State::Renewing { lease } | State::Rebinding { lease } => {
                let since = now.saturating_duration_since(lease.acquired);
                if since >= lease.lease_time {
                    let mut out = vec![Action::Lost];
                    out.extend(self.discover(now, 0));
                    out
                } else if since >= lease.t2 {
                    self.rebind(lease, now)
                } else {
                    self.renew(lease, now)
                }
            }
        }
    }

    /// A datagram received on port 68, as it came: decoded, then as
    /// [`Client::on_message`]; anything that is not a DHCP message is
    /// ignored.
    pub fn on_datagram(&mut self, bytes: &[u8], now: Instant) -> Vec<Action> {
        match Message::decode(&mut Decoder::new(bytes)) {
            Ok(msg) => self.on_message(&msg, now),
            Err(_) => Vec::new(),
        }
    }

    /// Feeds a message received on port 68.
    pub fn on_message(&mut self, msg: &Message, now: Instant) -> Vec<Action> {
        // The hardware address length comes from the wire: `chaddr()`
        // slices by it and panics past 16 (found by fuzzing), so it is
        // checked first. Ours is an Ethernet address, 6 bytes.
        let ours = msg.hlen() == 6 && msg.chaddr() == &self.mac[..];
        if msg.opcode() != Opcode::BootReply || msg.xid() != self.xid || !ours {
            return vec![];
        }
        let kind = msg.opts().msg_type();
        let before = self.state.clone();
        match (std::mem::replace(&mut self.state, State::Init), kind) {
            (State::Selecting { .. }, Some(MessageType::Offer)) if !msg.yiaddr().is_unspecified() => {
                self.request_offer(msg.clone(), now, 0)
            }
            (State::Requesting { .. }, Some(MessageType::Ack)) => match lease_from(msg, now) {
                Some(lease) => self.bind(lease, now, false),
                None => self.discover(now, 0),
            },
            (State::Renewing { lease } | State::Rebinding { lease }, Some(MessageType::Ack)) => {
                match lease_from(msg, now) {
                    Some(new) if new.address == lease.address => self.bind(new, now, true),
                    // A different address on renewal: treat as a new lease.
                    Some(new) => {
                        let mut out = vec![Action::Lost];
                        out.extend(self.bind(new, now, false));
                        out
                    }
                    None => {
                        self.state = before;
                        vec![]
                    }
                }
            }
            (State::Requesting { .. }, Some(MessageType::Nak)) => self.discover(now, 0),
            (State::Renewing { .. } | State::Rebinding { .. }, Some(MessageType::Nak)) => {
                let mut out = vec![Action::Lost];
                out.extend(self.discover(now, 0));
                out
            }
            (state, _) => {
                self.state = state;
                vec![]
            }
        }
    }

    fn bind(&mut self, lease: Lease, now: Instant, renewal: bool) -> Vec<Action> {
        self.deadline = now + lease.t1;
        self.state = State::Bound { lease: lease.clone() };
        vec![if renewal { Action::Renewed(lease) } else { Action::Bound(lease) }]
    }

    fn next_xid(&mut self) -> u32 {
        self.xid = self.xid.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        self.xid
    }

    fn base(&self, kind: MessageType, ciaddr: Ipv4Addr, broadcast: bool) -> Message {
        let mut m = Message::new_with_id(
            self.xid,
            ciaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &self.mac,
        );
        m.set_opcode(Opcode::BootRequest);
        if broadcast {
            // Ask for broadcast replies: without an address yet, the kernel
            // would drop a unicast reply before our UDP socket saw it.
            m.set_flags(Flags::default().set_broadcast());
        }
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        let mut client_id = vec![1u8];
        client_id.extend_from_slice(&self.mac);
        o.insert(DhcpOption::ClientIdentifier(client_id));
        o.insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::NtpServers,
            OptionCode::AddressLeaseTime,
            OptionCode::Renewal,
            OptionCode::Rebinding,
        ]));
        if let Some(h) = &self.hostname {
            o.insert(DhcpOption::Hostname(h.clone()));
        }
        m
    }

    fn discover(&mut self, now: Instant, attempt: u32) -> Vec<Action> {
        if attempt == 0 {
            self.next_xid();
        }
        let m = self.base(MessageType::Discover, Ipv4Addr::UNSPECIFIED, true);
        self.state = State::Selecting { attempt };
        self.deadline = now + backoff(attempt);
        vec![Action::Send(Box::new(m), Destination::Broadcast)]
    }

    fn request_offer(&mut self, offer: Message, now: Instant, attempt: u32) -> Vec<Action> {
        let mut m = self.base(MessageType::Request, Ipv4Addr::UNSPECIFIED, true);
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        if let Some(DhcpOption::ServerIdentifier(s)) = offer.opts().get(OptionCode::ServerIdentifier) {
            m.opts_mut().insert(DhcpOption::ServerIdentifier(*s));
        }
        self.state = State::Requesting { offer: Box::new(offer), attempt };
        self.deadline = now + backoff(attempt);
        vec![Action::Send(Box::new(m), Destination::Broadcast)]
    }

    fn renew(&mut self, lease: Lease, now: Instant) -> Vec<Action> {
        let m = self.base(MessageType::Request, lease.address, false);
        let until_t2 = (lease.acquired + lease.t2).saturating_duration_since(now);
        self.deadline = now + (until_t2 / 2).max(MIN_RENEW_RETRY).min(until_t2.max(Duration::from_secs(1)));
        let dest = Destination::Server(lease.server);
        self.state = State::Renewing { lease };
        vec![Action::Send(Box::new(m), dest)]
    }

    fn rebind(&mut self, lease: Lease, now: Instant) -> Vec<Action> {
        let m = self.base(MessageType::Request, lease.address, false);
        let until_end = (lease.acquired + lease.lease_time).saturating_duration_since(now);
        self.deadline = now + (until_end / 2).max(MIN_RENEW_RETRY).min(until_end.max(Duration::from_secs(1)));
        self.state = State::Rebinding { lease };
        vec![Action::Send(Box::new(m), Destination::Broadcast)]
    }
}

/// Reads a lease out of an ACK; `None` if the ACK lacks what we need.
fn lease_from(msg: &Message, now: Instant) -> Option<Lease> {
    let o = msg.opts();
    let address = msg.yiaddr();
    if address.is_unspecified() {
        return None;
    }
    let prefix = match o.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(m)) => u32::from(*m).count_ones() as u8,
        _ => 24,
    };
    let router = match o.get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.first().copied(),
        _ => None,
    };
    let dns = match o.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(d)) => d.clone(),
        _ => vec![],
    };
    let ntp = match o.get(OptionCode::NtpServers) {
        Some(DhcpOption::NtpServers(d)) => d.clone(),
        _ => vec![],
    };
    let server = match o.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => msg.siaddr(),
    };
    let lease_secs = match o.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(t)) => *t,
        _ => 3600,
    };
    // 0xffffffff means infinite; keep the arithmetic finite.
    let lease_time = Duration::from_secs(u64::from(lease_secs.min(u32::MAX - 1)));
    let t1 = match o.get(OptionCode::Renewal) {
        Some(DhcpOption::Renewal(t)) => Duration::from_secs(u64::from(*t)),
        _ => lease_time / 2,
    };
    let t2 = match o.get(OptionCode::Rebinding) {
        Some(DhcpOption::Rebinding(t)) => Duration::from_secs(u64::from(*t)),
        _ => lease_time * 7 / 8,
    };
    let t2 = t2.min(lease_time);
    let t1 = t1.min(t2);
    Some(Lease { address, prefix, router, dns, ntp, server, lease_time, t1, t2, acquired: now })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    const OFFERED: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

    /// A scripted server's reply to the request in `req`.
    fn reply(req: &Message, kind: MessageType, lease_secs: u32) -> Message {
        let mut m = Message::new_with_id(
            req.xid(),
            Ipv4Addr::UNSPECIFIED,
            if kind == MessageType::Nak { Ipv4Addr::UNSPECIFIED } else { OFFERED },
            SERVER,
            Ipv4Addr::UNSPECIFIED,
            &MAC,
        );
        m.set_opcode(Opcode::BootReply);
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(SERVER));
        o.insert(DhcpOption::SubnetMask([255, 255, 255, 0].into()));
        o.insert(DhcpOption::Router(vec![SERVER]));
        o.insert(DhcpOption::DomainNameServer(vec![[10, 0, 2, 3].into()]));
        o.insert(DhcpOption::AddressLeaseTime(lease_secs));
        m
    }

    fn sent(actions: &[Action]) -> (&Message, Destination) {
        actions
            .iter()
            .find_map(|a| match a {
                Action::Send(m, d) => Some((m.as_ref(), *d)),
                _ => None,
            })
            .expect("a message was sent")
    }

    fn kind(m: &Message) -> MessageType {
        m.opts().msg_type().unwrap()
    }

    /// Runs DISCOVER/OFFER/REQUEST/ACK and returns the bound client.
    fn bound(now: Instant, lease_secs: u32) -> (Client, Lease) {
        let mut c = Client::new(MAC, Some("kvmos-123456".into()), 7, now);
        let a = c.on_timeout(now);
        let (discover, dest) = sent(&a);
        assert_eq!(kind(discover), MessageType::Discover);
        assert_eq!(dest, Destination::Broadcast);
        assert!(discover.flags().broadcast());
        let offer = reply(discover, MessageType::Offer, lease_secs);
        let a = c.on_message(&offer, now);
        let (request, _) = sent(&a);
        assert_eq!(kind(request), MessageType::Request);
        assert!(
            matches!(request.opts().get(OptionCode::RequestedIpAddress), Some(DhcpOption::RequestedIpAddress(ip)) if *ip == OFFERED)
        );
        assert!(
            matches!(request.opts().get(OptionCode::ServerIdentifier), Some(DhcpOption::ServerIdentifier(s)) if *s == SERVER)
        );
        let ack = reply(request, MessageType::Ack, lease_secs);
        let a = c.on_message(&ack, now);
        let lease = match &a[..] {
            [Action::Bound(l)] => l.clone(),
            other => panic!("expected Bound, got {other:?}"),
        };
        (c, lease)
    }

    #[test]
    fn full_handshake_binds_with_router_dns_and_timers() {
        let now = Instant::now();
        let (c, lease) = bound(now, 3600);
        assert_eq!(lease.address, OFFERED);
        assert_eq!(lease.prefix, 24);
        assert_eq!(lease.router, Some(SERVER));
        assert_eq!(lease.dns, vec![Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(lease.t1, Duration::from_secs(1800));
        assert_eq!(lease.t2, Duration::from_secs(3150));
        assert_eq!(c.deadline(), now + Duration::from_secs(1800));
        assert_eq!(c.state_name(), "bound");
    }

    #[test]
    fn replies_for_other_transactions_or_clients_are_ignored() {
        let now = Instant::now();
        let mut c = Client::new(MAC, None, 1, now);
        let a = c.on_timeout(now);
        let (discover, _) = sent(&a);
        let mut wrong_xid = reply(discover, MessageType::Offer, 60);
        wrong_xid.set_xid(discover.xid().wrapping_add(1));
        assert!(c.on_message(&wrong_xid, now).is_empty());
        let mut other_mac = reply(discover, MessageType::Offer, 60);
        other_mac.set_chaddr(&[1, 2, 3, 4, 5, 6]);
        assert!(c.on_message(&other_mac, now).is_empty());
        assert_eq!(c.state_name(), "selecting");
    }

    #[test]
    fn silence_retransmits_discover_with_backoff() {
        let now = Instant::now();
        let mut c = Client::new(MAC, None, 1, now);
        c.on_timeout(now);
        let mut gaps = vec![];
        let mut t = now;
        for _ in 0..8 {
            let d = c.deadline();
            gaps.push(d - t);
            t = d;
            let a = c.on_timeout(t);
            assert_eq!(kind(sent(&a).0), MessageType::Discover);
        }
        assert_eq!(gaps[0], Duration::from_secs(2));
        assert_eq!(gaps[1], Duration::from_secs(4));
        assert_eq!(*gaps.last().unwrap(), MAX_BACKOFF, "backoff is capped: {gaps:?}");
    }

    #[test]
    fn nak_while_requesting_starts_over() {
        let now = Instant::now();
        let mut c = Client::new(MAC, None, 3, now);
        let a = c.on_timeout(now);
        let offer = reply(sent(&a).0, MessageType::Offer, 60);
        let a = c.on_message(&offer, now);
        let nak = reply(sent(&a).0, MessageType::Nak, 60);
        let a = c.on_message(&nak, now);
        assert_eq!(kind(sent(&a).0), MessageType::Discover);
        assert_eq!(c.state_name(), "selecting");
    }

    #[test]
    fn renews_at_t1_by_unicast_and_extends_the_lease() {
        let now = Instant::now();
        let (mut c, _) = bound(now, 3600);
        let t1 = now + Duration::from_secs(1800);
        let a = c.on_timeout(t1);
        let (req, dest) = sent(&a);
        assert_eq!(dest, Destination::Server(SERVER));
        assert_eq!(req.ciaddr(), OFFERED);
        assert!(req.opts().get(OptionCode::RequestedIpAddress).is_none(), "RFC 2131: no option 50 when renewing");
        assert_eq!(c.state_name(), "renewing");
        let a = c.on_message(&reply(req, MessageType::Ack, 3600), t1);
        assert!(matches!(&a[..], [Action::Renewed(l)] if l.acquired == t1));
        assert_eq!(c.deadline(), t1 + Duration::from_secs(1800));
    }

    #[test]
    fn rebinds_at_t2_by_broadcast_then_drops_the_address_at_expiry() {
        let now = Instant::now();
        let (mut c, lease) = bound(now, 1000);
        // T1: renewal goes unanswered.
        let mut t = c.deadline();
        c.on_timeout(t);
        // Retransmissions until T2, then a broadcast REQUEST.
        let mut rebinding_seen = false;
        for _ in 0..20 {
            t = c.deadline();
            let a = c.on_timeout(t);
            if a.contains(&Action::Lost) {
                assert!(t >= now + lease.lease_time, "lost only at expiry");
                assert!(rebinding_seen);
                assert_eq!(kind(sent(&a).0), MessageType::Discover);
                return;
            }
            let (_, dest) = sent(&a);
            if t >= now + lease.t2 {
                assert_eq!(dest, Destination::Broadcast);
                assert_eq!(c.state_name(), "rebinding");
                rebinding_seen = true;
            } else {
                assert_eq!(dest, Destination::Server(SERVER));
            }
        }
        panic!("the lease never expired");
    }

    #[test]
    fn nak_on_renewal_drops_the_address() {
        let now = Instant::now();
        let (mut c, _) = bound(now, 3600);
        let t1 = c.deadline();
        let a = c.on_timeout(t1);
        let a = c.on_message(&reply(sent(&a).0, MessageType::Nak, 0), t1);
        assert_eq!(a[0], Action::Lost);
        assert_eq!(kind(sent(&a).0), MessageType::Discover);
    }

    /// A reply whose hardware address length says 255 bytes (the field
    /// holds 16) is ignored; decoding it and asking for the address
    /// panicked in the DHCP library, which a server could use to stop the
    /// host's DHCP client (found by fuzzing).
    #[test]
    fn a_reply_with_an_impossible_hardware_address_length_is_ignored() {
        use dhcproto::Encodable;
        let now = Instant::now();
        let mut c = Client::new(MAC, None, 1, now);
        let a = c.on_timeout(now);
        let offer = reply(sent(&a).0, MessageType::Offer, 3600).to_vec().unwrap();
        let mut bad = offer.clone();
        bad[2] = 255; // hlen
        assert_eq!(c.on_datagram(&bad, now), vec![]);
        assert!(!c.on_datagram(&offer, now).is_empty(), "a good offer still works");
    }
}
