//! Running VMs. Each is a detached `kvmos-vmm` process (its own session, so
//! it outlives a panel restart) with a runtime directory
//! `<run_dir>/<id>/`: `vm.json` (its configuration), `control.sock` (the
//! VMM's API), `console.sock`, `pid`, `vmm.log` and `exit.json` (the VMM's
//! exit code and reason).
//!
//! Starting a VM is a sequence of named steps ([`Supervisor::start`]); a
//! watcher task per VM waits for the process to end (through a pidfd, which
//! works for VMMs this panel started and for ones it re-attached to after a
//! restart), records the run, removes the tap, and starts the VM again if
//! the guest rebooted.

use crate::app::{ApiError, ApiResult, State};
use crate::images::ImageKind;
use crate::privsep::{Launcher, Reply, Request};
use crate::store::{lock, now_unix};
use crate::vms::{Boot, Firmware, Run, VmRecord};
use kvmos_contract::control::{Action, Client, ControlError, RunState};
use kvmos_contract::exit::ExitRecord;
use kvmos_contract::vm::{DiskConfig, DiskMedia, FirmwareConfig, JailConfig, NetConfig, Owner, SerialConfig, VmConfig};
use serde::Serialize;
use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

/// How long a VMM may take to open its control socket: it builds the VM
/// and its jail first (well under a second on a server; seconds when the
/// host itself is emulated, as in the tests).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a VM gets to power off before it is stopped hard, when the
/// panel itself stops.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(45);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    Stopped,
    /// The VMM is being started.
    Starting,
    Running,
    Paused,
    /// A graceful shutdown was asked for and the guest has not finished.
    Stopping,
}

struct Handle {
    pid: i32,
    /// The jail's user and group: this VM's alone while it runs.
    uid: u32,
    state: VmState,
    /// Set by shutdown, force-off and delete: an exit is not followed by a
    /// restart even if the guest was rebooting.
    stopping: bool,
}

pub struct Supervisor {
    run_dir: PathBuf,
    vmm_bin: PathBuf,
    bridge: String,
    /// The first jail user (`--vm-uids`).
    uid_base: u32,
    /// Where VMs' cgroups go: [`CGROUP_SLICE`] on a host with cgroup v2,
    /// none otherwise (read once, at start).
    cgroup_slice: Option<PathBuf>,
    running: Mutex<HashMap<String, Handle>>,
    /// What needs root: starting and killing VMMs, removing their cgroups.
    launcher: Arc<Launcher>,
}

/// VMMs run as users from here up, one per running VM (see
/// [`Supervisor::free_uid`]); no other program on kvmos uses them.
pub const VM_UID_BASE: u32 = 100_000;
/// The most VMs that can run at once.
const MAX_RUNNING: u32 = 60_000;
/// The cgroup v2 slice that holds each VMM's leaf.
pub const CGROUP_SLICE: &str = "/sys/fs/cgroup/kvmos.slice";

/// Whether this host has cgroup v2 with the memory controller at
/// /sys/fs/cgroup (kvmos does; a development host may have cgroup v1).
fn cgroup_v2() -> bool {
    std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
}

/// A VM's CPU and memory use, from its VMM's cgroup.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Usage {
    /// CPU time used since the VMM started, in µs (`cpu.stat`).
    pub cpu_usec: u64,
    /// Memory in use now, guest memory included (`memory.current`).
    pub memory_bytes: u64,
    /// The cgroup's limit (`memory.max`).
    pub memory_max_bytes: Option<u64>,
}

/// This process's user and group.
fn own_uid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

fn own_gid() -> u32 {
    // SAFETY: getegid cannot fail.
    unsafe { libc::getegid() }
}

/// A VMM's refusal as the panel's API error: its conflicts stay 409,
/// anything else is a bad gateway.
fn control_error(e: ControlError) -> ApiError {
    match e {
        ControlError::Refused { status: 409, message } => ApiError::new(409, message),
        ControlError::Refused { message, .. } => ApiError::new(502, message),
        ControlError::Unreachable(e) => ApiError::new(502, format!("the VMM does not answer: {e}")),
        garbled => ApiError::new(502, garbled.to_string()),
    }
}

/// cloud-init's seed volume, in a VM's run directory.
const SEED: &str = "seed.img";

