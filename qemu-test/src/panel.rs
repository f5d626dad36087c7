//! A client for the panel as an admin's script would use it: HTTPS with
//! the session cookie and CSRF token, JSON in and out, and the serial
//! console and the screen over their WebSockets. The panel's certificate is self-signed, so
//! the client does not verify it (the tests check the panel, not PKI).

use anyhow::{anyhow, bail, Context, Result};
use kvmos_vmm::vnc::client::Viewer;
use kvmos_vmm::vnc::rfb;
use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Panel {
    pub port: u16,
    agent: ureq::Agent,
    cookie: Option<String>,
    csrf: Option<String>,
}

/// An HTTPS client for the panel's self-signed certificate.
pub(crate) fn agent(timeout: Duration) -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder().disable_verification(true).build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into()
}

impl Panel {
    pub fn new(port: u16) -> Self {
        Self { port, agent: agent(Duration::from_secs(60)), cookie: None, csrf: None }
    }

    /// A request to `path` with the session cookie and CSRF token.
    fn request(&self, method: &str, path: &str) -> ureq::http::request::Builder {
        let url = format!("https://127.0.0.1:{}{path}", self.port);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(c) = &self.cookie {
            req = req.header("Cookie", format!("kvmos_session={c}"));
        }
        if let Some(c) = &self.csrf {
            req = req.header("X-CSRF-Token", c);
        }
        req
    }

