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
    /// The live TLS configuration, replaced when the admin uploads a
    /// certificate.
    pub tls: axum_server::tls_rustls::RustlsConfig,
}

pub type State = Arc<AppState>;

impl AppState {
    /// Records an action in the audit log.
    pub fn audit(&self, caller: &Caller, action: &str, target: &str, outcome: &Result<(), ApiError>) {
        let outcome = match outcome {
            Ok(()) => "ok".to_string(),
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
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {e}");
        Self::new(500, format!("internal error: {e}"))
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
