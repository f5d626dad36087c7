//! The abuse a panel on the open internet gets, for the abuse test and its
//! benchmark: failed logins from many source addresses, and connections
//! that are opened and never used. Loopback only: every 127.0.0.0/8
//! address is this host.

use crate::panel::{connect_from, Panel};
use anyhow::Result;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

/// What the failed logins got back.
#[derive(Default, Debug, Clone, Copy)]
pub struct Logins {
    pub unauthorized: u32,
    pub too_many: u32,
    pub other: u32,
    pub connection_errors: u32,
}

impl Logins {
    fn add(&mut self, o: Logins) {
        self.unauthorized += o.unauthorized;
        self.too_many += o.too_many;
        self.other += o.other;
        self.connection_errors += o.connection_errors;
    }
}

/// One POST /api/v1/login with a wrong password on `tls`; the status.
fn failed_login(tls: &mut (impl Read + Write)) -> Result<u16> {
    let body = r#"{"password":"not the password"}"#;
    write!(
        tls,
        "POST /api/v1/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    tls.flush()?;
    // The head, then the body its Content-Length gives.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tls.read(&mut byte)? == 0 {
            anyhow::bail!("closed");
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut rest = vec![0u8; len];
    tls.read_exact(&mut rest)?;
    Ok(status)
}

/// The `n`th address failed logins come from: 127.3.x.y.
fn login_source(n: u32) -> Ipv4Addr {
    Ipv4Addr::new(127, 3, (n / 250) as u8, (n % 250 + 1) as u8)
}

/// `per_source` failed logins from each of `sources` addresses, each
/// address over one kept-alive connection, spread evenly over `over` by
/// `threads` clients at once.
pub fn failed_logins(port: u16, sources: u32, per_source: u32, over: Duration, threads: u32) -> Logins {
    let clients: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let panel = Panel::new(port);
                let mine: Vec<u32> = (0..sources).filter(|n| n % threads == t).collect();
                let attempts = (mine.len() as u32 * per_source).max(1);
                let pause = over / attempts;
                let mut out = Logins::default();
                for n in mine {
                    let Ok(mut tls) = connect_from(login_source(n), port).and_then(|tcp| panel.tls_over(tcp)) else {
                        out.connection_errors += per_source;
                        continue;
                    };
                    for _ in 0..per_source {
                        match failed_login(&mut tls) {
                            Ok(401) => out.unauthorized += 1,
                            Ok(429) => out.too_many += 1,
                            Ok(_) => out.other += 1,
                            Err(_) => out.connection_errors += 1,
                        }
                        std::thread::sleep(pause);
                    }
                }
                out
            })
        })
        .collect();
    let mut all = Logins::default();
    for c in clients {
        all.add(c.join().unwrap_or(Logins { connection_errors: 1, ..Default::default() }));
    }
    all
}

/// `n` connections, each from its own address (127.4.x.y), that never
/// send a byte.
pub fn idle_connections(port: u16, n: u32) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|i| connect_from(Ipv4Addr::new(127, 4, (i / 250) as u8, (i % 250 + 1) as u8), port).ok())
        .collect()
}

/// How many of `idle` the panel has closed.
pub fn closed(idle: &[TcpStream]) -> usize {
    idle.iter()
        .filter(|s| {
            s.set_nonblocking(true).is_ok() && {
                let mut b = [0u8; 1];
                matches!((&**s).read(&mut b), Ok(0))
            }
        })
        .count()
}

/// A file's size in KiB (0 if it is not there).
pub fn file_kib(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len() / 1024).unwrap_or(0)
}
