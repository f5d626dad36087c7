//! The panel keeps only what it needs. It faces the network, so it runs as
//! a user of its own (`--user UID:GID`; kvmos-init starts it as 990:990)
//! with two capabilities: `CAP_NET_BIND_SERVICE` (ports 443 and 80) and
//! `CAP_NET_ADMIN` (the VMs' taps in the bridge). Its data directory and
//! run directories are its user's, mode 0700: nothing of it, its password
//! hash, sessions, API tokens or TLS key is readable by the VMMs' users.
//!
//! What needs root stays in a small process it forks before anything else
//! runs, the [launcher](Launcher), which answers on a socket pair and does
//! exactly four things, each checked against the panel's own files:
//! - start the VMM of a VM whose `vm.json` the panel wrote in its run
//!   directory (a VMM must start as root to build its jail);
//! - kill such a VMM when it no longer answers its control API;
//! - remove a VM's emptied cgroup;
//! - ask kvmos-init (PID 1) to reboot or power off the host.
//!
//! Without `--user` (a development host) the panel keeps its user and
//! capabilities, and still starts VMMs through the launcher, so there is
//! one way to start a VM.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// `CAP_NET_BIND_SERVICE` and `CAP_NET_ADMIN`, the capabilities the panel
/// keeps (linux/capability.h).
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;
pub const KEPT_CAPABILITIES: u64 = 1 << CAP_NET_BIND_SERVICE | 1 << CAP_NET_ADMIN;

/// A request to the launcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Start the VMM of `<run_dir>/<id>/vm.json`.
    Start { id: String },
    /// Kill the VMM of VM `id`, process `pid`.
    Kill { id: String, pid: i32 },
    /// Remove VM `id`'s cgroup (it is empty once its VMM has ended).
    RemoveCgroup { id: String },
    /// Reboot (or power off) the host through kvmos-init.
    Power { reboot: bool },
}

/// The launcher's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Reply {
    Started { pid: i32 },
    Done,
    Refused { reason: String },
}

/// What the launcher may touch.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The VMs' run directories.
    pub run_dir: PathBuf,
    /// The VMM binary.
    pub vmm_bin: PathBuf,
    /// Where the VMs' cgroups are.
    pub cgroup_slice: PathBuf,
    /// The panel's user, who must own what it asks about.
    pub panel_uid: u32,
}

/// The panel's end of the launcher.
pub struct Launcher {
    stream: Mutex<UnixStream>,
}

impl Launcher {
    /// Forks the launcher; returns the panel's end. Call it while the
    /// process has one thread (before the async runtime starts).
    pub fn fork(scope: Scope) -> Result<Self> {
        let (panel, launcher) = UnixStream::pair().context("cannot create the launcher's socket pair")?;
        // SAFETY: the process is single-threaded here (see above), so the
        // child may run arbitrary code; it never returns from `serve`.
        match unsafe { libc::fork() } {
            -1 => bail!("cannot fork the launcher: {}", std::io::Error::last_os_error()),
            0 => {
                drop(panel);
                // The launcher ends with the panel; its VMMs are reaped by
                // the kernel (they are left to kvmos-init when it ends).
                // SAFETY: prctl and signal with constant arguments.
                unsafe {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    libc::signal(libc::SIGCHLD, libc::SIG_IGN);
                }
                set_name(b"kvmos-launcher\0");
                serve(launcher, &scope);
                std::process::exit(0)
            }
            _ => Ok(Self { stream: Mutex::new(panel) }),
        }
    }

    /// A launcher on a thread of this process, with its privileges (for the
    /// router's tests, whose process has threads already).
    #[cfg(test)]
    pub fn in_thread(scope: Scope) -> Self {
        let (panel, launcher) = UnixStream::pair().expect("a socket pair");
        std::thread::spawn(move || serve(launcher, &scope));
        Self { stream: Mutex::new(panel) }
    }

    /// Sends `request`, returns the answer.
    pub fn ask(&self, request: &Request) -> Result<Reply> {
        let mut s = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        write_message(&mut s, request)?;
        read_message(&mut s)?.context("the launcher has gone")
    }
}

