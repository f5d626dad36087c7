//! The panel's shared state and its error type.

use crate::audit::AuditLog;
use crate::auth::{Auth, Caller};
use crate::images::Images;
use crate::supervisor::Supervisor;
use crate::vms::VmStore;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;

/// Where things are; from the command line.
#[derive(Debug, Clone)]
pub struct Paths {
    pub data_dir: PathBuf,
    /// Per-VM runtime directories (sockets, pid, exit file).
    pub run_dir: PathBuf,
    pub status_file: PathBuf,
    pub setup_code_file: PathBuf,
    /// Bundled guests (`<name>/guest.json`, kernel, initrd).
    pub guests_dir: PathBuf,
    pub vmm_bin: PathBuf,
    pub bridge: String,
    pub ram_only: bool,
}

pub struct AppState {
    pub paths: Paths,
    pub auth: Auth,
    pub audit: AuditLog,
    pub images: Images,
    pub vms: VmStore,
    pub supervisor: Supervisor,
    /// What needs root ([`crate::privsep`]).
    pub launcher: Arc<crate::privsep::Launcher>,
    /// The live TLS configuration, replaced when the admin uploads a
    /// certificate.
    pub tls: axum_server::tls_rustls::RustlsConfig,
}

pub type State = Arc<AppState>;

impl AppState {
    /// Records an action in the audit log.
    pub fn audit<T>(&self, caller: &Caller, action: &str, target: &str, outcome: &Result<T, ApiError>) {
        let outcome = match outcome {
            Ok(_) => "ok".to_string(),
            Err(e) => e.message.clone(),
        };
        self.audit.record(&caller.who, &caller.addr.to_string(), action, target, &outcome);
    }
}

/// An error the API returns: a status, a message for people, and the field
/// it concerns (so the UI shows it next to that field).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    #[serde(rename = "error")]
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), field: None }
    }
    pub fn field(status: u16, field: &str, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), field: Some(field.into()) }
    }
    pub fn bad(field: &str, message: impl Into<String>) -> Self {
        Self::field(400, field, message)
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(404, format!("{what} not found"))
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, message)
    }
    /// An internal error: the cause (with its paths and details) goes to
    /// the panel's log under a reference; the client gets the reference.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        let reference = crate::auth::random_hex(4);
        tracing::error!(reference, "internal error: {e}");
        Self::new(500, format!("internal error {reference}: the panel's log has the details; try again, or report it"))
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        Self::internal(format!("{e:#}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The largest JSON body the API takes.
pub const BODY_LIMIT: usize = 1 << 20;
/// How long a JSON body may take to arrive.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A JSON request body. Unlike axum's `Json`, whose rejections are plain
/// text, a body that is too large, not JSON, or not the right shape comes
/// back as an [`ApiError`] like every other error, naming the field where
/// serde can tell.
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        // A body trickled in slowly must not hold a task for ever.
        match tokio::time::timeout(BODY_TIMEOUT, axum::Json::<T>::from_request(req, state)).await {
            Ok(Ok(axum::Json(v))) => Ok(Self(v)),
            Ok(Err(rejection)) => Err(json_rejection(rejection)),
            Err(_) => Err(ApiError::new(408, format!("the body did not arrive within {} s", BODY_TIMEOUT.as_secs()))),
        }
    }
}

fn json_rejection(r: axum::extract::rejection::JsonRejection) -> ApiError {
    use axum::extract::rejection::JsonRejection as R;
    match r {
        R::JsonDataError(e) => {
            // "Failed to deserialize the JSON body into the target type:
            // name: invalid type..." (the path comes from serde_path_to_error).
            let text = e.body_text();
            let detail = text.split_once("target type: ").map(|(_, d)| d).unwrap_or(&text).to_string();
            match detail.split_once(": ") {
                Some((path, why)) if !path.contains(' ') && path != "." => {
                    ApiError::field(400, path, format!("{path}: {why}"))
                }
                _ => ApiError::new(400, detail),
            }
        }
        R::JsonSyntaxError(e) => ApiError::new(400, format!("the body is not valid JSON: {}", e.body_text())),
        R::MissingJsonContentType(_) => ApiError::new(415, "send the body as JSON with Content-Type: application/json"),
        R::BytesRejection(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(413, format!("the body is larger than the {} KiB the API takes", BODY_LIMIT >> 10))
        }
        other => ApiError::new(other.status().as_u16(), other.body_text()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Internal errors once carried their cause, host paths and all, to
    /// the client.
    #[test]
    fn internal_errors_keep_their_details_in_the_log() {
        let e = ApiError::internal("cannot write /var/lib/kvmos/panel/vms.json: No space left on device");
        assert_eq!(e.status, 500);
        assert!(!e.message.contains("/var/lib"), "{}", e.message);
        assert!(e.message.starts_with("internal error ") && e.message.contains("the panel's log"), "{}", e.message);
    }
}