    /// One API call; returns the status and the JSON body (Null if none).
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let req = self.request(method, path);
        let text = body.map(|b| b.to_string()).unwrap_or_default();
        let req = req.header("Content-Type", "application/json").body(text)?;
        let mut resp = self.agent.run(req).with_context(|| format!("{method} {path}"))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let json =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Ok((status, json))
    }

    /// Uploads `data` as the image `name` of `kind` (disk, iso, kernel,
    /// initrd); expects a 2xx.
    pub fn upload(&self, name: &str, kind: &str, data: Vec<u8>) -> Result<Value> {
        self.upload_body(name, kind, data)
    }

    /// Uploads a file, streamed (for images of gigabytes).
    pub fn upload_file(&self, name: &str, kind: &str, path: &std::path::Path) -> Result<Value> {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        self.upload_body(name, kind, &file)
    }

    fn upload_body(&self, name: &str, kind: &str, data: impl ureq::AsSendBody) -> Result<Value> {
        let path = format!("/api/v1/images/{name}?kind={kind}");
        let req = self.request("PUT", &path).header("Content-Type", "application/octet-stream").body(data)?;
        // An upload of gigabytes into a TCG guest takes minutes, not the
        // minute the API calls get.
        let agent = agent(Duration::from_secs(1800));
        let started = Instant::now();
        let mut resp = agent.run(req).with_context(|| format!("PUT {path}"))?;
        eprintln!("PUT {path}: {:.1} s", started.elapsed().as_secs_f64());
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        if !(200..300).contains(&status) {
            bail!("PUT {path}: HTTP {status}: {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// Calls and expects a 2xx.
    pub fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let (status, json) = self.call(method, path, body)?;
        if !(200..300).contains(&status) {
            bail!("{method} {path}: HTTP {status}: {json}");
        }
        Ok(json)
    }

    fn start_session(&mut self, path: &str, body: Value) -> Result<()> {
        let url = format!("https://127.0.0.1:{}{path}", self.port);
        let req = ureq::http::Request::builder()
            .method("POST")
            .uri(&url)
            .header("Content-Type", "application/json")
            .body(body.to_string())?;
        let mut resp = self.agent.run(req)?;
        let status = resp.status().as_u16();
        let cookie = resp.headers().get("set-cookie").and_then(|v| v.to_str().ok()).map(String::from);
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        if status != 200 {
            bail!("POST {path}: HTTP {status}: {text}");
        }
        let cookie = cookie.ok_or_else(|| anyhow!("no session cookie"))?;
        self.cookie = Some(cookie.split(';').next().unwrap_or("").trim_start_matches("kvmos_session=").to_string());
        let v: Value = serde_json::from_str(&text)?;
        self.csrf = v["csrf"].as_str().map(String::from);
        Ok(())
    }

    /// First boot: the setup code and the new password (logs in).
    pub fn setup(&mut self, code: &str, password: &str) -> Result<()> {
        self.start_session("/api/v1/setup", serde_json::json!({"code": code, "password": password}))
    }

    pub fn login(&mut self, password: &str) -> Result<()> {
        self.start_session("/api/v1/login", serde_json::json!({"password": password}))
    }

    /// Polls a VM until its state is `state`.
    pub fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let vm = self.ok("GET", &format!("/api/v1/vms/{id}"), None)?;
            if vm["state"] == state {
                return Ok(vm);
            }
            if Instant::now() > deadline {
                bail!("VM {id} is {} after {timeout:?}, not {state}", vm["state"]);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Polls a task (as a 202 answer gave it) until it ends; the ended
    /// task, or an error with its log if it failed.
    pub fn wait_task(&self, task: &Value, timeout: Duration) -> Result<Value> {
        let id = task["id"].as_str().with_context(|| format!("no task in {task}"))?;
        let deadline = Instant::now() + timeout;
        loop {
            let t = self.ok("GET", &format!("/api/v1/tasks/{id}"), None)?;
            match t["state"].as_str() {
                Some("done") => return Ok(t),
                Some("failed") => bail!("task {id} ({}) failed: {}\n{}", t["kind"], t["error"], t["log"]),
                _ if Instant::now() > deadline => bail!("task {id} still runs after {timeout:?}: {t}"),
                _ => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    pub fn action(&self, id: &str, action: &str) -> Result<Value> {
        self.ok("POST", &format!("/api/v1/vms/{id}/actions"), Some(serde_json::json!({"action": action})))
    }

    /// Creates a BIOS VM (64 MiB) that boots the uploaded image `disk`,
    /// starts it, and returns its ID.
    pub fn start_bios_vm(&self, name: &str, disk: &str) -> Result<String> {
        let spec = serde_json::json!({"name": name, "vcpus": 1, "memory_mib": 64,
            "boot": {"type": "firmware", "firmware": "bios"}, "disks": [{"image": disk}]});
        let vm = self.ok("POST", "/api/v1/vms", Some(spec))?;
        let id = vm["id"].as_str().context("the new VM's id")?.to_string();
        self.action(&id, "start")?;
        Ok(id)
    }

    /// Uploads the CD-ROM tests' two ISOs (not hybrid), made in `dir`:
    /// `a.iso` (volume KVMOSTEST) and `b.iso` (SECONDISO), each booting
    /// the guest that reads its medium every 300 ms
    /// (`tiny_guest::cdrom_watch_image`).
    pub fn upload_cdrom_media(&self, dir: &std::path::Path) -> Result<()> {
        use kvmos_vmm::tiny_guest::{self, IsoBoot};
        std::fs::create_dir_all(dir)?;
        for (name, volume) in [("a.iso", "KVMOSTEST"), ("b.iso", "SECONDISO")] {
            let iso = dir.join(name);
            let boot = tiny_guest::cdrom_watch_image(&format!("booted {name}"));
            tiny_guest::el_torito_iso(&iso, volume, IsoBoot::Bios(&boot), &[])?;
            self.upload_file(name, "iso", &iso)?;
        }
        Ok(())
    }

    /// Opens a VM's serial console (the WebSocket the browser uses).
    pub fn console(&self, id: &str) -> Result<Console> {
        let ws = self.websocket(&format!("/api/v1/vms/{id}/console"))?;
        Ok(Console { ws, seen: String::new() })
    }

    /// Opens a VM's screen (the WebSocket noVNC uses) and shakes hands
    /// with its VNC server, asking for ZRLE, DesktopSize and QEMU's
    /// extended key event.
    pub fn screen(&self, id: &str) -> Result<Viewer<Screen>> {
        let ws = self.websocket(&format!("/api/v1/vms/{id}/screen"))?;
        let encodings = [rfb::ENCODING_ZRLE, rfb::ENCODING_DESKTOP_SIZE, rfb::ENCODING_QEMU_EXTENDED_KEY];
        Viewer::over(Screen { ws, unread: Vec::new() }, &encodings)
            .map_err(|e| anyhow!("VNC over the screen WebSocket: {e}"))
    }

    /// A WebSocket to the panel at `path`, logged in, whose reads time out
    /// after 200 ms.
    /// A TLS connection to the panel (any certificate accepted), with no
    /// request sent yet.
    pub fn tls(&self) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
        self.tls_over(TcpStream::connect(("127.0.0.1", self.port))?)
    }

    /// [`Panel::tls`] over a TCP connection made already (from another
    /// source address, say: see [`connect_from`]).
    pub fn tls_over(&self, tcp: TcpStream) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate))
            .with_no_client_auth();
        let conn = rustls::ClientConnection::new(Arc::new(config), "localhost".try_into()?)?;
        Ok(rustls::StreamOwned::new(conn, tcp))
    }

    fn websocket(&self, path: &str) -> Result<PanelSocket> {
        let tls = self.tls()?;
        let mut request = tungstenite::client::IntoClientRequest::into_client_request(format!(
            "wss://127.0.0.1:{}{path}",
            self.port
        ))?;
        if let Some(c) = &self.cookie {
            request.headers_mut().insert("Cookie", format!("kvmos_session={c}").parse()?);
        }
        let (ws, _) = tungstenite::client::client(request, tls).map_err(|e| anyhow!("WebSocket {path}: {e}"))?;
        ws.get_ref().sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(ws)
    }
}

type PanelSocket = tungstenite::WebSocket<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

/// The screen WebSocket as the byte stream RFB runs over: binary
/// messages in both directions. A read waits up to 20 s for data.
pub struct Screen {
    ws: PanelSocket,
    unread: Vec<u8>,
}

impl Read for Screen {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.unread.is_empty() {
            match self.ws.read() {
                Ok(tungstenite::Message::Binary(b)) => self.unread.extend_from_slice(&b),
                Ok(tungstenite::Message::Close(_)) => return Ok(0),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if Instant::now() > deadline {
                        return Err(e);
                    }
                }
                Err(e) => return Err(std::io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.unread.len());
        buf[..n].copy_from_slice(&self.unread[..n]);
        self.unread.drain(..n);
        Ok(n)
    }
}

impl Write for Screen {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.ws.send(tungstenite::Message::Binary(buf.to_vec().into())).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.ws.flush().map_err(std::io::Error::other)
    }
}

