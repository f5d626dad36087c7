//! The HTTPS server: the API, the embedded UI, plain HTTP redirected to
//! HTTPS, and an orderly stop on SIGTERM (the VMs power off first).

use crate::app::{State, BODY_LIMIT};
use anyhow::{Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::http::{header, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Router};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long a client has to send a request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The whole application.
pub fn router(state: State) -> Router {
    let (api, doc) = crate::api::routes(state.clone());
    Router::new()
        .merge(api)
        .merge(crate::ui::routes())
        .layer(Extension(Arc::new(doc)))
        // Json bodies are capped; uploads read the raw body stream, which
        // this limit does not cover, and enforce the image size limit.
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

/// Headers every answer carries.
async fn security_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::STRICT_TRANSPORT_SECURITY, "max-age=31536000".parse().expect("static header"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, "nosniff".parse().expect("static header"));
    h.insert(header::X_FRAME_OPTIONS, "DENY".parse().expect("static header"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"
            .parse()
            .expect("static header"),
    );
    h.insert(header::CACHE_CONTROL, "no-store".parse().expect("static header"));
    resp
}

/// Serves until SIGTERM or SIGINT; then powers the VMs off and lets open
/// requests finish.
pub async fn serve(state: State, listen: SocketAddr, redirect_from: Option<SocketAddr>) -> Result<()> {
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    let st = state.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping: powering off the VMs");
        st.supervisor.stop_all(&st, crate::supervisor::SHUTDOWN_DEADLINE).await;
        tracing::info!("stopping the server");
        h.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    // Before TLS: connections over the cap are closed at once. The cap is
    // shared with the plain-HTTP redirect: both draw on one file limit.
    let total = crate::connections::total_for_file_limit();
    let cap = crate::connections::ConnectionCap::new(total, crate::connections::PER_ADDRESS);
    tracing::info!(total, per_address = crate::connections::PER_ADDRESS, "connection cap");
    if let Some(from) = redirect_from {
        spawn_redirect(from, listen.port(), cap.clone());
    }
    tracing::info!(%listen, data_dir = %state.paths.data_dir.display(), ram_only = state.paths.ram_only, "serving HTTPS");
    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(state.tls.clone()).acceptor(cap);
    let mut server = axum_server::bind(listen).acceptor(acceptor).handle(handle);
    close_idle_connections(&mut server);
    server
        .serve(router(state).into_make_service_with_connect_info::<SocketAddr>())
        .await
        .with_context(|| format!("cannot serve on {listen}"))
}

/// A connection that sends no complete request head within
/// [`HEADER_TIMEOUT`] (idle keep-alive, half-open, slowloris) is closed;
/// the TLS handshake has its own 10 s limit in axum-server.
fn close_idle_connections<A>(server: &mut axum_server::Server<std::net::SocketAddr, A>) {
    server.http_builder().http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
}

/// Plain HTTP answers every request with a redirect to the same path over
/// HTTPS, under the same connection cap and header timeout. A port that
/// cannot be bound (not root, in use) is only logged.
fn spawn_redirect(from: SocketAddr, https_port: u16, cap: crate::connections::ConnectionCap) {
    tokio::spawn(async move {
        let app = Router::new().fallback(move |headers: axum::http::HeaderMap, uri: Uri| async move {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
            let name = host.rsplit_once(':').map(|(n, _)| n).unwrap_or(host);
            let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let target = if https_port == 443 {
                format!("https://{name}{path}")
            } else {
                format!("https://{name}:{https_port}{path}")
            };
            Redirect::permanent(&target).into_response()
        });
        let mut server = axum_server::bind(from).acceptor(cap);
        close_idle_connections(&mut server);
        tracing::info!(%from, "redirecting plain HTTP to HTTPS");
        if let Err(e) = server.serve(app.into_make_service()).await {
            tracing::warn!(%from, "no HTTP redirect: cannot listen: {e}");
        }
    });
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