/// Names the process (as `ps` shows it).
fn set_name(name: &[u8]) {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

/// Messages are a 4-byte length and JSON.
fn write_message(s: &mut UnixStream, value: &impl Serialize) -> Result<()> {
    let body = serde_json::to_vec(value)?;
    s.write_all(&(body.len() as u32).to_le_bytes())?;
    s.write_all(&body)?;
    Ok(())
}

/// The next message, or `None` at the end of the stream.
fn read_message<T: for<'a> Deserialize<'a>>(s: &mut UnixStream) -> Result<Option<T>> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > 64 * 1024 {
        bail!("a message of {len} bytes on the launcher's socket");
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok(Some(serde_json::from_slice(&body)?))
}

/// The launcher's loop: one request, one answer, until the panel is gone.
fn serve(mut s: UnixStream, scope: &Scope) {
    loop {
        let reply = match read_message::<Request>(&mut s) {
            Ok(Some(request)) => handle(scope, &request),
            Ok(None) => return,
            Err(e) => Reply::Refused { reason: format!("unreadable request: {e}") },
        };
        if write_message(&mut s, &reply).is_err() {
            return;
        }
    }
}

fn refused(reason: impl Into<String>) -> Reply {
    Reply::Refused { reason: reason.into() }
}

/// A VM's ID as the panel makes them: 8 lowercase hex digits.
pub fn valid_id(id: &str) -> bool {
    id.len() == 8 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn handle(scope: &Scope, request: &Request) -> Reply {
    match request {
        Request::Start { id } | Request::Kill { id, .. } | Request::RemoveCgroup { id } if !valid_id(id) => {
            refused(format!("{id:?} is not a VM ID"))
        }
        Request::Start { id } => match start_vmm(scope, id) {
            Ok(pid) => Reply::Started { pid },
            Err(e) => refused(format!("{e:#}")),
        },
        Request::Kill { id, pid } => {
            if !is_vmm_of(scope, id, *pid) {
                return refused(format!("process {pid} is not the VMM of {id}"));
            }
            // SAFETY: signals a process checked above (never 0 or -1).
            match unsafe { libc::kill(*pid, libc::SIGKILL) } {
                0 => Reply::Done,
                _ => refused(std::io::Error::last_os_error().to_string()),
            }
        }
        Request::RemoveCgroup { id } => match std::fs::remove_dir(scope.cgroup_slice.join(id)) {
            Ok(()) => Reply::Done,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Reply::Done,
            Err(e) => refused(e.to_string()),
        },
        Request::Power { reboot } => {
            let sig = if *reboot { libc::SIGUSR1 } else { libc::SIGUSR2 };
            let init = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
            if init.trim() != "init" && !init.starts_with("kvmos-init") {
                return refused("PID 1 is not kvmos-init");
            }
            // SAFETY: signals PID 1, which handles these signals.
            match unsafe { libc::kill(1, sig) } {
                0 => Reply::Done,
                _ => refused(std::io::Error::last_os_error().to_string()),
            }
        }
    }
}

/// The configuration the panel wrote for VM `id`: a regular file of the
/// panel's user in the panel's run directory.
fn vm_config(scope: &Scope, id: &str) -> Result<PathBuf> {
    let dir = scope.run_dir.join(id);
    let config = dir.join("vm.json");
    for p in [&dir, &config] {
        let m = std::fs::symlink_metadata(p).with_context(|| format!("{}", p.display()))?;
        if m.uid() != scope.panel_uid || m.file_type().is_symlink() {
            bail!("{} does not belong to the panel", p.display());
        }
    }
    Ok(config)
}

/// Starts the VMM in a session of its own, its output in the run
/// directory's `vmm.log`.
fn start_vmm(scope: &Scope, id: &str) -> Result<i32> {
    let config = vm_config(scope, id)?;
    let dir = config.parent().context("the run directory")?;
    let log = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .open(dir.join("vmm.log"))
        .context("vmm.log")?;
    // The panel reads its VMMs' logs.
    std::os::unix::fs::fchown(&log, Some(scope.panel_uid), None).context("vmm.log")?;
    let err = log.try_clone()?;
    let mut cmd = std::process::Command::new(&scope.vmm_bin);
    cmd.arg("--config").arg(&config).stdin(std::process::Stdio::null()).stdout(log).stderr(err);
    // SAFETY: setsid and signal are async-signal-safe. The VMM gets its
    // own session (signals for the panel's process group never reach it)
    // and the default SIGCHLD, which its jail's waiting parent needs.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::signal(libc::SIGCHLD, libc::SIG_DFL);
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| format!("cannot run {}", scope.vmm_bin.display()))?;
    Ok(child.id() as i32)
}

/// Whether `pid` runs the VMM binary with VM `id`'s configuration.
fn is_vmm_of(scope: &Scope, id: &str, pid: i32) -> bool {
    pid > 1 && runs_config(pid, &scope.vmm_bin, &scope.run_dir.join(id).join("vm.json"))
}

/// Whether process `pid` is alive (not a zombie) and was started as
/// `vmm_bin --config config`.
pub fn runs_config(pid: i32, vmm_bin: &Path, config: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'));
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    !zombie
        && args.first().is_some_and(|a| *a == vmm_bin.as_os_str().as_encoded_bytes())
        && args.windows(2).any(|w| w[0] == b"--config" && w[1] == config.as_os_str().as_encoded_bytes())
}

/// The user the panel runs as, from `--user UID:GID`.
pub fn parse_user(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s.split_once(':').ok_or("give UID:GID, for example 990:990")?;
    let uid: u32 = u.parse().map_err(|_| format!("{u:?} is not a numeric user ID"))?;
    let gid: u32 = g.parse().map_err(|_| format!("{g:?} is not a numeric group ID"))?;
    if uid == 0 || gid == 0 {
        return Err("the panel's own user cannot be root (0)".into());
    }
    Ok((uid, gid))
}

/// As root, before the panel drops to `uid`: its directories (and
/// everything in the data directory, which an older panel may have written
/// as root) become its user's, mode 0700 for directories, and nothing in
/// them is readable by other users.
pub fn hand_over(dirs: &[&Path], data_dir: &Path, uid: u32, gid: u32) -> Result<()> {
    for d in dirs.iter().chain(std::iter::once(&data_dir)) {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        std::os::unix::fs::chown(d, Some(uid), Some(gid)).with_context(|| format!("cannot chown {}", d.display()))?;
        set_mode(d, 0o700)?;
    }
    own_tree(data_dir, uid, gid)
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", p.display()))
}

/// Everything under `dir` to `uid:gid`, with no access for others.
fn own_tree(dir: &Path, uid: u32, gid: u32) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let m = std::fs::symlink_metadata(&path)?;
        if m.file_type().is_symlink() {
            continue;
        }
        if m.uid() != uid || m.gid() != gid {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
                .with_context(|| format!("cannot chown {}", path.display()))?;
        }
        if m.mode() & 0o077 != 0 {
            set_mode(&path, m.mode() & 0o7700)?;
        }
        if m.is_dir() {
            own_tree(&path, uid, gid)?;
        }
    }
    Ok(())
}

