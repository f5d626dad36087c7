//! The control API: HTTP/1.1 with JSON over a Unix socket (mode 0600), in
//! the style of Firecracker's. `openapi.yaml` in this crate is the contract.
//!
//! - `GET /vm`: state, configuration, uptime, exit reason and counters;
//! - `PUT /actions` with `{"action": "pause" | "resume" | "power_off" |
//!   "reset" | "stop"}`;
//! - `GET /screenshot`: the screen as a PNG (firmware-booted VMs, which
//!   have a display); `?scale=N` shrinks it N times (1 to 16);
//! - `GET /screen/text`: a text-mode screen's characters, row by row;
//! - `PUT /disks/{index}/medium` with `{"medium": null}` ejects a CD-ROM
//!   drive's medium, and with `{"medium": "NAME"}` puts in the file whose
//!   descriptor came with the request (SCM_RIGHTS): a jailed VMM opens no
//!   files.
//!
//! A thread accepts connections and parses requests (httparse); each request
//! is handed to the VMM's event loop, which owns the VM, and the answer
//! comes back over a channel. One request per connection. A VMM that ends
//! (`stop`, `reset`) first lets the answers under way reach their clients
//! ([`Api::finish`]).

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Requests larger than this are refused (the API takes tiny JSON bodies).
const MAX_REQUEST: usize = 64 * 1024;

pub use kvmos_contract::control::{Action, ActionBody};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    GetVm,
    Act(Action),
    /// The screen shrunk by this factor (1: full size).
    Screenshot {
        scale: u32,
    },
    ScreenText,
    /// Eject (None) or put in a medium, in the CD-ROM drive that is disk
    /// `disk`.
    ChangeMedium {
        disk: usize,
        medium: Option<String>,
    },
}

/// The resources and their methods, for the errors that list them.
const RESOURCES: &str = "GET /vm, PUT /actions, GET /screenshot, GET /screen/text, PUT /disks/{index}/medium";

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, value: &impl serde::Serialize) -> Self {
        Self { status, content_type: "application/json", body: serde_json::to_vec(value).unwrap_or_default() }
    }

    pub fn no_content() -> Self {
        Self { status: 204, content_type: "application/json", body: Vec::new() }
    }

    pub fn png(body: Vec<u8>) -> Self {
        Self { status: 200, content_type: "image/png", body }
    }

    pub fn error(status: u16, message: &str) -> Self {
        Self::json(status, &kvmos_contract::control::ErrorBody { error: message.to_string() })
    }
}

/// A request on its way to the event loop, with where to send the answer.
pub struct Pending {
    pub request: Request,
    /// A file descriptor the client passed with the request.
    pub file: Option<std::fs::File>,
    pub reply: Sender<Response>,
}

/// Parses one HTTP request; `Ok(None)` when more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<Request>, Response> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let header_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Response::error(400, &format!("malformed HTTP request: {e}"))),
    };
    let content_length = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
        .unwrap_or(0);
    // A huge Content-Length must not overflow the sum.
    let total = header_len.checked_add(content_length).filter(|&t| t <= MAX_REQUEST);
    let Some(total) = total else {
        return Err(Response::error(413, &format!("request too large: the API takes at most {MAX_REQUEST} bytes")));
    };
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[header_len..total];
    let (path, query) = req.path.unwrap_or("").split_once('?').unwrap_or((req.path.unwrap_or(""), ""));
    match (req.method.unwrap_or(""), path) {
        ("GET", "/vm") => Ok(Some(Request::GetVm)),
        ("GET", "/screenshot") => Ok(Some(Request::Screenshot { scale: scale_param(query)? })),
        ("GET", "/screen/text") => Ok(Some(Request::ScreenText)),
        ("PUT", "/actions") => match serde_json::from_slice::<ActionBody>(body) {
            Ok(b) => Ok(Some(Request::Act(b.action))),
            Err(e) => Err(Response::error(
                400,
                &format!("{e}; send {{\"action\": \"pause\" | \"resume\" | \"power_off\" | \"reset\" | \"stop\"}}"),
            )),
        },
        ("PUT", path) if medium_disk(path).is_some() => {
            let disk = medium_disk(path).unwrap_or_default();
            match serde_json::from_slice::<kvmos_contract::control::MediumBody>(body) {
                Ok(b) => Ok(Some(Request::ChangeMedium { disk, medium: b.medium })),
                Err(e) => Err(Response::error(
                    400,
                    &format!("{e}; send {{\"medium\": null}} to eject, or {{\"medium\": \"NAME\"}} with the file's descriptor"),
                )),
            }
        }
        (_, path) if medium_disk(path).is_some() => {
            Err(Response::error(405, &format!("method not allowed: {RESOURCES}")))
        }
        (_, "/vm" | "/actions" | "/screenshot" | "/screen/text") => {
            Err(Response::error(405, &format!("method not allowed: {RESOURCES}")))
        }
        (_, path) => Err(Response::error(404, &format!("no such resource {path}: {RESOURCES}"))),
    }
}

