//! Downloads: the panel fetches an image from a URL itself, which is how
//! admins bring a distribution's cloud image onto a server that sits in a
//! datacenter. A download is limited in size, shows its progress, resumes
//! where the server allows it (HTTP range requests, tied to the file's
//! ETag or date with `If-Range`, so a file that changed meanwhile is
//! fetched again rather than spliced), and can be checked against the
//! SHA-256 or SHA-512 the distribution publishes.
//!
//! HTTPS is verified against Mozilla's root certificates, plus the
//! certificate authorities the admin adds (for a mirror inside the
//! company: `PUT /api/v1/settings/trusted-ca`, kept as `trusted-ca.pem`
//! in the data directory). Plain HTTP is accepted only with a checksum, so
//! what arrives is what the admin asked for.

use crate::app::{ApiError, ApiResult};
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256, Sha512};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::Duration;
use ureq::http::{header, StatusCode, Uri};

/// Times a download is resumed after the connection broke.
const RESUMES: u32 = 5;
/// The certificate authorities trusted beside Mozilla's, in the data
/// directory.
pub const TRUSTED_CA_FILE: &str = "trusted-ca.pem";

/// The checksum an admin expects, as distributions publish it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    Sha256(Vec<u8>),
    Sha512(Vec<u8>),
}

impl Checksum {
    /// `sha256:<hex>`, `sha512:<hex>`, or the bare hex digest (its length
    /// says which), as pasted from a SHA256SUMS or SHA512SUMS file.
    pub fn parse(text: &str) -> ApiResult<Self> {
        let text = text.trim();
        let (algo, hex_digest) = match text.split_once(':') {
            Some((a, h)) => (Some(a.to_ascii_lowercase()), h.trim()),
            None => (None, text),
        };
        let bad = || {
            ApiError::bad(
                "checksum",
                "checksum: give the file's SHA-256 (64 hex digits) or SHA-512 (128 hex digits), optionally as sha256:… or sha512:…",
            )
        };
        let digest = hex::decode(hex_digest).map_err(|_| bad())?;
        match (algo.as_deref(), digest.len()) {
            (None | Some("sha256"), 32) => Ok(Self::Sha256(digest)),
            (None | Some("sha512"), 64) => Ok(Self::Sha512(digest)),
            _ => Err(bad()),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Sha256(_) => "SHA-256",
            Self::Sha512(_) => "SHA-512",
        }
    }
}

/// Checks a URL before anything is fetched: http or https, with a host;
/// plain http only with a checksum.
pub fn check_url(url: &str, checksum: Option<&Checksum>) -> ApiResult<Uri> {
    let uri: Uri = url
        .trim()
        .parse()
        .map_err(|_| ApiError::bad("url", "url: not a URL; give one like https://cloud.debian.org/…/image.qcow2"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(ApiError::bad("url", "url: it names no server; give one like https://cloud.debian.org/…"));
    }
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if checksum.is_some() => Ok(uri),
        Some("http") => Err(ApiError::bad(
            "url",
            "url: plain http:// can be altered on the way; use https://, or give the file's checksum",
        )),
        _ => Err(ApiError::bad("url", "url: use an https:// URL")),
    }
}

/// The HTTP client downloads go through.
pub struct Downloader {
    agent: ureq::Agent,
}

/// What a finished download gave.
#[derive(Debug)]
pub struct Fetched {
    pub size: u64,
    pub sha256: String,
}

/// The hashes kept while the bytes arrive.
struct Hashes {
    sha256: Sha256,
    sha512: Option<Sha512>,
}

impl Hashes {
    fn new(want: Option<&Checksum>) -> Self {
        Self { sha256: Sha256::new(), sha512: matches!(want, Some(Checksum::Sha512(_))).then(Sha512::new) }
    }
    fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        if let Some(h) = &mut self.sha512 {
            h.update(bytes);
        }
    }
}