/// Becomes `uid:gid` with only [`KEPT_CAPABILITIES`], for good: no other
/// capability can come back (bounding set, no_new_privs). Call it while
/// the process has one thread (capabilities are per thread).
pub fn drop_privileges(uid: u32, gid: u32) -> Result<()> {
    let check = |ret: libc::c_int, what: &str| -> Result<()> {
        if ret != 0 {
            bail!("{what}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    };
    let last_cap: u32 =
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40);
    // SAFETY: plain system calls with integer arguments and valid structs.
    unsafe {
        for cap in (0..=last_cap).filter(|c| KEPT_CAPABILITIES & (1 << c) == 0) {
            check(libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0), "PR_CAPBSET_DROP")?;
        }
        check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0), "PR_SET_KEEPCAPS")?;
        check(libc::setgroups(0, std::ptr::null()), "setgroups")?;
        check(libc::setresgid(gid, gid, gid), "setresgid")?;
        check(libc::setresuid(uid, uid, uid), "setresuid")?;
        set_capabilities(KEPT_CAPABILITIES)?;
        check(libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0), "PR_SET_KEEPCAPS")?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")?;
        // The panel's memory holds its secrets: no core dumps, no ptrace
        // by its own user.
        check(libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0), "PR_SET_DUMPABLE")?;
    }
    Ok(())
}

