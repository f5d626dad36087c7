//! The VMM's control API: HTTP/1.1 with JSON on the Unix socket named by
//! `api_socket` (mode 0600), one request per connection.
//! `vmm/openapi.yaml` documents it; these are its shapes and a client.
//!
//! - `GET /vm` → [`VmInfo`];
//! - `PUT /actions` with an [`ActionBody`] → 204;
//! - `GET /screenshot[?scale=N]` → a PNG (VMs with a display);
//! - `GET /screen/text` → [`ScreenText`] (a text-mode screen);
//! - `PUT /disks/{index}/medium` with a [`MediumBody`] → 204: eject the
//!   medium of the CD-ROM drive that is disk `index`, or put one in. The
//!   VMM is jailed and opens no files, so the new medium comes as a file
//!   descriptor passed with the request (SCM_RIGHTS): [`Client::change_medium`].
//!
//! Errors come as [`ErrorBody`] with a 4xx or 5xx status.

use crate::vm::VmConfig;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// What `PUT /actions` asks of the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Pause,
    Resume,
    /// Press the ACPI power button: the guest shuts down cleanly.
    PowerOff,
    /// Hard reset: the VMM exits with the reboot code, and its supervisor
    /// starts the VM again.
    Reset,
    /// Hard stop, like pulling the plug.
    Stop,
    /// Test builds only (feature `test-hooks`): the VMM's event loop makes
    /// a system call that its seccomp filter forbids.
    #[cfg(feature = "test-hooks")]
    ForbiddenSyscall,
}

/// The body of `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    pub action: Action,
}

/// Whether the vCPUs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Paused,
}

/// `GET /vm`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct VmInfo {
    pub id: String,
    pub state: RunState,
    pub uptime_ms: u64,
    /// Set once the VM is stopping.
    pub exit_reason: Option<String>,
    pub config: VmConfig,
    pub counters: Counters,
    /// The CD-ROM drives, in the order of the disks they are.
    #[serde(default)]
    pub cdroms: Vec<CdromInfo>,
}

/// A CD-ROM drive now.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct CdromInfo {
    /// Its index in the configuration's `disks`.
    pub disk: usize,
    /// The medium's name (the path it was opened from, or the name given
    /// when it was put in); none when the drive is empty.
    pub medium: Option<String>,
    /// Whether the guest has locked the tray (the host's eject still works).
    pub locked: bool,
}

/// The body of `PUT /disks/{index}/medium`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MediumBody {
    /// None ejects; a name puts in the file passed with the request.
    /// Required (`null` to eject), so an empty body ejects nothing.
    #[serde(deserialize_with = "Option::deserialize")]
    pub medium: Option<String>,
}

/// What the VMM has counted since it started.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
pub struct Counters {
    pub vcpu_exits: u64,
    pub io_exits: u64,
    pub mmio_exits: u64,
    /// Port and MMIO accesses with no device behind them.
    pub unhandled_accesses: u64,
    pub console_bytes: u64,
    pub console_clients: u64,
    /// When the guest wrote the boot marker (port 0x440), in ms since the
    /// VMM started.
    pub boot_marker_ms: Option<f64>,
}

/// `GET /screen/text`: the characters of a text-mode screen, row by row.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ScreenText {
    /// Always `text` (a graphics mode answers 409).
    pub mode: String,
    pub rows: Vec<String>,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Why a call did not get what it asked for.
#[derive(Debug)]
pub enum ControlError {
    /// The socket does not answer (the VMM is gone, or not started yet).
    Unreachable(std::io::Error),
    /// The VMM answered with an error status.
    Refused { status: u16, message: String },
    /// The VMM answered with something this client does not understand.
    Garbled(String),
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::Unreachable(e) => write!(f, "cannot reach the VMM: {e}"),
            ControlError::Refused { status, message } => write!(f, "the VMM answered {status}: {message}"),
            ControlError::Garbled(e) => write!(f, "the VMM's answer makes no sense: {e}"),
        }
    }
}

impl std::error::Error for ControlError {}

/// A client of one VMM's control API.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