/// Where a download stands, for the task list.
pub trait Progress {
    fn progress(&mut self, done: u64, total: Option<u64>);
    fn log(&mut self, line: String);
    /// The admin asked the download to stop.
    fn stopping(&self) -> bool {
        false
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Reads an admin's certificate authorities (PEM): each must be a
/// certificate a TLS client can trust; none at all is fine (only
/// Mozilla's roots then).
pub fn parse_trusted_ca(pem: &str) -> ApiResult<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let bad = |why: String| {
        ApiError::bad("pem", format!("pem: {why}; paste the CA certificates as PEM (-----BEGIN CERTIFICATE-----)"))
    };
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM certificates ({e})")))?;
    if certs.is_empty() && !pem.trim().is_empty() {
        return Err(bad("there is no certificate in it".into()));
    }
    let mut store = rustls::RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        store.add(cert.clone()).map_err(|e| bad(format!("certificate {} cannot be a trust anchor ({e})", i + 1)))?;
    }
    Ok(certs)
}

/// The admin's certificate authorities in `data_dir`; a file that cannot
/// be read as such is left out with a warning (the panel still starts).
pub fn load_trusted_ca(data_dir: &Path) -> Vec<CertificateDer<'static>> {
    let path = data_dir.join(TRUSTED_CA_FILE);
    let Ok(pem) = std::fs::read_to_string(&path) else { return Vec::new() };
    parse_trusted_ca(&pem).unwrap_or_else(|e| {
        tracing::warn!("{}: {}; downloads trust only Mozilla's roots", path.display(), e.message);
        Vec::new()
    })
}