pub struct Console {
    ws: PanelSocket,
    /// Everything received so far.
    pub seen: String,
}

impl Console {
    pub fn send(&mut self, text: &str) -> Result<()> {
        self.ws.send(tungstenite::Message::Binary(text.as_bytes().to_vec().into()))?;
        Ok(())
    }

    /// Reads until `needle` appears after `from` (a position in `seen`);
    /// returns the position after it.
    pub fn expect_after(&mut self, from: usize, needle: &str, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.seen.get(from..).and_then(|s| s.find(needle)) {
                return Ok(from + i + needle.len());
            }
            if Instant::now() > deadline {
                bail!("no {needle:?} on the console within {timeout:?}; got:\n{}", self.seen);
            }
            match self.ws.read() {
                Ok(tungstenite::Message::Binary(b)) => self.seen.push_str(&String::from_utf8_lossy(&b)),
                Ok(tungstenite::Message::Text(t)) => self.seen.push_str(&t),
                Ok(tungstenite::Message::Close(_)) => bail!("the console closed; got:\n{}", self.seen),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => bail!("console: {e}; got:\n{}", self.seen),
            }
        }
    }

    pub fn expect(&mut self, needle: &str, timeout: Duration) -> Result<usize> {
        self.expect_after(0, needle, timeout)
    }
}

/// A TCP connection to `127.0.0.1:port` from `source`, any loopback
/// address (127.0.0.0/8): a panel test's way to be many clients.
pub fn connect_from(source: std::net::Ipv4Addr, port: u16) -> Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let sin = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a new socket, then bind and connect with valid sockaddr_in
    // structs; on failure the socket is closed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let local = sin(source, 0);
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
            bail!("bind {source}: {}", std::io::Error::last_os_error());
        }
        let remote = sin(std::net::Ipv4Addr::LOCALHOST, port);
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0 {
            bail!("connect from {source}: {}", std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// Accepts the panel's self-signed certificate.
#[derive(Debug)]
struct AnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &signature_algorithms())
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &signature_algorithms())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        signature_algorithms().supported_schemes()
    }
}

