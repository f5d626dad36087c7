//! A cap on open connections, in total and per client address, so that no
//! client, however many connections it opens and holds, can use up the
//! panel's file descriptors and lock the admin out.
//!
//! The cap is an acceptor that runs before TLS: a connection over either
//! limit is closed at once, before the handshake costs anything. A
//! connection's slot is held by its stream and freed when the stream is
//! dropped, so WebSockets (the consoles, the KVM switch) count for as long
//! as they are open.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Connections one client address may hold open at once: a browser needs
/// a few for pages and API calls, and one WebSocket per console it shows
/// (the KVM switch shows one per VM).
pub const PER_ADDRESS: usize = 256;
/// Connections open at once from all clients (less if the file limit is
/// lower: see [`total_for_file_limit`]).
pub const TOTAL: usize = 2048;
/// File descriptors kept for everything but client connections: VM
/// control sockets, images, the data disk.
const RESERVED_FILES: u64 = 512;
/// File descriptors a connection may take: its own, and the VM's console or
/// screen socket a console WebSocket opens.
const FILES_PER_CONNECTION: u64 = 2;

#[derive(Clone)]
pub struct ConnectionCap {
    inner: Arc<Mutex<Open>>,
    total: usize,
    per_address: usize,
}

struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

impl ConnectionCap {
    pub fn new(total: usize, per_address: usize) -> Self {
        Self { inner: Arc::new(Mutex::new(Open { total: 0, by_address: HashMap::new() })), total, per_address }
    }

    /// A slot for a connection from `address`, or why there is none.
    fn admit(&self, address: IpAddr) -> io::Result<Slot> {
        let mut open = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.total {
            return Err(refused(format!("{} connections open, the most the panel takes", open.total)));
        }
        let mine = open.by_address.entry(address).or_insert(0);
        if *mine >= self.per_address {
            return Err(refused(format!("{address} has {mine} connections open, the most one address may")));
        }
        *mine += 1;
        open.total += 1;
        Ok(Slot { cap: self.clone(), address })
    }

    /// Connections open now (all addresses, and `address`'s).
    #[cfg(test)]
    fn open(&self, address: IpAddr) -> (usize, usize) {
        let open = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (open.total, open.by_address.get(&address).copied().unwrap_or(0))
    }
}

/// The address a client is counted under: an IPv4 address (also when it
/// comes IPv4-mapped over IPv6), or an IPv6 address's /64, which one host
/// or one customer usually has whole.
fn client(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

fn refused(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, why)
}

/// One admitted connection's place; freed on drop.
struct Slot {
    cap: ConnectionCap,
    address: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.cap.inner.lock().unwrap_or_else(|p| p.into_inner());
        open.total -= 1;
        if let Some(n) = open.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                open.by_address.remove(&self.address);
            }
        }
    }
}

/// A client's stream with its slot.
pub struct Counted {
    stream: TcpStream,
    _slot: Slot,
}

impl<S: Send + 'static> axum_server::accept::Accept<TcpStream, S> for ConnectionCap {
    type Stream = Counted;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Counted, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let admitted = stream.peer_addr().and_then(|peer| self.admit(client(peer.ip())));
        std::future::ready(match admitted {
            Ok(slot) => Ok((Counted { stream, _slot: slot }, service)),
            Err(e) => {
                // Logged at debug only: a flood must not fill the log.
                tracing::debug!("connection closed: {e}");
                Err(e)
            }
        })
    }
}

impl AsyncRead for Counted {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Raises the soft limit on open files to the hard limit, and returns how
/// many connections fit under it with [`RESERVED_FILES`] kept for the
/// rest, [`FILES_PER_CONNECTION`] each (at most [`TOTAL`]).
pub fn total_for_file_limit() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return TOTAL / 4;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    let room = (lim.rlim_cur.saturating_sub(RESERVED_FILES) / FILES_PER_CONNECTION).max(64);
    usize::try_from(room).unwrap_or(TOTAL).min(TOTAL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum_server::accept::Accept;

    /// A real connection from `source` (any 127.0.0.0/8 address) to
    /// `listener`, as the server sees it.
    async fn connect(listener: &tokio::net::TcpListener, source: [u8; 4]) -> (TcpStream, TcpStream) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((std::net::Ipv4Addr::from(source), 0).into()).unwrap();
        let client = socket.connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn connections_over_either_cap_are_refused_and_a_closed_one_frees_its_slot() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cap = ConnectionCap::new(5, 3);
        let a: IpAddr = [127, 0, 0, 1].into();
        let mut kept = Vec::new();
        for _ in 0..3 {
            let (client, server) = connect(&listener, [127, 0, 0, 1]).await;
            kept.push((client, cap.accept(server, ()).await.expect("under the cap").0));
        }
        let (_c, server) = connect(&listener, [127, 0, 0, 1]).await;
        let err = cap.accept(server, ()).await.err().expect("a fourth from one address is refused");
        assert!(err.to_string().contains("127.0.0.1 has 3 connections open"), "{err}");
        assert_eq!(cap.open(a), (3, 3), "a refused connection takes no slot");

        // Other addresses still get in, up to the total.
        let mut others = Vec::new();
        for last in [2, 3] {
            let (client, server) = connect(&listener, [127, 0, 0, last]).await;
            others.push((client, cap.accept(server, ()).await.expect("another address").0));
        }
        let (_c, server) = connect(&listener, [127, 0, 0, 4]).await;
        let err = cap.accept(server, ()).await.err().expect("over the total");
        assert!(err.to_string().contains("5 connections open"), "{err}");

        // Closing one frees its slot for its address.
        kept.pop();
        assert_eq!(cap.open(a), (4, 2));
        let (_c, server) = connect(&listener, [127, 0, 0, 1]).await;
        assert!(cap.accept(server, ()).await.is_ok());
        drop(kept);
        drop(others);
    }

    #[test]
    fn clients_are_counted_by_ipv4_address_or_ipv6_64() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(client(v4), v4);
        assert_eq!(client("::ffff:192.0.2.7".parse().unwrap()), v4, "IPv4-mapped is the IPv4 client");
        let a = client("2001:db8:1:2:aaaa::1".parse().unwrap());
        assert_eq!(a, client("2001:db8:1:2:ffff:1:2:3".parse().unwrap()), "one /64, one client");
        assert_eq!(a, "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_ne!(a, client("2001:db8:1:3::1".parse().unwrap()));
    }

    #[tokio::test]
    async fn a_counted_stream_carries_the_bytes_both_ways() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cap = ConnectionCap::new(1, 1);
        let (mut client, server) = connect(&listener, [127, 0, 0, 1]).await;
        let (mut counted, ()) = cap.accept(server, ()).await.unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        counted.read_exact(&mut b).await.unwrap();
        counted.write_all(b"pong").await.unwrap();
        client.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"pong");
        drop(counted);
        assert_eq!(cap.open([127, 0, 0, 1].into()), (0, 0));
    }

    #[test]
    fn the_total_fits_under_the_file_limit() {
        let total = total_for_file_limit();
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit with a valid rlimit struct.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(lim.rlim_cur, lim.rlim_max, "the soft limit was raised to the hard one");
        let fits = total as u64 * FILES_PER_CONNECTION + RESERVED_FILES <= lim.rlim_cur;
        assert!((fits || total == 64) && total <= TOTAL, "{total} connections under {} files", lim.rlim_cur);
    }
}