impl Downloader {
    /// A client that trusts Mozilla's roots and `extra`.
    pub fn new(extra: &[CertificateDer<'static>]) -> Self {
        Self::with_timeouts(extra, Duration::from_secs(15), Duration::from_secs(30))
    }

    /// As [`Self::new`], with the time to connect and the time one read
    /// may wait for bytes (a server that stalls is a broken connection).
    pub fn with_timeouts(extra: &[CertificateDer<'static>], connect: Duration, read: Duration) -> Self {
        use ureq::tls::{Certificate, RootCerts, TlsConfig};
        let roots: Vec<Certificate<'static>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .chain(extra)
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        let tls = TlsConfig::builder().root_certs(RootCerts::new_with_certs(&roots)).build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_connect(Some(connect))
            .timeout_recv_response(Some(read))
            .timeout_per_read(Some(read))
            .user_agent(concat!("kvmos/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Self { agent }
    }

    /// Fetches `url` into `out` (empty), at most `limit.0` bytes (`limit.1`
    /// says why, for the admin), and checks `want`. Blocking. Resumes up to [`RESUMES`] times where the server
    /// takes range requests. Errors are the admin's messages, on `url`.
    pub fn fetch(
        &self,
        url: &Uri,
        out: &mut File,
        limit: (u64, &str),
        want: Option<&Checksum>,
        progress: &mut dyn Progress,
    ) -> ApiResult<Fetched> {
        let host = url.host().unwrap_or("the server").to_string();
        let too_big =
            |size: u64| ApiError::field(413, "url", format!("url: the file is {} or more, and {}", mib(size), limit.1));
        let limit = limit.0;
        let mut hashes = Hashes::new(want);
        let (mut done, mut total) = (0u64, None::<u64>);
        // The file's identity (ETag, else Last-Modified), for If-Range.
        let mut validator: Option<String> = None;
        let mut resumable = false;
        let mut resumes = 0u32;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let mut req = self.agent.get(url.clone()).header(header::ACCEPT_ENCODING, "identity");
            if done > 0 {
                req = req.header(header::RANGE, format!("bytes={done}-"));
                if let Some(v) = &validator {
                    req = req.header(header::IF_RANGE, v.as_str());
                }
            }
            let cut_off = |done: u64, why: String| {
                ApiError::bad("url", format!("url: the download from {host} was cut off after {} ({why})", mib(done)))
            };
            let response = match req.call() {
                Ok(r) => r,
                // A connection that broke is tried again; a server that is
                // not there, or not trusted, is not.
                Err(e) if transient(&e) && resumes < RESUMES => {
                    resumes += 1;
                    progress.log(format!("{host} did not answer ({e}); trying again ({resumes} of {RESUMES})"));
                    std::thread::sleep(Duration::from_secs(resumes.into()));
                    continue;
                }
                Err(e) if done > 0 => return Err(cut_off(done, format!("{e}; {RESUMES} resumes failed"))),
                Err(e) => return Err(unreachable(&host, e)),
            };
            let status = response.status();
            let headers = response.headers();
            let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            match status {
                StatusCode::OK => {
                    if done > 0 {
                        progress.log(format!(
                            "{host} sent the whole file again (it changed, or does not resume); starting over"
                        ));
                        out.set_len(0).and_then(|_| out.rewind()).map_err(ApiError::internal)?;
                        hashes = Hashes::new(want);
                        done = 0;
                    }
                    total = text(header::CONTENT_LENGTH).and_then(|v| v.parse().ok());
                    resumable = text(header::ACCEPT_RANGES).is_some_and(|v| v.eq_ignore_ascii_case("bytes"));
                    validator = text(header::ETAG).filter(|e| !e.starts_with("W/")).or(text(header::LAST_MODIFIED));
                    progress.log(match total {
                        Some(t) => format!("{host} answered: {}{}", mib(t), if resumable { ", resumable" } else { "" }),
                        None => format!("{host} answered; it did not say the size"),
                    });
                }
                StatusCode::PARTIAL_CONTENT => {
                    let range = text(header::CONTENT_RANGE).and_then(|v| parse_content_range(&v));
                    match range {
                        Some((start, size)) if start == done => {
                            total = size.or(total);
                            progress.log(format!("resumed at {}", mib(done)));
                        }
                        _ => return Err(cut_off(done, "and the server resumed it at the wrong place".into())),
                    }
                }
                s => {
                    return Err(ApiError::bad(
                        "url",
                        format!(
                            "url: {host} answered {} {}{}",
                            s.as_u16(),
                            s.canonical_reason().unwrap_or(""),
                            if s == StatusCode::NOT_FOUND { ": check the URL" } else { "" }
                        ),
                    ))
                }
            }
            if let Some(t) = total.filter(|&t| t > limit) {
                return Err(too_big(t));
            }
            progress.progress(done, total);
            let mut body = response.into_body().into_reader();
            let broke = loop {
                match body.read(&mut buf) {
                    Ok(0) => break None,
                    Ok(_) if progress.stopping() => return Err(crate::tasks::stopped()),
                    Ok(n) => {
                        done += n as u64;
                        if done > limit {
                            return Err(too_big(done));
                        }
                        hashes.update(&buf[..n]);
                        out.write_all(&buf[..n]).map_err(ApiError::internal)?;
                        progress.progress(done, total);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Some(e.to_string()),
                }
            };
            if broke.is_none() && total.is_none_or(|t| done >= t) {
                break;
            }
            let why = broke.unwrap_or_else(|| "the connection closed early".into());
            if !resumable {
                return Err(cut_off(done, format!("{why}; the server does not resume downloads, so start it again")));
            }
            if resumes == RESUMES {
                return Err(cut_off(done, format!("{why}; {RESUMES} resumes failed, try again later")));
            }
            if progress.stopping() {
                return Err(crate::tasks::stopped());
            }
            resumes += 1;
            progress.log(format!("cut off after {} ({why}); resuming ({resumes} of {RESUMES})", mib(done)));
            std::thread::sleep(Duration::from_millis(500 * u64::from(resumes)));
        }
        out.sync_all().map_err(ApiError::internal)?;
        if done == 0 {
            return Err(ApiError::bad("url", format!("url: {host} sent an empty file")));
        }
        let sha256 = hashes.sha256.finalize().to_vec();
        if let Some(want) = want {
            let got = match want {
                Checksum::Sha256(_) => sha256.clone(),
                Checksum::Sha512(_) => hashes.sha512.expect("kept for a SHA-512").finalize().to_vec(),
            };
            let (Checksum::Sha256(w) | Checksum::Sha512(w)) = want;
            if &got != w {
                return Err(ApiError::bad(
                    "checksum",
                    format!(
                        "checksum: the file's {} is {}, not the one given; the download was damaged or the URL names another file",
                        want.name(),
                        hex::encode(got)
                    ),
                ));
            }
            progress.log(format!("{} checked", want.name()));
        }
        Ok(Fetched { size: done, sha256: hex::encode(sha256) })
    }
}

/// rustls's errors, which reach ureq's caller inside I/O errors.
fn tls_error(e: &ureq::Error) -> Option<&rustls::Error> {
    match e {
        ureq::Error::Rustls(r) => Some(r),
        ureq::Error::Io(io) => io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        _ => None,
    }
}

/// Whether trying again may help: a connection that broke or timed out,
/// not a name that does not resolve, a port nobody listens on, or a
/// certificate that is not trusted.
fn transient(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Io(io) => {
            io.kind() != std::io::ErrorKind::ConnectionRefused
                && !matches!(tls_error(e), Some(rustls::Error::InvalidCertificate(_)))
        }
        ureq::Error::Timeout(_) | ureq::Error::Protocol(_) => true,
        _ => false,
    }
}

/// The admin's message for a server that could not be reached at all.
fn unreachable(host: &str, e: ureq::Error) -> ApiError {
    let why = match (&e, tls_error(&e)) {
        (_, Some(rustls::Error::InvalidCertificate(c))) => format!(
            "its TLS certificate is not trusted ({c:?}); if your own CA signed it, add the CA on the Images page under \
             \"Certificate authorities trusted for downloads\" (PUT /api/v1/settings/trusted-ca)"
        ),
        (ureq::Error::HostNotFound, _) => "no such host (check the name, and the host's DNS servers)".to_string(),
        (ureq::Error::Timeout(_), _) => "no answer in time".to_string(),
        (ureq::Error::Io(io), _) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "the connection was refused (nothing listens there)".to_string()
        }
        (e, _) => e.to_string(),
    };
    ApiError::bad("url", format!("url: cannot download from {host}: {why}"))
}

/// `bytes START-END/SIZE` (SIZE may be `*`): the start and the size.
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, size) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, size.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn checksums_are_read_as_distributions_publish_them() {
        let h256 = "ab".repeat(32);
        assert_eq!(Checksum::parse(&h256).unwrap(), Checksum::Sha256(vec![0xab; 32]));
        assert_eq!(Checksum::parse(&format!("SHA512:{}", "cd".repeat(64))).unwrap(), Checksum::Sha512(vec![0xcd; 64]));
        for bad in ["", "xyz", &"ab".repeat(20), &format!("sha512:{h256}"), &format!("md5:{}", "ab".repeat(16))] {
            assert_eq!(Checksum::parse(bad).unwrap_err().field.as_deref(), Some("checksum"), "{bad}");
        }
    }