fn signature_algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// kvmos-webadmin running on this host (not in QEMU), the way a developer
/// runs it: its own data, run and guests directories under
/// `target/qemu-test/<name>/`, the tiny guest bundled (Linux guests cannot
/// run on this host's KVM), and no bridge. Dropping it kills the panel and
/// any VMM it left running.
pub struct HostPanel {
    pub dir: std::path::PathBuf,
    pub port: u16,
    child: Option<std::process::Child>,
    /// `--vmm`: the VMM the panel runs, when not the one beside it.
    vmm: Option<std::path::PathBuf>,
}

impl HostPanel {
    pub fn start(name: &str) -> Result<Self> {
        Self::start_with_vmm(name, None)
    }

    /// A panel that runs `vmm` (`--vmm`) instead of the kvmos-vmm beside it.
    pub fn start_with_vmm(name: &str, vmm: Option<&std::path::Path>) -> Result<Self> {
        let dir = crate::work_dir(name)?;
        kvmos_vmm::tiny_guest::bundle(&dir.join("guests"))?;
        let port = kvmos_image_builder::qemu::free_port()?;
        let mut p = Self { dir, port, child: None, vmm: vmm.map(|v| v.to_path_buf()) };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> Result<()> {
        let bins = crate::binaries()?;
        let d = &self.dir;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(d.join("webadmin.log"))?;
        let mut cmd = std::process::Command::new(&bins.webadmin);
        if let Some(vmm) = &self.vmm {
            cmd.arg("--vmm").arg(vmm);
        }
        let child = cmd
            .arg("--data-dir")
            .arg(d.join("data"))
            .args(["--listen", &format!("127.0.0.1:{}", self.port), "--redirect-from", "none"])
            .arg("--status-file")
            .arg(d.join("no-init-status.json"))
            .arg("--setup-code-file")
            .arg(d.join("setup-code"))
            .arg("--run-dir")
            .arg(d.join("run"))
            .arg("--guests-dir")
            .arg(d.join("guests"))
            .args(["--bridge", "kvmos-no-bridge"])
            // Panels of tests that run at once never share a VM user.
            .args(["--vm-uids", &vm_uid_base().to_string()])
            // As on kvmos: its own user, a launcher keeping root.
            .arg("--user")
            .arg(format!("{}:{}", kvmos_contract::panel::UID, kvmos_contract::panel::GID))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start kvmos-webadmin")?;
        self.child = Some(child);
        crate::wait_https(self.port, "/api/v1/health", Duration::from_secs(60))?;
        Ok(())
    }

    pub fn setup_code(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.dir.join("setup-code"))?.trim().to_string())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("webadmin.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// What the VM's serial console has shown (the VMM replays its recent
    /// output to every client that attaches).
    pub fn serial(&self, id: &str) -> Result<String> {
        let mut s = std::os::unix::net::UnixStream::connect(self.dir.join("run").join(id).join("console.sock"))?;
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n @ 1..) = s.read(&mut buf) {
            out.extend_from_slice(&buf[..n]);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// The pids of the VMMs in the run directory.
    pub fn vmm_pids(&self) -> Vec<i32> {
        std::fs::read_dir(self.dir.join("run"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("pid")).ok()?.trim().parse().ok())
            .collect()
    }

    /// SIGKILL, as a crash would; the VMMs keep running.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Starts the panel again on the same directories and port.
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.spawn()
    }

    /// SIGTERM, as kvmos-init sends at shutdown; waits for the panel to exit.
    pub fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let mut c = self.child.take().ok_or_else(|| anyhow!("the panel is not running"))?;
        // SAFETY: signals our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                bail!("the panel did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for HostPanel {
    fn drop(&mut self) {
        let _ = self.kill();
        for pid in self.vmm_pids() {
            // SAFETY: ends a VMM this panel started for the test.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// A range of jail users for each panel this test process starts.
fn vm_uid_base() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    300_000 + (std::process::id() % 1000) * 10_000 + (n % 100) * 100
}