/// The disk index of `/disks/{index}/medium`.
fn medium_disk(path: &str) -> Option<usize> {
    path.strip_prefix("/disks/")?.strip_suffix("/medium")?.parse().ok()
}

/// The `scale` of a screenshot's query (`scale=N`, 1 to 16; 1 without).
fn scale_param(query: &str) -> Result<u32, Response> {
    let Some(v) = query.split('&').find_map(|kv| kv.strip_prefix("scale=")) else { return Ok(1) };
    match v.parse::<u32>() {
        Ok(n @ 1..=16) => Ok(n),
        _ => Err(Response::error(400, &format!("scale={v}: give a whole number from 1 (full size) to 16"))),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        _ => "Internal Server Error",
    }
}

fn write_response(stream: &mut UnixStream, r: &Response) {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&r.body);
}

/// The requests handed to the event loop whose answers are not yet written.
#[derive(Default)]
struct Answering {
    count: Mutex<usize>,
    done: Condvar,
}

impl Answering {
    fn begin(&self) {
        *self.count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }

    fn end(&self) {
        let mut n = self.count.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        self.done.notify_all();
    }

    /// Waits until no answer is under way, at most `timeout`; whether none is.
    fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut n = self.count.lock().unwrap_or_else(|e| e.into_inner());
        while *n > 0 {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { return false };
            n = self.done.wait_timeout(n, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }
}

fn serve_connection(mut stream: UnixStream, to_vmm: &Sender<Pending>, wake: &EventFd, answering: &Answering) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut file = None;
    let request = loop {
        match parse(&buf) {
            Ok(Some(r)) => break r,
            Err(resp) => return write_response(&mut stream, &resp),
            Ok(None) => {}
        }
        // A descriptor may come with any of the request's bytes; the
        // first is kept, any other closed.
        match stream.recv_with_fd(&mut chunk) {
            Ok((0, _)) | Err(_) => return,
            Ok((n, f)) => {
                buf.extend_from_slice(&chunk[..n]);
                file = file.or(f);
            }
        }
        if buf.len() > MAX_REQUEST {
            return write_response(&mut stream, &Response::error(413, "request too large"));
        }
    };
    let (reply, answer) = channel();
    answering.begin();
    if to_vmm.send(Pending { request, file, reply }).is_err() {
        write_response(&mut stream, &Response::error(409, "the VM has stopped"));
        return answering.end();
    }
    let _ = wake.write(1);
    let resp = answer
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| Response::error(500, "the VMM did not answer in time"));
    write_response(&mut stream, &resp);
    answering.end();
}

/// The event loop's end of the control API.
pub struct Api {
    /// The requests, each with where its answer goes.
    pub requests: Receiver<Pending>,
    /// Signalled when a request is waiting.
    pub wake: EventFd,
    answering: Arc<Answering>,
}

impl Api {
    /// Lets the answers already given reach their clients before the VMM
    /// ends: the answer to `stop` would otherwise die with the process.
    /// Waits at most a second (a client that does not read its answer does
    /// not hold the VMM).
    pub fn finish(&self) {
        if !self.answering.wait_idle(Duration::from_secs(1)) {
            tracing::debug!("an API answer was still being written when the VMM ended");
        }
    }
}

