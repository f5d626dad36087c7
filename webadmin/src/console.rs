//! The VM's consoles in the browser, each a WebSocket bridged to one of
//! the VMM's Unix sockets, with the same session, CSRF and Origin rules:
//!
//! - the serial console: the VMM replays its recent output to every new
//!   client, so a page opened late still shows the boot and the prompt.
//!   Bytes from the VMM go out as binary messages; text or binary messages
//!   from the browser are typed into the guest;
//! - the screen: the VMM's VNC server (RFB), which noVNC speaks in binary
//!   messages.

use crate::app::{ApiError, State};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The browser's origin must be this panel (cookies alone would let any
/// site open the socket).
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get("origin").and_then(|o| o.to_str().ok()) else { return true };
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("");
    origin.split_once("://").map(|(_, rest)| rest) == Some(host)
}

/// The VM's serial console as a WebSocket.
#[utoipa::path(get, path = "/api/v1/vms/{id}/console", params(("id" = String, Path)),
    responses((status = 101, description = "WebSocket: binary messages carry console bytes both ways"),
              (status = 403, body = ApiError), (status = 409, body = ApiError)))]
pub async fn console(
    axum::extract::State(state): axum::extract::State<State>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    open(&state, &id, &headers, ws, Socket::Console).await
}

/// The VM's screen, keyboard and mouse: its VNC server as a WebSocket.
#[utoipa::path(get, path = "/api/v1/vms/{id}/screen", params(("id" = String, Path)),
    responses((status = 101, description = "WebSocket: the RFB protocol in binary messages (noVNC speaks it)"),
              (status = 403, body = ApiError), (status = 409, body = ApiError)))]
pub async fn screen(
    axum::extract::State(state): axum::extract::State<State>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    open(&state, &id, &headers, ws, Socket::Screen).await
}

/// Which of the VMM's sockets a WebSocket bridges to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Socket {
    Console,
    Screen,
}

/// The checks both consoles share (Origin, the VM exists, it has this
/// console, it runs), then the bridge.
async fn open(state: &State, id: &str, headers: &HeaderMap, ws: WebSocketUpgrade, which: Socket) -> Response {
    let (name, path) = match which {
        Socket::Console => ("console", state.supervisor.console_socket(id)),
        Socket::Screen => ("screen", state.supervisor.vnc_socket(id)),
    };
    if !same_origin(headers) {
        return ApiError::new(403, format!("the {name} opens only from the panel's own pages")).into_response();
    }
    let vm = match state.vms.get(id) {
        Ok(vm) => vm,
        Err(e) => return e.into_response(),
    };
    if which == Socket::Screen && !matches!(vm.spec.boot, crate::vms::Boot::Firmware { .. }) {
        return ApiError::conflict("this VM boots a kernel directly and has no screen; use its serial console")
            .into_response();
    }
    let stream = match tokio::net::UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(_) => {
            return ApiError::conflict(format!("the VM is not running; start it to see its {name}")).into_response()
        }
    };
    ws.on_upgrade(move |socket| bridge(socket, stream))
}

async fn bridge(mut ws: WebSocket, stream: tokio::net::UnixStream) {
    let (mut from_vm, mut to_vm) = stream.into_split();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            n = from_vm.read(&mut buf) => match n {
                Ok(0) | Err(_) => {
                    let _ = ws.send(Message::Close(None)).await;
                    break;
                }
                Ok(n) => {
                    if ws.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        break;
                    }
                }
            },
            msg = ws.recv() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    if to_vm.write_all(&b).await.is_err() { break; }
                }
                Some(Ok(Message::Text(t))) => {
                    if to_vm.write_all(t.as_bytes()).await.is_err() { break; }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
}
