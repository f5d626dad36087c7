//! A local HTTPS server for one file, as an image mirror would serve it,
//! for tests that import images into the appliance by URL. Its certificate
//! is signed by a CA made for the run ([`FileServer::ca_pem`]), which the
//! test gives the panel to trust; it names the addresses the appliance
//! reaches this host by (10.0.2.2 on QEMU's user network).
//!
//! One thread per connection, one request per connection; `GET` and `HEAD`
//! of the file's name, 404 for anything else. No range requests: a broken
//! download starts over, as it would from a server without them.

use anyhow::{Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;

pub struct FileServer {
    port: u16,
    ca_pem: String,
    name: String,
}

impl FileServer {
    /// Serves `file` as `/NAME` (its file name) on 127.0.0.1, with a
    /// certificate for `addresses` (IP addresses or host names).
    pub fn start(file: &Path, addresses: &[&str]) -> Result<Self> {
        let name = file.file_name().context("the served file has no name")?.to_string_lossy().into_owned();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "kvmos test mirror CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate()?)?;
        let key = rcgen::KeyPair::generate()?;
        let leaf = rcgen::CertificateParams::new(addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>())?
            .signed_by(&key, &ca)?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), ca.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )?;
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let (path, served) = (file.to_path_buf(), name.clone());
        std::thread::Builder::new().name("https-file".into()).spawn(move || {
            for tcp in listener.incoming().flatten() {
                let (config, path, served) = (Arc::clone(&config), path.clone(), served.clone());
                std::thread::spawn(move || {
                    if let Err(e) = answer(config, tcp, &path, &served) {
                        eprintln!("test mirror: {e:#}");
                    }
                });
            }
        })?;
        Ok(Self { port, ca_pem: ca.pem(), name })
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA that signed the server's certificate, in PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The file's URL with `host` (one of the certificate's addresses).
    pub fn url(&self, host: &str) -> String {
        format!("https://{host}:{}/{}", self.port, self.name)
    }
}

/// Answers one connection's request.
fn answer(config: Arc<rustls::ServerConfig>, tcp: TcpStream, file: &Path, name: &str) -> Result<()> {
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    let conn = rustls::ServerConnection::new(config)?;
    let mut tls = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    let mut request = String::new();
    tls.read_line(&mut request)?;
    // The headers, up to the empty line (none of them matters here).
    let mut line = String::new();
    while tls.read_line(&mut line)? > 2 && line.len() < 16 << 10 {
        line.clear();
    }
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let tls = tls.get_mut();
    if !matches!(method, "GET" | "HEAD") || target.strip_prefix('/') != Some(name) {
        tls.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Ok(tls.flush()?);
    }
    let mut f = std::fs::File::open(file)?;
    let len = f.metadata()?.len();
    write!(
        tls,
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )?;
    if method == "GET" {
        std::io::copy(&mut f, tls)?;
    }
    tls.flush()?;
    tls.conn.send_close_notify();
    Ok(tls.flush()?)
}