/// Serves the API on `listener` until the process ends, on its own thread.
/// With `filters` (a jailed VMM) the thread runs under the API's seccomp
/// filter.
pub fn spawn(listener: UnixListener, filters: Option<Arc<crate::seccomp::Filters>>) -> std::io::Result<Api> {
    listener.set_nonblocking(false)?;
    let (tx, requests) = channel();
    let wake = EventFd::new(libc::EFD_NONBLOCK)?;
    let wake2 = wake.try_clone()?;
    let answering = Arc::new(Answering::default());
    let answering2 = Arc::clone(&answering);
    std::thread::Builder::new().name("api".into()).spawn(move || {
        if let Err(e) = crate::seccomp::confine(filters.as_deref(), crate::seccomp::Thread::Api) {
            tracing::error!("the control API is off: {e}");
            return;
        }
        for stream in listener.incoming().flatten() {
            serve_connection(stream, &tx, &wake2, &answering2);
        }
    })?;
    Ok(Api { requests, wake, answering })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_errors_say_what_to_send() {
        assert_eq!(parse(b"GET /vm HTTP/1.1\r\nHost: x\r\n\r\n"), Ok(Some(Request::GetVm)));
        assert_eq!(parse(b"GET /vm HTTP/1.1\r\nHo"), Ok(None), "incomplete");
        let put = b"PUT /actions HTTP/1.1\r\nContent-Length: 20\r\n\r\n{\"action\":\"pause\"}  ";
        assert_eq!(parse(put), Ok(Some(Request::Act(Action::Pause))));
        let partial = b"PUT /actions HTTP/1.1\r\nContent-Length: 30\r\n\r\n{\"action\"";
        assert_eq!(parse(partial), Ok(None), "waits for the body");
        let bad = parse(b"PUT /actions HTTP/1.1\r\nContent-Length: 18\r\n\r\n{\"action\":\"dance\"}").unwrap_err();
        assert_eq!(bad.status, 400);
        let text = String::from_utf8_lossy(&bad.body);
        assert!(text.contains("power_off"), "{text}");
        assert_eq!(parse(b"GET /screenshot HTTP/1.1\r\n\r\n"), Ok(Some(Request::Screenshot { scale: 1 })));
        assert_eq!(parse(b"GET /screenshot?scale=4 HTTP/1.1\r\n\r\n"), Ok(Some(Request::Screenshot { scale: 4 })));
        assert_eq!(parse(b"GET /screenshot?scale=0 HTTP/1.1\r\n\r\n").unwrap_err().status, 400);
        assert_eq!(parse(b"GET /screen/text HTTP/1.1\r\n\r\n"), Ok(Some(Request::ScreenText)));
        assert_eq!(parse(b"DELETE /vm HTTP/1.1\r\n\r\n").unwrap_err().status, 405);
        assert_eq!(parse(b"GET /nope HTTP/1.1\r\n\r\n").unwrap_err().status, 404);
        assert_eq!(parse(b"\x00\x01garbage\r\n\r\n").unwrap_err().status, 400);
        let eject = b"PUT /disks/2/medium HTTP/1.1\r\nContent-Length: 15\r\n\r\n{\"medium\":null}";
        assert_eq!(parse(eject), Ok(Some(Request::ChangeMedium { disk: 2, medium: None })));
        let insert = b"PUT /disks/0/medium HTTP/1.1\r\nContent-Length: 18\r\n\r\n{\"medium\":\"a.iso\"}";
        assert_eq!(parse(insert), Ok(Some(Request::ChangeMedium { disk: 0, medium: Some("a.iso".into()) })));
        assert_eq!(parse(b"GET /disks/0/medium HTTP/1.1\r\n\r\n").unwrap_err().status, 405);
        assert_eq!(parse(b"PUT /disks/x/medium HTTP/1.1\r\n\r\n").unwrap_err().status, 404);
        let bad = parse(b"PUT /disks/0/medium HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}").unwrap_err();
        assert!(String::from_utf8_lossy(&bad.body).contains("to eject"));
    }

    /// A Content-Length near usize::MAX once overflowed the header length
    /// plus it, and the API thread panicked on the slice.
    #[test]
    fn a_huge_content_length_is_refused_not_a_panic() {
        let req = format!("PUT /actions HTTP/1.1\r\nContent-Length: {}\r\n\r\n{{}}", usize::MAX);
        let err = parse(req.as_bytes()).unwrap_err();
        assert_eq!(err.status, 413);
        assert!(String::from_utf8_lossy(&err.body).contains("at most 65536 bytes"));
    }

    /// `stop` is answered before the VMM ends: the event loop's `finish`
    /// waits for the answer to be written, and the client reads a 204.
    #[test]
    fn the_answer_to_stop_reaches_the_client_before_the_vmm_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let api = spawn(UnixListener::bind(&path).unwrap(), None).unwrap();
        let client = std::thread::spawn(move || {
            kvmos_contract::control::Client::new(path).request("PUT", "/actions", Some(r#"{"action":"stop"}"#))
        });
        let pending = api.requests.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(pending.request, Request::Act(Action::Stop));
        pending.reply.send(Response::no_content()).unwrap();
        api.finish();
        assert!(api.answering.wait_idle(Duration::ZERO), "finish returned with an answer unwritten");
        assert_eq!(client.join().unwrap().unwrap().0, 204);
    }

    #[test]
    fn waiting_for_answers_ends_when_the_last_is_written_or_at_the_limit() {
        let answering = Arc::new(Answering::default());
        assert!(answering.wait_idle(Duration::ZERO));
        answering.begin();
        assert!(!answering.wait_idle(Duration::from_millis(20)), "one is under way");
        let other = Arc::clone(&answering);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            other.end();
        });
        assert!(answering.wait_idle(Duration::from_secs(10)));
        t.join().unwrap();
    }
}