/// The tap of a VM's NIC: at most 15 bytes, stable per VM.
pub fn tap_name(id: &str) -> String {
    format!("kv{id}n0")
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The real uid of the process whose `/proc/PID` directory is `dir`.
fn process_uid(dir: &Path) -> Option<u32> {
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:")?.split_whitespace().next()?.parse().ok())
}

/// The real uids of every process on the host.
fn process_uids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|e| process_uid(&e.path()))
        .collect()
}

/// The lowest of the [`MAX_RUNNING`] jail users from `base` that is not
/// `taken`: each VM gets a user no other VM or process has.
fn lowest_free_uid(base: u32, taken: &std::collections::HashSet<u32>) -> Option<u32> {
    (base..base.saturating_add(MAX_RUNNING)).find(|u| !taken.contains(u))
}

/// The user of the jailed child of `pid`, the process the panel started.
fn jailed_uid(pid: i32) -> Option<u32> {
    process_uid(Path::new(&format!("/proc/{}", kvmos_contract::process::jailed_child(pid as u32)?)))
}

impl Supervisor {
    pub fn new(run_dir: &Path, vmm_bin: &Path, bridge: &str, uid_base: u32, launcher: Arc<Launcher>) -> Self {
        Self {
            launcher,
            uid_base,
            cgroup_slice: cgroup_v2().then(|| PathBuf::from(CGROUP_SLICE)),
            run_dir: run_dir.to_path_buf(),
            vmm_bin: vmm_bin.to_path_buf(),
            bridge: bridge.to_string(),
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `pid` is a live VMM of ours running the configuration in
    /// `dir`.
    fn is_our_vmm(&self, pid: i32, dir: &Path) -> bool {
        crate::privsep::runs_config(pid, &self.vmm_bin, &dir.join("vm.json"))
    }

    /// The lowest jail user that no running VM and no other process has.
    fn free_uid(&self, running: &HashMap<String, Handle>) -> ApiResult<u32> {
        let mut taken: std::collections::HashSet<u32> = running.values().map(|h| h.uid).collect();
        taken.extend(process_uids());
        lowest_free_uid(self.uid_base, &taken)
            .ok_or_else(|| ApiError::conflict(format!("{MAX_RUNNING} VMs run already; stop one first")))
    }

    /// A VM's cgroup leaf, on a host with cgroup v2.
    fn cgroup(&self, id: &str) -> Option<PathBuf> {
        self.cgroup_slice.as_ref().map(|slice| slice.join(id))
    }

    /// A running VM's CPU and memory use, where its VMM has a cgroup.
    pub fn usage(&self, id: &str) -> Option<Usage> {
        if !lock(&self.running).contains_key(id) {
            return None;
        }
        let leaf = self.cgroup(id)?;
        let read = |f: &str| std::fs::read_to_string(leaf.join(f)).ok();
        let cpu_usec = read("cpu.stat")?.lines().find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())?;
        let memory_bytes = read("memory.current")?.trim().parse().ok()?;
        let memory_max_bytes = read("memory.max").and_then(|m| m.trim().parse().ok());
        Some(Usage { cpu_usec, memory_bytes, memory_max_bytes })
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.run_dir.join(id)
    }

    pub fn console_socket(&self, id: &str) -> PathBuf {
        self.dir(id).join("console.sock")
    }

    /// The VNC server of a firmware-booted VM.
    pub fn vnc_socket(&self, id: &str) -> PathBuf {
        self.dir(id).join("vnc.sock")
    }

    /// The VM's screen as a PNG, from its VMM.
    pub fn screenshot(&self, id: &str) -> ApiResult<Vec<u8>> {
        self.screen_call(id, |c| c.screenshot(1))
    }

    /// The VM's text-mode screen, from its VMM.
    pub fn screen_text(&self, id: &str) -> ApiResult<crate::api::ScreenText> {
        let text = self.screen_call(id, Client::screen_text)?;
        Ok(crate::api::ScreenText { mode: text.mode, rows: text.rows })
    }

    /// A call for the VMM's screen, with its errors as the panel's.
    fn screen_call<T>(&self, id: &str, call: impl FnOnce(&Client) -> Result<T, ControlError>) -> ApiResult<T> {
        if !lock(&self.running).contains_key(id) {
            return Err(ApiError::conflict("the VM is not running; start it to see its screen"));
        }
        call(&self.control(id)).map_err(|e| match e {
            ControlError::Refused { status: 404, .. } => {
                ApiError::conflict("this VM boots a kernel directly and has no screen")
            }
            ControlError::Refused { status: 409, .. } => {
                ApiError::conflict("the screen is in a graphics mode, not text; take a screenshot")
            }
            other => ApiError::internal(other.to_string()),
        })
    }

    /// The client of a VM's control API.
    fn control(&self, id: &str) -> Client {
        Client::new(self.control_socket(id))
    }

    fn control_socket(&self, id: &str) -> PathBuf {
        self.dir(id).join("control.sock")
    }

    pub fn state(&self, id: &str) -> VmState {
        lock(&self.running).get(id).map(|h| h.state).unwrap_or(VmState::Stopped)
    }

    pub fn running_ids(&self) -> Vec<String> {
        lock(&self.running).keys().cloned().collect()
    }

    /// Re-attaches to the VMMs still running from an earlier panel process.
    pub fn reattach(&self, state: &State) {
        let Ok(entries) = std::fs::read_dir(&self.run_dir) else { return };
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let dir = e.path();
            let pid = std::fs::read_to_string(dir.join("pid")).ok().and_then(|p| p.trim().parse::<i32>().ok());
            match pid {
                Some(pid) if state.vms.get(&id).is_ok() && self.is_our_vmm(pid, &dir) => {
                    let paused = self.control(&id).vm().is_ok_and(|vm| vm.state == RunState::Paused);
                    let vm_state = if paused { VmState::Paused } else { VmState::Running };
                    let uid = jailed_uid(pid).unwrap_or(0);
                    lock(&self.running).insert(id.clone(), Handle { pid, uid, state: vm_state, stopping: false });
                    tracing::info!(vm = %id, pid, "re-attached to a running VMM");
                    self.watch(state.clone(), id, pid);
                }
                _ => {
                    // A VM that ended while the panel was away: record it.
                    if let Some(exit) = crate::store::load_json::<ExitRecord>(&dir.join("exit.json")).ok().flatten() {
                        let _ = state.vms.modify(&id, |r| close_run(r, Some(exit.code), Some(exit.reason.clone())));
                    }
                    let _ = kvmos_tap::delete_persistent(&tap_name(&id));
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
    }

    /// Starts a VM: every step either succeeds or leaves nothing behind. The
    /// VM is claimed first, under the lock, so two requests at once cannot
    /// both start it.
    pub fn start(&self, state: &State, id: &str) -> ApiResult<()> {
        let record = state.vms.get(id)?;
        {
            let mut running = lock(&self.running);
            if running.contains_key(id) {
                return Err(ApiError::conflict(format!("{} is already running", record.spec.name)));
            }
            let uid = self.free_uid(&running)?;
            running.insert(id.to_string(), Handle { pid: 0, uid, state: VmState::Starting, stopping: false });
        }
        self.run(state, &record)
    }

    /// Launches the VMM of a VM whose handle is claimed (state Starting),
    /// records the run and watches it. A stop asked for while it started
    /// (a force off during a guest's reboot) is carried out once it is up.
    fn run(&self, state: &State, record: &VmRecord) -> ApiResult<()> {
        let id = record.id.as_str();
        let pid = match self.launch(state, record) {
            Ok(pid) => pid,
            Err(e) => {
                lock(&self.running).remove(id);
                return Err(e);
            }
        };
        let stop_now = match lock(&self.running).get_mut(id) {
            Some(h) => {
                h.pid = pid;
                if !h.stopping {
                    h.state = VmState::Running;
                }
                h.stopping
            }
            None => true,
        };
        state
            .vms
            .modify(id, |r| r.runs.push(Run { started: now_unix(), ended: None, exit_code: None, reason: None }))?;
        self.watch(state.clone(), id.to_string(), pid);
        if stop_now {
            tracing::info!(vm = %id, "stopped while it started: stopping it now");
            if let Err(e) = self.force_off(id) {
                tracing::warn!(vm = %id, "cannot stop it: {}", e.message);
            }
        }
        Ok(())
    }

    /// The steps of a start: no VMM of ours already running from an earlier
    /// panel, the configuration, the runtime directory, the cloud-init
    /// seed, the tap, the VMM process, and its control socket answering.
    fn launch(&self, state: &State, record: &VmRecord) -> ApiResult<i32> {
        let id = record.id.as_str();
        let dir = self.dir(id);
        if let Some(pid) = std::fs::read_to_string(dir.join("pid")).ok().and_then(|p| p.trim().parse::<i32>().ok()) {
            if self.is_our_vmm(pid, &dir) {
                return Err(ApiError::conflict(format!("{} is already running (pid {pid})", record.spec.name)));
            }
        }
        let uid = lock(&self.running).get(id).map(|h| h.uid).unwrap_or(0);
        let config = self.vmm_config(state, record, uid)?;
        self.prepare_run_dir(&dir)?;
        self.write_seed(&dir, record)?;
        if record.spec.network {
            self.create_tap(id, uid)?;
        }
        let pid = match self.spawn_vmm(id, &dir, &config) {
            Ok(pid) => pid,
            Err(e) => {
                self.clean_up(id);
                return Err(e);
            }
        };
        if let Err(e) = self.wait_until_up(id, pid) {
            self.clean_up(id);
            return Err(e);
        }
        Ok(pid)
    }

    /// cloud-init's NoCloud seed in the run directory, made again from the
    /// VM's settings at every start.
    fn write_seed(&self, dir: &Path, r: &VmRecord) -> ApiResult<()> {
        let Some(c) = &r.spec.cloud_init else { return Ok(()) };
        let seed = c.seed(&r.id, &r.spec.name, r.spec.network.then_some(r.mac.as_str()));
        seed.write_image(&dir.join(SEED))
            .map_err(|e| ApiError::internal(format!("cannot write the cloud-init seed: {e}")))
    }

    /// The kvmos-vmm configuration for a VM definition.
    fn vmm_config(&self, state: &State, r: &VmRecord, uid: u32) -> ApiResult<VmConfig> {
        let dir = self.dir(&r.id);
        let direct_cmdline = || "console=ttyS0 reboot=k panic=1".to_string();
        let (kernel, firmware, initrd, default_cmdline) = match &r.spec.boot {
            Boot::Guest { guest } => {
                let g = state
                    .images
                    .guest(guest)
                    .ok_or_else(|| ApiError::bad("boot.guest", "the bundled guest is gone"))?;
                let (k, i) = state.images.guest_files(&g);
                (Some(k), None, Some(i), g.cmdline)
            }
            Boot::Kernel { kernel, initrd } => {
                (Some(state.images.path(kernel)), None, initrd.as_ref().map(|i| state.images.path(i)), direct_cmdline())
            }
            Boot::Firmware { firmware: Firmware::Bios } => {
                (None, Some(FirmwareConfig::Bios { path: None }), None, direct_cmdline())
            }
            Boot::Firmware { firmware: Firmware::Uefi } => {
                let vars = state.vms.ensure_uefi_vars(&r.id)?;
                (None, Some(FirmwareConfig::Uefi { code: None, vars }), None, direct_cmdline())
            }
        };
        let mut disks: Vec<DiskConfig> = r
            .spec
            .disks
            .iter()
            .map(|d| {
                // A CD/DVD image goes in a CD-ROM drive, and is never written.
                let iso = state.images.get(&d.image).is_some_and(|i| i.kind == ImageKind::Iso);
                DiskConfig {
                    path: state.images.path(&d.image),
                    read_only: d.read_only || iso,
                    id: Some(d.image.chars().take(20).collect()),
                    media: match (iso, d.bus) {
                        (true, _) => DiskMedia::Cdrom,
                        (false, crate::vms::DiskBus::Ide) => DiskMedia::Ide,
                        (false, crate::vms::DiskBus::Virtio) => DiskMedia::Disk,
                    },
                }
            })
            .collect();
        if r.spec.network && !Path::new("/sys/class/net").join(&self.bridge).exists() {
            return Err(ApiError::field(
                409,
                "network",
                format!("network: this host has no bridge {}; turn the VM's network off or run kvmos", self.bridge),
            ));
        }
        let nets =
            if r.spec.network { vec![NetConfig { tap: tap_name(&r.id), mac: Some(r.mac.clone()) }] } else { vec![] };
        // cloud-init's seed ([`Self::write_seed`]), as the last disk.
        if r.spec.cloud_init.is_some() {
            let path = dir.join(SEED);
            disks.push(DiskConfig { path, read_only: true, id: Some("cidata".into()), media: DiskMedia::Disk });
        }
        let firmware_boot = firmware.is_some();
        Ok(VmConfig {
            vm_id: r.spec.name.clone(),
            kernel,
            firmware,
            boot_order: r.spec.boot_order.clone(),
            firmware_log: None,
            initrd,
            cmdline: r.spec.cmdline.clone().unwrap_or(default_cmdline),
            memory_mib: r.spec.memory_mib,
            vcpus: r.spec.vcpus,
            disks,
            nets,
            serial: SerialConfig::Socket { path: dir.join("console.sock") },
            api_socket: Some(dir.join("control.sock")),
            // Firmware-booted VMs have a screen, served over VNC.
            vnc_socket: firmware_boot.then(|| self.vnc_socket(&r.id)),
            rng: true,
            exit_file: Some(dir.join("exit.json")),
            // Every VMM is jailed: its own user and group, and its cgroup.
            jail: Some(JailConfig { uid, gid: uid, cgroup: self.cgroup(&r.id), cpu_weight: r.spec.cpu_weight }),
            // Its sockets are the panel's, whose user the VMM does not start as.
            socket_owner: Some(Owner { uid: own_uid(), gid: own_gid() }),
        })
    }

    fn prepare_run_dir(&self, dir: &Path) -> ApiResult<()> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)
            .map_err(|e| ApiError::internal(format!("cannot create {}: {e}", dir.display())))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(ApiError::internal)
    }

    /// A persistent tap in the bridge, up, before the VMM opens it; it
    /// belongs to the VM's own user (`uid`, also its group).
    fn create_tap(&self, id: &str, uid: u32) -> ApiResult<()> {
        let tap = tap_name(id);
        let result = kvmos_tap::create_persistent(&tap, (uid, uid))
            .and_then(|_| kvmos_tap::add_to_bridge(&self.bridge, &tap))
            .and_then(|_| kvmos_tap::set_link_up(&tap));
        result.map_err(|e| {
            let _ = kvmos_tap::delete_persistent(&tap);
            ApiError::internal(format!("cannot create the tap {tap} in {}: {e}", self.bridge))
        })
    }

    /// Writes the configuration and has the launcher start the VMM (as
    /// root: it builds its jail, then runs as the VM's own user).
    fn spawn_vmm(&self, id: &str, dir: &Path, config: &VmConfig) -> ApiResult<i32> {
        crate::store::save_json(&dir.join("vm.json"), config).map_err(ApiError::from)?;
        let pid = match self.launcher.ask(&Request::Start { id: id.to_string() }) {
            Ok(Reply::Started { pid }) => pid,
            Ok(Reply::Refused { reason }) => return Err(ApiError::internal(format!("cannot start the VMM: {reason}"))),
            Ok(other) => return Err(ApiError::internal(format!("the launcher answered {other:?}"))),
            Err(e) => return Err(ApiError::internal(format!("cannot reach the launcher: {e:#}"))),
        };
        crate::store::write_atomic(&dir.join("pid"), format!("{pid}\n").as_bytes(), 0o600).map_err(ApiError::from)?;
        Ok(pid)
    }

    /// Waits for the control socket; if the VMM ends first, its own error
    /// (e.g. a locked disk) becomes the answer.
    fn wait_until_up(&self, id: &str, pid: i32) -> ApiResult<()> {
        let sock = self.control_socket(id);
        let dir = self.dir(id);
        let log_tail = || {
            let log = std::fs::read_to_string(dir.join("vmm.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().rev().take(5).collect();
            lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
        };
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        while std::time::Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
                return Ok(());
            }
            if !is_alive(pid) {
                let exit = ExitRecord::read(&dir.join("exit.json")).ok().flatten();
                let msg = exit.map(|e| e.reason).unwrap_or_else(|| {
                    let log = std::fs::read_to_string(dir.join("vmm.log")).unwrap_or_default();
                    log.lines().last().unwrap_or("the VMM exited at once").to_string()
                });
                return Err(ApiError::conflict(format!("the VM could not start: {msg}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Do not leave it behind: it holds the VM's disks and its cgroup.
        let killed = self.launcher.ask(&Request::Kill { id: id.to_string(), pid });
        tracing::error!(vm = %id, ?killed, "the VMM did not open its control socket; its log: {}", log_tail());
        Err(ApiError::internal(format!("the VMM did not open its control socket within {} s", START_TIMEOUT.as_secs())))
    }

    fn clean_up(&self, id: &str) {
        let _ = kvmos_tap::delete_persistent(&tap_name(id));
        let _ = std::fs::remove_dir_all(self.dir(id));
        if self.cgroup(id).is_some() {
            // Empty once the VMM has ended; the cgroup tree is root's.
            if let Ok(Reply::Refused { reason }) = self.launcher.ask(&Request::RemoveCgroup { id: id.to_string() }) {
                tracing::warn!(vm = %id, "cannot remove the VM's cgroup: {reason}");
            }
        }
    }

    /// Waits (on a pidfd) for the VMM to end, then records the run.
    fn watch(&self, state: State, id: String, pid: i32) {
        tokio::spawn(async move {
            // SAFETY: the AsyncFd owns the pidfd for as long as it is registered.
            let watched = pidfd_open(pid).and_then(|fd| {
                unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| std::io::Error::other(format!("{e:?}")))
            });
            match watched {
                Ok(fd) => {
                    let _ = fd.readable().await;
                }
                Err(e) => {
                    tracing::warn!(vm = %id, "cannot watch pid {pid} ({e}); polling");
                    while std::path::Path::new(&format!("/proc/{pid}")).exists() && is_alive(pid) {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            let st = state.clone();
            let _ = tokio::task::spawn_blocking(move || st.supervisor.on_exit(&st, &id)).await;
        });
    }

    fn on_exit(&self, state: &State, id: &str) {
        let dir = self.dir(id);
        let exit = ExitRecord::read(&dir.join("exit.json")).ok().flatten();
        let stopping = lock(&self.running).get(id).is_some_and(|h| h.stopping);
        let (code, reason) = match exit {
            Some(e) => (Some(e.code), e.reason),
            // The VMM's waiting parent writes a record for every end but
            // its own killing, which only a forced stop does.
            None if stopping => (None, "forced off: the VMM did not answer and was killed".into()),
            None => (None, "the VMM ended without a reason".into()),
        };
        tracing::info!(vm = %id, ?code, %reason, "VM ended");
        // The run is closed and its files cleaned up while the VM still has
        // its handle: whoever sees it stopped sees how it ended, and a new
        // start cannot meet the old run's files.
        let _ = state.vms.modify(id, |r| close_run(r, code, Some(reason.clone())));
        self.clean_up(id);
        // A guest's reboot keeps the VM's handle (state Starting) until the
        // VMM runs again, so a stop in between is seen, never refused.
        let restart = {
            let mut running = lock(&self.running);
            let restart =
                code == Some(kvmos_contract::exit::EXIT_REBOOT) && running.get(id).is_some_and(|h| !h.stopping);
            match running.get_mut(id) {
                Some(h) if restart => {
                    (h.pid, h.state) = (0, VmState::Starting);
                }
                _ => drop(running.remove(id)),
            }
            restart
        };
        if restart {
            let started = state.vms.get(id).and_then(|record| self.run(state, &record));
            if let Err(e) = started {
                lock(&self.running).remove(id);
                tracing::error!(vm = %id, "cannot restart after the guest rebooted: {}", e.message);
            }
        }
    }

    fn action(&self, id: &str, action: Action) -> ApiResult<()> {
        if !lock(&self.running).contains_key(id) {
            return Err(ApiError::conflict("the VM is not running"));
        }
        self.control(id).act(action).map_err(control_error)
    }

    /// Ejects the medium of the CD-ROM drive that is disk `disk` (None),
    /// or puts in `medium`: its name and the file, opened read-only here
    /// and passed to the jailed VMM, which opens no files.
    pub fn change_medium(&self, id: &str, disk: usize, medium: Option<(&str, &std::fs::File)>) -> ApiResult<()> {
        if !lock(&self.running).contains_key(id) {
            return Err(ApiError::conflict("the VM is not running"));
        }
        self.control(id).change_medium(disk, medium).map_err(control_error)
    }

    fn set_state(&self, id: &str, f: impl FnOnce(&mut Handle)) {
        if let Some(h) = lock(&self.running).get_mut(id) {
            f(h);
        }
    }

    pub fn pause(&self, id: &str) -> ApiResult<()> {
        self.action(id, Action::Pause)?;
        self.set_state(id, |h| h.state = VmState::Paused);
        Ok(())
    }

    pub fn resume(&self, id: &str) -> ApiResult<()> {
        self.action(id, Action::Resume)?;
        self.set_state(id, |h| h.state = VmState::Running);
        Ok(())
    }

    /// Restarts the guest: the VMM ends with the reboot code and the
    /// watcher starts it again.
    pub fn reboot(&self, id: &str) -> ApiResult<()> {
        self.action(id, Action::Reset)
    }

    /// Stops the VM now, like pulling the plug.
    pub fn force_off(&self, id: &str) -> ApiResult<()> {
        self.set_state(id, |h| {
            h.stopping = true;
            h.state = VmState::Stopping;
        });
        if let Err(e) = self.action(id, Action::Stop) {
            // The VMM does not answer: end the process.
            let pid = lock(&self.running).get(id).map(|h| h.pid).filter(|&p| p > 0);
            if let Some(pid) = pid {
                tracing::warn!(vm = %id, "the VMM does not stop ({}); killing it", e.message);
                match self.launcher.ask(&Request::Kill { id: id.to_string(), pid }) {
                    Ok(Reply::Done) => {}
                    // The launcher kills only a live VMM of this VM: this one
                    // has ended already (a guest's reboot, say); the stop
                    // flag keeps it from being started again.
                    Ok(Reply::Refused { reason }) => {
                        tracing::info!(vm = %id, "no VMM to kill: {reason}");
                    }
                    Ok(other) => return Err(ApiError::internal(format!("cannot kill the VMM: {other:?}"))),
                    Err(e) => return Err(ApiError::internal(format!("cannot reach the launcher: {e:#}"))),
                }
            }
        }
        Ok(())
    }

    /// Presses the ACPI power button; after `timeout` a VM still running is
    /// stopped hard.
    pub fn shutdown(&self, state: &State, id: &str, timeout: Duration) -> ApiResult<()> {
        let pid =
            lock(&self.running).get(id).map(|h| h.pid).ok_or_else(|| ApiError::conflict("the VM is not running"))?;
        self.action(id, Action::PowerOff)?;
        self.set_state(id, |h| {
            h.stopping = true;
            h.state = VmState::Stopping;
        });
        let st = state.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let same = lock(&st.supervisor.running).get(&id).is_some_and(|h| h.pid == pid);
            if same {
                tracing::warn!(vm = %id, "the guest did not power off within {} s; stopping it", timeout.as_secs());
                let _ = st.supervisor.force_off(&id);
            }
        });
        Ok(())
    }

    /// At panel shutdown: every VM powers off gracefully within the
    /// deadline, then the rest are stopped hard.
    pub async fn stop_all(&self, state: &State, deadline: Duration) {
        let ids = self.running_ids();
        if ids.is_empty() {
            return;
        }
        tracing::info!("powering off {} VM(s)", ids.len());
        for id in &ids {
            if self.shutdown(state, id, deadline).is_err() {
                let _ = self.force_off(id);
            }
        }
        let until = tokio::time::Instant::now() + deadline + Duration::from_secs(10);
        while !lock(&self.running).is_empty() && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Whether process `pid` exists (a VMM is root's: EPERM says it does).
fn is_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let signalled = unsafe { libc::kill(pid, 0) } == 0;
    signalled || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Closes the open run of a VM with its exit.
fn close_run(r: &mut VmRecord, code: Option<i32>, reason: Option<String>) {
    if let Some(run) = r.runs.last_mut().filter(|run| run.ended.is_none()) {
        run.ended = Some(now_unix());
        run.exit_code = code;
        run.reason = reason;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_vm_gets_a_jail_user_no_vm_or_process_has() {
        let base = VM_UID_BASE;
        assert_eq!(lowest_free_uid(base, &HashSet::new()), Some(base));
        // Two VMs run, and some other process took the user after them.
        let taken: HashSet<u32> = [base, base + 1, base + 2].into();
        assert_eq!(lowest_free_uid(base, &taken), Some(base + 3));
        // A VM that stopped freed its user: it is handed out again.
        let taken: HashSet<u32> = [base, base + 2].into();
        assert_eq!(lowest_free_uid(base, &taken), Some(base + 1));
        let all: HashSet<u32> = (base..base + MAX_RUNNING).collect();
        assert_eq!(lowest_free_uid(base, &all), None, "no user left: the start is refused");
    }
}
