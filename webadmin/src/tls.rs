//! The panel's TLS certificate. On first start a self-signed certificate is
//! made for the host's names and addresses (rcgen) and kept on the data
//! disk, so browsers see the same certificate after every reboot. The names
//! it was made for are kept beside it (`tls/self-signed.json`): when the
//! host gets a name or address it does not cover (the DHCP lease arrives
//! after the panel starts, or changes), it is made again and the live
//! server switches to it. A certificate the admin installed is never
//! replaced.

use crate::app::ApiError;
use anyhow::{Context, Result};
use axum_server::tls_rustls::RustlsConfig;
use std::path::Path;

pub const CERT_FILE: &str = "tls/cert.pem";
pub const KEY_FILE: &str = "tls/key.pem";

/// Names and addresses the certificate is valid for: localhost, the
/// hostname and the host's address from kvmos-init's status file.
pub fn subject_names(status_file: &Path) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = host.trim();
        if !h.is_empty() && !names.iter().any(|n| n == h) {
            names.push(h.to_string());
        }
    }
    if let Ok(text) = std::fs::read_to_string(status_file) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            if let Some(addr) = v.get("address").and_then(|a| a.as_str()) {
                let ip = addr.split('/').next().unwrap_or(addr).to_string();
                if !names.contains(&ip) {
                    names.push(ip);
                }
            }
        }
    }
    names
}

const NAMES_FILE: &str = "tls/self-signed.json";

/// Makes a self-signed certificate for `names` and writes it with the list.
fn make_self_signed(data_dir: &Path, names: &[String]) -> Result<()> {
    let generated = rcgen::generate_simple_self_signed(names.to_vec()).context("cannot make a certificate")?;
    write_private(&data_dir.join(KEY_FILE), generated.signing_key.serialize_pem().as_bytes())?;
    write_private(&data_dir.join(CERT_FILE), generated.cert.pem().as_bytes())?;
    crate::store::save_json(&data_dir.join(NAMES_FILE), &names)?;
    tracing::info!(names = ?names, "made a self-signed TLS certificate");
    Ok(())
}

/// The names the self-signed certificate lacks; None for the admin's own.
fn missing_names(data_dir: &Path, status_file: &Path) -> Option<Vec<String>> {
    let covered: Vec<String> = crate::store::load_json(&data_dir.join(NAMES_FILE)).ok().flatten()?;
    let wanted = subject_names(status_file);
    let missing = wanted.iter().any(|n| !covered.contains(n));
    missing.then(|| {
        let mut all = covered;
        all.extend(wanted);
        all.sort();
        all.dedup();
        all
    })
}

/// Loads the certificate from the data directory, making it first if needed.
pub async fn load_or_create(data_dir: &Path, status_file: &Path) -> Result<RustlsConfig> {
    let cert = data_dir.join(CERT_FILE);
    let key = data_dir.join(KEY_FILE);
    if !cert.exists() || !key.exists() {
        make_self_signed(data_dir, &subject_names(status_file))?;
    } else if let Some(names) = missing_names(data_dir, status_file) {
        make_self_signed(data_dir, &names)?;
    }
    RustlsConfig::from_pem_file(&cert, &key).await.with_context(|| format!("cannot load {}", cert.display()))
}

/// Every 10 s: if the host has a name or address the self-signed
/// certificate does not cover, make it again and switch the server to it.
pub fn spawn_refresh(data_dir: std::path::PathBuf, status_file: std::path::PathBuf, live: RustlsConfig) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            let Some(names) = missing_names(&data_dir, &status_file) else { continue };
            let result = match make_self_signed(&data_dir, &names) {
                Ok(()) => live
                    .reload_from_pem_file(data_dir.join(CERT_FILE), data_dir.join(KEY_FILE))
                    .await
                    .map_err(Into::into),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::warn!("cannot renew the self-signed certificate: {e:#}");
            }
        }
    });
}

/// Writes a file readable by root only, atomically.
fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    crate::store::write_atomic(path, data, 0o600)
}

/// Replaces the certificate with the admin's own: both are parsed and must
/// match before anything is written; new connections use it at once.
pub async fn replace(data_dir: &Path, live: &RustlsConfig, cert_pem: &str, key_pem: &str) -> Result<(), ApiError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::bad("cert_pem", format!("cert_pem: not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(ApiError::bad("cert_pem", "cert_pem: no certificate found; paste the PEM text"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| ApiError::bad("key_pem", format!("key_pem: not a PEM private key: {e}")))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| ApiError::bad("key_pem", format!("key_pem: unsupported key: {e}")))?;
    let certified = rustls::sign::CertifiedKey::new(certs, signing);
    certified
        .keys_match()
        .map_err(|_| ApiError::bad("key_pem", "key_pem: the key does not belong to the certificate"))?;
    crate::store::remove(&data_dir.join(NAMES_FILE))?;
    write_private(&data_dir.join(KEY_FILE), key_pem.as_bytes())?;
    write_private(&data_dir.join(CERT_FILE), cert_pem.as_bytes())?;
    live.reload_from_pem(cert_pem.as_bytes().to_vec(), key_pem.as_bytes().to_vec())
        .await
        .map_err(|e| ApiError::bad("cert_pem", format!("cert_pem: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn makes_a_certificate_once_and_keeps_it() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("status.json");
        std::fs::write(&status, r#"{"address":"10.0.2.15/24"}"#).unwrap();
        assert!(subject_names(&status).contains(&"10.0.2.15".to_string()));
        load_or_create(dir.path(), &status).await.unwrap();
        let first = std::fs::read(dir.path().join(CERT_FILE)).unwrap();
        load_or_create(dir.path(), &status).await.unwrap();
        assert_eq!(std::fs::read(dir.path().join(CERT_FILE)).unwrap(), first, "kept across restarts");
        // A new address: made again, covering the old and the new names.
        std::fs::write(&status, r#"{"address":"10.0.2.99/24"}"#).unwrap();
        load_or_create(dir.path(), &status).await.unwrap();
        assert_ne!(std::fs::read(dir.path().join(CERT_FILE)).unwrap(), first);
        let names: Vec<String> = crate::store::load_json(&dir.path().join(NAMES_FILE)).unwrap().unwrap();
        assert!(names.contains(&"10.0.2.15".into()) && names.contains(&"10.0.2.99".into()), "{names:?}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key is private");
    }
}