/// capset(2): `caps` permitted and effective, nothing inheritable.
fn set_capabilities(caps: u64) -> Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header { version: VERSION_3, pid: 0 };
    let low = Data { effective: caps as u32, permitted: caps as u32, inheritable: 0 };
    let high = Data { effective: (caps >> 32) as u32, permitted: (caps >> 32) as u32, inheritable: 0 };
    let data = [low, high];
    // SAFETY: capset with a version-3 header and two data structs.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        bail!("capset: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(dir: &Path) -> Scope {
        Scope {
            run_dir: dir.join("run"),
            vmm_bin: "/bin/sleep".into(),
            cgroup_slice: dir.join("cgroups"),
            panel_uid: 0,
        }
    }

    #[test]
    fn users_are_numbers_and_never_root() {
        assert_eq!(parse_user("990:991"), Ok((990, 991)));
        assert!(parse_user("990").unwrap_err().contains("UID:GID"));
        assert!(parse_user("webadmin:990").unwrap_err().contains("numeric"));
        assert!(parse_user("0:990").unwrap_err().contains("root"));
    }

    #[test]
    fn the_launcher_refuses_what_is_not_the_panels() {
        let dir = tempfile::tempdir().unwrap();
        let s = scope(dir.path());
        for id in ["../etc", "ABCDEF12", "1234567", ""] {
            let r = handle(&s, &Request::Start { id: id.into() });
            assert!(matches!(r, Reply::Refused { ref reason } if reason.contains("not a VM ID")), "{id}: {r:?}");
        }
        // No configuration written: nothing starts.
        let r = handle(&s, &Request::Start { id: "0123abcd".into() });
        assert!(matches!(r, Reply::Refused { .. }), "{r:?}");
        // A configuration of another user: refused.
        std::fs::create_dir_all(s.run_dir.join("0123abcd")).unwrap();
        std::fs::write(s.run_dir.join("0123abcd/vm.json"), "{}").unwrap();
        let other = Scope { panel_uid: 4242, ..s.clone() };
        let r = handle(&other, &Request::Start { id: "0123abcd".into() });
        assert!(matches!(r, Reply::Refused { ref reason } if reason.contains("does not belong")), "{r:?}");
        // This process is no VMM: it may not be killed through the launcher.
        let me = std::process::id() as i32;
        let r = handle(&s, &Request::Kill { id: "0123abcd".into(), pid: me });
        assert!(matches!(r, Reply::Refused { ref reason } if reason.contains("is not the VMM")), "{r:?}");
        assert!(matches!(handle(&s, &Request::Kill { id: "0123abcd".into(), pid: 1 }), Reply::Refused { .. }));
    }

    #[test]
    fn the_launcher_starts_and_kills_the_panels_vmm() {
        let dir = tempfile::tempdir().unwrap();
        // `sleep --config PATH` fails at once; a shell that sleeps stands in.
        let vmm = dir.path().join("fake-vmm");
        std::fs::write(&vmm, "#!/bin/sh\necho started \"$@\"\nexec sleep 30\n").unwrap();
        set_mode(&vmm, 0o755).unwrap();
        let s = Scope { vmm_bin: vmm, panel_uid: nix_uid(), ..scope(dir.path()) };
        let run = s.run_dir.join("0123abcd");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("vm.json"), "{}").unwrap();
        let Reply::Started { pid } = handle(&s, &Request::Start { id: "0123abcd".into() }) else { panic!() };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !std::fs::read_to_string(run.join("vmm.log")).unwrap_or_default().contains("--config") {
            assert!(std::time::Instant::now() < deadline, "the VMM did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // It runs in a session of its own.
        // SAFETY: getsid on a pid only reads.
        assert_eq!(unsafe { libc::getsid(pid) }, pid);
        // The shell exec'd sleep: its command line is no longer the VMM's,
        // so the launcher will not kill it.
        let r = handle(&s, &Request::Kill { id: "0123abcd".into(), pid });
        assert!(matches!(r, Reply::Refused { .. }), "{r:?}");
        // SAFETY: ends and reaps the child this test started.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }

    fn nix_uid() -> u32 {
        // SAFETY: getuid cannot fail.
        unsafe { libc::getuid() }
    }

    #[test]
    fn the_panel_talks_to_a_forked_launcher_and_it_ends_with_the_panels_end() {
        let dir = tempfile::tempdir().unwrap();
        let (panel, launcher) = UnixStream::pair().unwrap();
        let s = scope(dir.path());
        let t = std::thread::spawn(move || serve(launcher, &s));
        let l = Launcher { stream: Mutex::new(panel) };
        let r = l.ask(&Request::RemoveCgroup { id: "0123abcd".into() }).unwrap();
        assert_eq!(r, Reply::Done, "nothing to remove is fine");
        let r = l.ask(&Request::Start { id: "nope".into() }).unwrap();
        assert!(matches!(r, Reply::Refused { .. }));
        drop(l);
        t.join().unwrap();
    }
}
