//! A local HTTPS file server for the download tests, with a test CA the
//! panel is told to trust (its `trusted-ca.pem`). It serves one file under
//! paths that pick a behaviour, the ways real servers behave and break:
//!
//! - `/whole/…`: the file, with range requests and an ETag.
//! - `/cut-once/…`: the first answer breaks off halfway; ranges work.
//! - `/cut-always/…`: every answer breaks off halfway; ranges work.
//! - `/no-ranges/…`: the first answer breaks off; no range requests.
//! - `/stall-once/…`: the first answer stops sending halfway.
//! - `/slow/…`: the file in 64 KiB pieces, 50 ms apart.
//! - `/page/…`: a web page; `/missing/…`: 404.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "kvmos download test CA");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    })
}

/// The test CA, as `trusted-ca.pem` holds it.
pub fn ca_pem() -> String {
    ca().issuer.pem()
}

/// Writes the test CA as `data_dir/trusted-ca.pem`.
pub fn trust(data_dir: &std::path::Path) {
    std::fs::create_dir_all(data_dir).unwrap();
    std::fs::write(data_dir.join(crate::download::TRUSTED_CA_FILE), ca_pem()).unwrap();
}

struct Served {
    data: Vec<u8>,
    /// Requests so far, per path: each path breaks on its own first one.
    hits: Mutex<HashMap<String, usize>>,
}

pub struct FileServer {
    addr: SocketAddr,
}

impl FileServer {
    /// Serves `data` on 127.0.0.1 over HTTPS until the test ends.
    pub async fn start(data: Vec<u8>) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let cert = leaf.signed_by(&key, &ca().issuer).unwrap();
        let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
            [cert.pem(), ca_pem()].concat().into_bytes(),
            key.serialize_pem().into_bytes(),
        )
        .await
        .unwrap();
        let served = Arc::new(Served { data, hits: Mutex::default() });
        let app = axum::Router::new().route("/{mode}/{name}", axum::routing::get(serve)).with_state(served);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = axum_server::from_tcp_rustls(listener, tls).unwrap();
        tokio::spawn(async move { server.serve(app.into_make_service()).await });
        Self { addr }
    }

    /// The URL of the file served the way `mode` says.
    pub fn url(&self, mode: &str, name: &str) -> String {
        format!("https://{}/{mode}/{name}", self.addr)
    }
}

async fn serve(
    State(s): State<Arc<Served>>,
    Path((mode, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let hit = {
        let mut hits = s.hits.lock().unwrap();
        let n = hits.entry(format!("{mode}/{name}")).or_default();
        *n += 1;
        *n - 1
    };
    match mode.as_str() {
        "page" => {
            return ([(header::CONTENT_TYPE, "text/html")], "<!doctype html><title>Downloads</title>").into_response()
        }
        "missing" => return StatusCode::NOT_FOUND.into_response(),
        _ => {}
    }
    let ranges = mode != "no-ranges";
    let len = s.data.len();
    let start = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&s| ranges && s < len);
    let part = s.data[start.unwrap_or(0)..].to_vec();
    let breaks = match mode.as_str() {
        "cut-once" | "no-ranges" | "stall-once" => hit == 0,
        "cut-always" => true,
        _ => false,
    };
    let mut response = Response::builder()
        .header(header::CONTENT_LENGTH, part.len())
        .header(header::ETAG, "\"v1\"")
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if ranges {
        response = response.header(header::ACCEPT_RANGES, "bytes");
    }
    if let Some(start) = start {
        response = response
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{}/{len}", len - 1));
    }
    let body = if mode == "slow" {
        let pieces: Vec<bytes::Bytes> = part.chunks(64 << 10).map(bytes::Bytes::copy_from_slice).collect();
        Body::from_stream(futures_util::StreamExt::then(futures_util::stream::iter(pieces), |p| async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            Ok::<_, std::io::Error>(p)
        }))
    } else if breaks {
        let half = bytes::Bytes::from(part[..part.len() / 2].to_vec());
        let first = futures_util::stream::iter([Ok::<_, std::io::Error>(half)]);
        if mode == "stall-once" {
            Body::from_stream(futures_util::StreamExt::chain(first, futures_util::stream::pending()))
        } else {
            // After the first half has gone out.
            let broken = futures_util::stream::once(async {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                Err(std::io::Error::other("the test server breaks off"))
            });
            Body::from_stream(futures_util::StreamExt::chain(first, broken))
        }
    } else {
        Body::from(part)
    };
    response.body(body).unwrap()
}