    #[test]
    fn urls_are_https_or_checked_http() {
        let sum = Checksum::Sha256(vec![0; 32]);
        assert!(check_url("https://cloud.debian.org/images/x.qcow2", None).is_ok());
        assert!(check_url("http://mirror.local/x.qcow2", Some(&sum)).is_ok());
        let e = check_url("http://mirror.local/x.qcow2", None).unwrap_err();
        assert!(e.message.contains("checksum"), "{}", e.message);
        for bad in ["ftp://x/y", "not a url", "/just/a/path", "https://"] {
            assert_eq!(check_url(bad, None).unwrap_err().field.as_deref(), Some("url"), "{bad}");
        }
    }

    #[test]
    fn content_ranges_give_where_a_part_starts() {
        assert_eq!(parse_content_range("bytes 100-199/1000"), Some((100, Some(1000))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    #[test]
    fn trusted_cas_are_checked_and_a_bad_file_is_left_out() {
        let ca = crate::test_https::ca_pem();
        assert_eq!(parse_trusted_ca(&ca).unwrap().len(), 1);
        assert_eq!(parse_trusted_ca(&format!("{ca}\n{ca}")).unwrap().len(), 2);
        assert!(parse_trusted_ca("  \n").unwrap().is_empty(), "none: only Mozilla's roots");
        for bad in ["hello", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"] {
            let e = parse_trusted_ca(bad).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("pem"), "{bad}: {}", e.message);
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TRUSTED_CA_FILE), "garbage").unwrap();
        assert!(load_trusted_ca(dir.path()).is_empty());
        std::fs::write(dir.path().join(TRUSTED_CA_FILE), &ca).unwrap();
        assert_eq!(load_trusted_ca(dir.path()).len(), 1);
    }

    #[derive(Default)]
    struct Recorded {
        log: Vec<String>,
        last: (u64, Option<u64>),
    }

    impl Progress for Recorded {
        fn progress(&mut self, done: u64, total: Option<u64>) {
            self.last = (done, total);
        }
        fn log(&mut self, line: String) {
            self.log.push(line);
        }
    }

    struct Outcome {
        result: ApiResult<Fetched>,
        bytes: Vec<u8>,
        log: Vec<String>,
        last: (u64, Option<u64>),
    }

    async fn fetch(dl: &Arc<Downloader>, url: String, limit: u64, want: Option<Checksum>) -> Outcome {
        let dl = Arc::clone(dl);
        tokio::task::spawn_blocking(move || {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("image");
            let mut out = File::create(&path).unwrap();
            let mut rec = Recorded::default();
            let url = check_url(&url, want.as_ref()).unwrap();
            let result = dl.fetch(&url, &mut out, (limit, "images are limited to 1 MiB"), want.as_ref(), &mut rec);
            Outcome { result, bytes: std::fs::read(&path).unwrap(), log: rec.log, last: rec.last }
        })
        .await
        .unwrap()
    }

    /// Against a local HTTPS server that breaks the ways real ones do.
    #[tokio::test(flavor = "multi_thread")]
    async fn downloads_resume_where_they_broke_and_check_what_arrived() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let server = crate::test_https::FileServer::start(data.clone()).await;
        let ca = parse_trusted_ca(&crate::test_https::ca_pem()).unwrap();
        let dl = Arc::new(Downloader::with_timeouts(&ca, Duration::from_secs(5), Duration::from_secs(1)));
        let sha256 = hex::encode(Sha256::digest(&data));
        let sha512 = Checksum::Sha512(Sha512::digest(&data).to_vec());

        let o = fetch(&dl, server.url("whole", "a.img"), 10 << 20, Checksum::parse(&sha256).ok()).await;
        let fetched = o.result.unwrap();
        assert_eq!((fetched.size, &fetched.sha256), (data.len() as u64, &sha256));
        assert!(o.bytes == data);
        assert_eq!(o.last, (data.len() as u64, Some(data.len() as u64)), "progress reached the end");

        // Broken off halfway, or stalled: resumed from where it broke.
        for mode in ["cut-once", "stall-once"] {
            let o = fetch(&dl, server.url(mode, "b.img"), 10 << 20, Some(sha512.clone())).await;
            o.result.unwrap_or_else(|e| panic!("{mode}: {}", e.message));
            assert!(o.bytes == data, "{mode}: the resumed file is whole");
            assert!(o.log.iter().any(|l| l.contains("resuming (1 of 5)")), "{mode}: {:?}", o.log);
            assert!(o.log.iter().any(|l| l.contains("resumed at 1.4 MiB")), "{mode}: {:?}", o.log);
            assert!(o.log.iter().any(|l| l.contains("SHA-512 checked")), "{mode}: {:?}", o.log);
        }

        let o = fetch(&dl, server.url("no-ranges", "c.img"), 10 << 20, None).await;
        let e = o.result.unwrap_err();
        assert!(e.message.contains("cut off after 1.4 MiB") && e.message.contains("does not resume"), "{}", e.message);

        let o = fetch(&dl, server.url("cut-always", "d.img"), 10 << 20, None).await;
        let e = o.result.unwrap_err();
        assert!(e.message.contains("5 resumes failed"), "{}", e.message);

        let mut wrong = sha256.clone().into_bytes();
        wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
        let o = fetch(
            &dl,
            server.url("whole", "e.img"),
            10 << 20,
            Checksum::parse(std::str::from_utf8(&wrong).unwrap()).ok(),
        )
        .await;
        let e = o.result.unwrap_err();
        assert_eq!(e.field.as_deref(), Some("checksum"));
        assert!(e.message.contains(&format!("SHA-256 is {sha256}, not the one given")), "{}", e.message);

        let o = fetch(&dl, server.url("whole", "f.img"), 1 << 20, None).await;
        let e = o.result.unwrap_err();
        assert_eq!(e.status, 413);
        assert!(e.message.contains("2.9 MiB or more, and images are limited to 1 MiB"), "{}", e.message);
        assert!(o.bytes.is_empty(), "nothing is fetched of a file announced too big");

        let o = fetch(&dl, server.url("missing", "g.img"), 10 << 20, None).await;
        assert!(o.result.unwrap_err().message.contains("answered 404 Not Found: check the URL"));

        let o = fetch(&dl, "https://127.0.0.1:1/nothing.img".into(), 10 << 20, None).await;
        let e = o.result.unwrap_err().message;
        assert!(e.contains("cannot download from 127.0.0.1") && e.contains("refused"), "{e}");

        // A server whose certificate no trusted CA signed.
        let untrusting = Arc::new(Downloader::new(&[]));
        let o = fetch(&untrusting, server.url("whole", "h.img"), 10 << 20, None).await;
        let e = o.result.unwrap_err().message;
        assert!(e.contains("not trusted") && e.contains("/api/v1/settings/trusted-ca"), "{e}");
    }
}