/// How long a call waits for its answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self { socket: socket.into() }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// One request; the status and the body as they came.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, Vec<u8>)> {
        self.request_with_file(method, path, body, None)
    }

    /// One request, with `file`'s descriptor passed along with its first
    /// bytes (SCM_RIGHTS).
    fn request_with_file(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        file: Option<&File>,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let mut s = UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        let body = body.unwrap_or("");
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        let mut sent = 0;
        if let Some(f) = file {
            sent = s.send_with_fd(request.as_bytes(), f.as_raw_fd()).map_err(std::io::Error::from)?;
        }
        s.write_all(&request.as_bytes()[sent..])?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4).unwrap_or(out.len());
        let head = String::from_utf8_lossy(&out[..head_end]);
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        Ok((status, out[head_end..].to_vec()))
    }

    /// A request whose success is a 2xx; the body of that answer.
    fn expect(&self, method: &str, path: &str, body: Option<&str>) -> Result<Vec<u8>, ControlError> {
        let (status, answer) = self.request(method, path, body).map_err(ControlError::Unreachable)?;
        Self::check(status, answer)
    }

    /// A 2xx answer's body, or the error it carries.
    fn check(status: u16, answer: Vec<u8>) -> Result<Vec<u8>, ControlError> {
        if (200..300).contains(&status) {
            return Ok(answer);
        }
        let message = serde_json::from_slice::<ErrorBody>(&answer)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&answer).into_owned());
        Err(ControlError::Refused { status, message })
    }

    fn expect_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ControlError> {
        let body = self.expect("GET", path, None)?;
        serde_json::from_slice(&body).map_err(|e| ControlError::Garbled(e.to_string()))
    }

    /// `GET /vm`.
    pub fn vm(&self) -> Result<VmInfo, ControlError> {
        self.expect_json("/vm")
    }

    /// `PUT /actions`.
    pub fn act(&self, action: Action) -> Result<(), ControlError> {
        let body = serde_json::to_string(&ActionBody { action }).map_err(|e| ControlError::Garbled(e.to_string()))?;
        self.expect("PUT", "/actions", Some(&body)).map(drop)
    }

    /// `GET /screenshot?scale=N`: a PNG.
    pub fn screenshot(&self, scale: u32) -> Result<Vec<u8>, ControlError> {
        self.expect("GET", &format!("/screenshot?scale={scale}"), None)
    }

    /// `GET /screen/text`.
    pub fn screen_text(&self) -> Result<ScreenText, ControlError> {
        self.expect_json("/screen/text")
    }

    /// `PUT /disks/{disk}/medium`: ejects the CD-ROM drive's medium (None),
    /// or puts `file` in under `name`. Open the file read-only: the guest
    /// never writes a CD.
    pub fn change_medium(&self, disk: usize, medium: Option<(&str, &File)>) -> Result<(), ControlError> {
        let body = MediumBody { medium: medium.map(|(name, _)| name.to_string()) };
        let body = serde_json::to_string(&body).map_err(|e| ControlError::Garbled(e.to_string()))?;
        let path = format!("/disks/{disk}/medium");
        let (status, answer) = self
            .request_with_file("PUT", &path, Some(&body), medium.map(|(_, f)| f))
            .map_err(ControlError::Unreachable)?;
        Self::check(status, answer).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A one-shot server that answers `answer` and hands back the request.
    fn serve(answer: &'static str) -> (tempfile::TempDir, Client, std::thread::JoinHandle<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            s.write_all(answer.as_bytes()).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (dir, Client::new(path), t)
    }

    #[test]
    fn an_action_goes_as_the_vmm_parses_it_and_errors_carry_the_message() {
        let (_d, c, t) = serve("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
        c.act(Action::PowerOff).unwrap();
        let sent = t.join().unwrap();
        assert!(sent.starts_with("PUT /actions HTTP/1.1\r\n"), "{sent}");
        assert!(sent.ends_with("\r\n\r\n{\"action\":\"power_off\"}"), "{sent}");

        let (_d, c, _t) =
            serve("HTTP/1.1 409 Conflict\r\nContent-Length: 32\r\n\r\n{\"error\":\"the VM is paused; no\"}");
        match c.act(Action::PowerOff) {
            Err(ControlError::Refused { status: 409, message }) => assert_eq!(message, "the VM is paused; no"),
            other => panic!("{other:?}"),
        }
        let gone = Client::new("/nonexistent/api.sock").vm().unwrap_err();
        assert!(gone.to_string().starts_with("cannot reach the VMM"), "{gone}");
    }
}
