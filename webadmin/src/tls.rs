//! The panel's TLS certificate. On first start a self-signed certificate is
//! made for the host's names and addresses (rcgen) and kept on the data
//! disk, so browsers see the same certificate after every reboot.

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

/// Loads the certificate from the data directory, making it first if needed.
pub async fn load_or_create(data_dir: &Path, status_file: &Path) -> Result<RustlsConfig> {
    let cert = data_dir.join(CERT_FILE);
    let key = data_dir.join(KEY_FILE);
    if !cert.exists() || !key.exists() {
        let names = subject_names(status_file);
        let generated = rcgen::generate_simple_self_signed(names.clone()).context("cannot make a certificate")?;
        let dir = cert.parent().context("bad certificate path")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        write_private(&key, generated.signing_key.serialize_pem().as_bytes())?;
        write_private(&cert, generated.cert.pem().as_bytes())?;
        tracing::info!(names = ?names, "made a self-signed TLS certificate");
    }
    RustlsConfig::from_pem_file(&cert, &key).await.with_context(|| format!("cannot load {}", cert.display()))
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
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key is private");
    }
}
