//! The HTTPS server and its routes.

use crate::Args;
use anyhow::{Context, Result};
use axum::routing::get;
use axum::{Json, Router};
use axum_server::tls_rustls::RustlsConfig;
use serde_json::json;
use std::time::Duration;

pub fn router() -> Router {
    Router::new().route("/api/v1/health", get(health))
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

/// Serves until SIGTERM or SIGINT, then lets open requests finish.
pub async fn serve(args: &Args, tls: RustlsConfig) -> Result<()> {
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping");
        h.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    tracing::info!(listen = %args.listen, data_dir = %args.data_dir.display(), ram_only = args.ram_only, "serving HTTPS");
    axum_server::bind_rustls(args.listen, tls)
        .handle(handle)
        .serve(router().into_make_service())
        .await
        .with_context(|| format!("cannot serve on {}", args.listen))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    #[tokio::test]
    async fn health_answers_with_the_version() {
        let resp = router().oneshot(Request::get("/api/v1/health").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], "ok");
    }
}
