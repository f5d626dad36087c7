//! Running a built VM: one thread per vCPU, and this thread's event loop
//! (epoll) for the console (the terminal and socket clients) and the
//! stop signal. The VM ends when a device, a vCPU or the outside asks it to;
//! then every vCPU is stopped and joined, and the reason is returned.

use crate::api::{self, Action, Pending, Request, Response};
use crate::builder::Machine;
use crate::config::{Owner, SerialConfig, VmConfig};
use crate::exit::ExitReason;
use crate::seccomp::{confine, Filters, Thread};
use crate::vstate::vcpu::{install_kick_handler, kick_until};
use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};

const NO_DISPLAY: &str = "this VM has no display (direct kernel boot); boot it with firmware";
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

const TOKEN_EXIT: u64 = 1;
const TOKEN_STDIN: u64 = 2;
const TOKEN_CONSOLE_LISTENER: u64 = 3;
const TOKEN_API: u64 = 4;
const TOKEN_RTC: u64 = 5;
/// Virtio events: device `d`, queue `q` is `TOKEN_VIRTIO_BASE + d * 256 + q`,
/// the device's host file is queue slot 255 and its INTx resample slot 254.
const TOKEN_VIRTIO_BASE: u64 = 1 << 32;
const VIRTIO_IO_SLOT: u64 = 255;
const VIRTIO_RESAMPLE_SLOT: u64 = 254;
/// Console clients get tokens from here up.
const TOKEN_CLIENT_BASE: u64 = 1000;

/// Puts a terminal in raw mode for as long as it lives, so keystrokes
/// (ctrl-c included) go to the guest; restores it on drop.
struct RawTerminal {
    fd: RawFd,
    saved: libc::termios,
}

impl RawTerminal {
    fn new(fd: RawFd) -> Option<Self> {
        // SAFETY: isatty/tcgetattr/tcsetattr on a valid fd with a valid termios.
        unsafe {
            if libc::isatty(fd) != 1 {
                return None;
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut t) != 0 {
                return None;
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            t.c_oflag |= libc::OPOST | libc::ONLCR;
            libc::tcsetattr(fd, libc::TCSANOW, &t);
            Some(Self { fd, saved })
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `new` on the same fd.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved);
        }
    }
}

/// Binds a Unix socket readable and writable by the owner only.
/// With `owner`, the socket is that user's (the supervisor's, when the VMM
/// starts as another).
pub fn bind_private_socket(path: &Path, owner: Option<Owner>) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    if let Some(o) = owner {
        std::os::unix::fs::chown(path, Some(o.uid), Some(o.gid))?;
    }
    l.set_nonblocking(true)?;
    Ok(l)
}

/// The VM's Unix sockets, bound before the jail closes (the jail's root
/// holds nothing, so nothing can be bound after).
pub struct Sockets {
    console: Option<UnixListener>,
    api: Option<UnixListener>,
    vnc: Option<UnixListener>,
}

impl Sockets {
    /// The console's, the API's and the VNC server's socket paths that
    /// `config` names.
    fn paths(config: &VmConfig) -> [Option<&Path>; 3] {
        let console = match &config.serial {
            SerialConfig::Socket { path } => Some(path.as_path()),
            _ => None,
        };
        [console, config.api_socket.as_deref(), config.vnc_socket.as_deref()]
    }

    /// Binds them (the VNC one only for a VM with a display).
    pub fn bind(config: &VmConfig, machine: &Machine) -> std::io::Result<Self> {
        let [console, api, vnc] = Self::paths(config);
        let vnc = vnc.filter(|_| machine.display.is_some());
        let bind = |p: Option<&Path>| p.map(|p| bind_private_socket(p, config.socket_owner)).transpose();
        Ok(Self { console: bind(console)?, api: bind(api)?, vnc: bind(vnc)? })
    }

    /// Removes the socket files (by whoever can still see them: the VMM
    /// itself when it runs without a jail, the jail's parent otherwise).
    pub fn remove_files(config: &VmConfig) {
        for path in Self::paths(config).into_iter().flatten() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Runs the VM until it stops; returns why. With `filters` (a jailed VMM)
/// every thread runs under its seccomp filter.
pub fn run(machine: Machine, sockets: Sockets, config: &VmConfig, filters: Option<Filters>) -> ExitReason {
    let jailed = filters.is_some();
    let reason = match run_inner(machine, sockets, config, filters.map(Arc::new)) {
        Ok(r) => r,
        Err(e) => ExitReason::Internal(e.to_string()),
    };
    if !jailed {
        Sockets::remove_files(config);
    }
    reason
}

fn run_inner(
    mut machine: Machine,
    sockets: Sockets,
    config: &VmConfig,
    filters: Option<Arc<Filters>>,
) -> std::io::Result<ExitReason> {
    let serial = &config.serial;
    install_kick_handler().map_err(|e| std::io::Error::other(format!("cannot install the vCPU kick handler: {e}")))?;
    let epoll = Epoll::new()?;
    let add = |fd: RawFd, token: u64| epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token));
    add(machine.exit.evt.as_raw_fd(), TOKEN_EXIT)?;
    let _raw = match serial {
        SerialConfig::Stdio => match add(libc::STDIN_FILENO, TOKEN_STDIN) {
            Ok(()) => RawTerminal::new(libc::STDIN_FILENO),
            // A regular file or /dev/null cannot be polled: output only.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => None,
            Err(e) => return Err(e),
        },
        _ => None,
    };
    let listener = sockets.console;
    if let Some(l) = &listener {
        add(l.as_raw_fd(), TOKEN_CONSOLE_LISTENER)?;
    }

    let api = match sockets.api {
        Some(l) => {
            let api = api::spawn(l, filters.clone())?;
            add(api.wake.as_raw_fd(), TOKEN_API)?;
            Some(api)
        }
        None => None,
    };

    if let (Some(l), Some(display)) = (sockets.vnc, &machine.display) {
        let devices = crate::vnc::Devices {
            display: Arc::clone(display),
            i8042: Arc::clone(&machine.i8042),
            tablet: machine.tablet.clone(),
        };
        crate::vnc::spawn(l, devices, config.vm_id.clone(), filters.clone())?;
    }
    watch_virtio(&epoll, &machine)?;
    let device_threads = spawn_device_threads(&machine, filters.clone())?;
    if let Some(fd) = machine.rtc.as_ref().and_then(|r| lock(r).timer_fd()) {
        add(fd, TOKEN_RTC)?;
    }

    tracing::info!("starting the vCPUs {:.1} ms after VMM start", machine.started.elapsed().as_secs_f64() * 1000.0);
    let mut threads = Vec::new();
    for vcpu in machine.vcpus.drain(..) {
        let name = format!("vcpu{}", vcpu.index);
        let filters = filters.clone();
        threads.push(std::thread::Builder::new().name(name).spawn(move || {
            if let Err(e) = confine(filters.as_deref(), Thread::Vcpu) {
                vcpu.exit.request(ExitReason::Internal(e.to_string()));
                return;
            }
            vcpu.run_loop()
        })?);
    }
    confine(filters.as_deref(), Thread::EventLoop).map_err(std::io::Error::other)?;

    let mut clients: HashMap<u64, UnixStream> = HashMap::new();
    let mut next_token = TOKEN_CLIENT_BASE;
    let mut events = vec![EpollEvent::default(); 32];
    let mut buf = [0u8; 4096];
    while machine.exit.reason().is_none() {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_EXIT => {
                    let _ = machine.exit.evt.read();
                }
                TOKEN_RTC => {
                    if let Some(rtc) = &machine.rtc {
                        lock(rtc).tick();
                    }
                }
                TOKEN_API => {
                    if let Some(api) = &api {
                        let _ = api.wake.read();
                        while let Ok(Pending { request, file, reply }) = api.requests.try_recv() {
                            let _ = reply.send(handle_api(&machine, config, &threads, request, file));
                        }
                    }
                }
                TOKEN_STDIN => match std::io::stdin().lock().read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = epoll.ctl(ControlOperation::Delete, libc::STDIN_FILENO, EpollEvent::default());
                    }
                    Ok(n) => lock(&machine.serial).queue_input(&buf[..n]),
                },
                TOKEN_CONSOLE_LISTENER => {
                    if let Some(l) = &listener {
                        while let Ok((stream, _)) = l.accept() {
                            let token = next_token;
                            next_token += 1;
                            let attached = stream.try_clone().and_then(|out| machine.console.attach(out));
                            if let Err(e) = attached.and_then(|_| stream.set_nonblocking(true)) {
                                tracing::debug!("console client gone before attaching: {e}");
                                continue;
                            }
                            if add(stream.as_raw_fd(), token).is_ok() {
                                clients.insert(token, stream);
                            }
                        }
                    }
                }
                token if token >= TOKEN_VIRTIO_BASE => handle_virtio(&machine, token - TOKEN_VIRTIO_BASE),
                token => {
                    let done = match clients.get_mut(&token) {
                        Some(s) => match s.read(&mut buf) {
                            Ok(0) => true,
                            Ok(n) => {
                                lock(&machine.serial).queue_input(&buf[..n]);
                                false
                            }
                            Err(e) => !crate::console::would_block(&e),
                        },
                        None => false,
                    };
                    if done {
                        if let Some(s) = clients.remove(&token) {
                            let _ = epoll.ctl(ControlOperation::Delete, s.as_raw_fd(), EpollEvent::default());
                        }
                    }
                }
            }
        }
    }

    if let Some(api) = &api {
        api.finish();
    }
    machine.control.stop();
    kick_until(&threads, || threads.iter().all(|t| t.is_finished()));
    let mut left_behind = join_or_leave(threads, Duration::ZERO);
    crate::timeline::mark(machine.started, "vCPUs stopped");
    let (c, n) = (&machine.counters, std::sync::atomic::Ordering::Relaxed);
    tracing::debug!(
        "the vCPUs left the guest for this process {} times: port I/O {}, MMIO {}, {} of them without a device",
        c.exits.load(n),
        c.io_exits.load(n),
        c.mmio_exits.load(n),
        c.unhandled.load(n)
    );
    let busiest: Vec<String> = c.busiest(8).iter().map(|(place, count)| format!("{place} ×{count}")).collect();
    let missing = if left_behind > 0 { " (without the vCPUs left behind)" } else { "" };
    tracing::debug!("where they went most{missing}: {}", busiest.join(", "));
    let stopping = device_threads.into_iter().map(|(stop, thread)| {
        let _ = stop.write(1);
        thread
    });
    left_behind += join_or_leave(stopping.collect(), DEVICE_THREAD_GRACE);
    crate::timeline::mark(machine.started, "device threads stopped");
    let reason = machine.exit.reason().unwrap_or(ExitReason::Stopped);
    let started = machine.started;
    drop(machine);
    if left_behind == 0 {
        crate::timeline::mark(started, "VM torn down (KVM VM closed, memory unmapped)");
    } else {
        // The blocked threads hold the VM's file descriptors and memory
        // until the process ends.
        crate::timeline::mark(started, "VM released but for what the blocked threads hold (freed at exit)");
    }
    Ok(reason)
}

/// How long a device thread has to finish the request it is in when the
/// VM stops (a disk write in progress; under nested virtualisation a
/// flush was seen to take over 2 s).
const DEVICE_THREAD_GRACE: Duration = Duration::from_secs(5);

/// Joins the threads that end within `grace`; a thread still blocked
/// after it (a disk read on a hung file system, or a vCPU waiting for
/// that disk's lock) is left behind: it ends with the process, and the VM
/// stops all the same.
/// Returns how many were left.
fn join_or_leave(threads: Vec<std::thread::JoinHandle<()>>, grace: Duration) -> usize {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && !threads.iter().all(|t| t.is_finished()) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut left = 0;
    for t in threads {
        if t.is_finished() {
            let _ = t.join();
        } else {
            let name = t.thread().name().unwrap_or("a thread").to_string();
            tracing::warn!("{name} is still blocked (in a device's I/O); the VM stops without it");
            left += 1;
        }
    }
    left
}

/// A device thread's handle, and the event that ends it.
type DeviceThread = (EventFd, std::thread::JoinHandle<()>);

/// Starts an I/O thread for each virtio device that wants its own
/// ([`VirtioTransport::own_thread`]): it waits on the device's queue
/// notifications and serves them, so the device's slow requests hold up
/// neither the event loop nor the other devices.
fn spawn_device_threads(machine: &Machine, filters: Option<Arc<Filters>>) -> std::io::Result<Vec<DeviceThread>> {
    let mut threads = Vec::new();
    let mut numbers: HashMap<&'static str, usize> = HashMap::new();
    for slot in &machine.virtio {
        let Some(kind) = lock(&slot.transport).own_thread() else { continue };
        let number = numbers.entry(kind).or_default();
        let name = format!("{kind}{number}");
        *number += 1;
        let epoll = Epoll::new()?;
        for (q, evt) in slot.queue_evts.iter().enumerate() {
            epoll.ctl(ControlOperation::Add, evt.as_raw_fd(), EpollEvent::new(EventSet::IN, q as u64))?;
        }
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        epoll.ctl(ControlOperation::Add, stop.as_raw_fd(), EpollEvent::new(EventSet::IN, TOKEN_EXIT))?;
        let evts = slot.queue_evts.iter().map(EventFd::try_clone).collect::<std::io::Result<Vec<_>>>()?;
        let transport = Arc::clone(&slot.transport);
        let exit = Arc::clone(&machine.exit);
        let filters = filters.clone();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            if let Err(e) = confine(filters.as_deref(), Thread::DeviceIo) {
                exit.request(ExitReason::Internal(e.to_string()));
                return;
            }
            serve_queues(&epoll, &evts, &transport);
        })?;
        threads.push((stop, thread));
    }
    Ok(threads)
}

/// A device thread's loop: each queue notification (token = the queue's
/// index) goes to the device, until the stop event (token [`TOKEN_EXIT`]).
fn serve_queues(epoll: &Epoll, evts: &[EventFd], transport: &Mutex<dyn crate::devices::virtio::VirtioTransport>) {
    let mut events = vec![EpollEvent::default(); 8];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("a device thread cannot wait for its queues: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            let token = ev.data();
            if token == TOKEN_EXIT {
                return;
            }
            if let Some(evt) = evts.get(token as usize) {
                let _ = evt.read();
                lock(transport).notify(token as u16);
            }
        }
    }
}

/// Adds every queue's ioeventfd, and each device's host file
/// (edge-triggered: the device reads until it would block or the guest has
/// no buffers, and resumes when the guest adds some).
fn watch_virtio(epoll: &Epoll, machine: &Machine) -> std::io::Result<()> {
    for (d, slot) in machine.virtio.iter().enumerate() {
        let base = TOKEN_VIRTIO_BASE + d as u64 * 256;
        // A device with a thread of its own waits for its queues there.
        let queues = if lock(&slot.transport).own_thread().is_some() { &[][..] } else { &slot.queue_evts[..] };
        for (q, evt) in queues.iter().enumerate() {
            epoll.ctl(ControlOperation::Add, evt.as_raw_fd(), EpollEvent::new(EventSet::IN, base + q as u64))?;
        }
        if let Some(fd) = lock(&slot.transport).io_fd() {
            let events = EventSet::IN | EventSet::EDGE_TRIGGERED;
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, base + VIRTIO_IO_SLOT))?;
        }
        if let Some(intx) = &slot.intx {
            let token = base + VIRTIO_RESAMPLE_SLOT;
            epoll.ctl(ControlOperation::Add, intx.resample.as_raw_fd(), EpollEvent::new(EventSet::IN, token))?;
        }
    }
    Ok(())
}

fn handle_virtio(machine: &Machine, event: u64) {
    let (d, q) = ((event / 256) as usize, event % 256);
    let Some(slot) = machine.virtio.get(d) else { return };
    if q == VIRTIO_IO_SLOT {
        lock(&slot.transport).process_io();
    } else if q == VIRTIO_RESAMPLE_SLOT {
        // The guest ended the INTx interrupt; raise the line again while
        // the device still has something pending.
        if let Some(intx) = &slot.intx {
            let _ = intx.resample.read();
            if intx.interrupt.status.load(std::sync::atomic::Ordering::SeqCst) != 0 {
                let _ = intx.interrupt.irqfd.write(1);
            }
        }
    } else if let Some(evt) = slot.queue_evts.get(q as usize) {
        let _ = evt.read();
        lock(&slot.transport).notify(q as u16);
    }
}

/// Answers one API request on the event loop, which owns the VM.
fn handle_api<T>(
    machine: &Machine,
    config: &VmConfig,
    threads: &[std::thread::JoinHandle<T>],
    request: Request,
    file: Option<std::fs::File>,
) -> Response {
    let running = threads.iter().filter(|t| !t.is_finished()).count() as u64;
    match request {
        Request::GetVm => {
            use kvmos_contract::control::{Counters, RunState, VmInfo};
            use std::sync::atomic::Ordering::{Relaxed, SeqCst};
            let c = &machine.counters;
            let marker = machine.boot_marker_us.load(SeqCst);
            Response::json(
                200,
                &VmInfo {
                    id: config.vm_id.clone(),
                    state: if machine.control.is_paused() { RunState::Paused } else { RunState::Running },
                    uptime_ms: machine.started.elapsed().as_millis() as u64,
                    exit_reason: machine.exit.reason().map(|r| r.to_string()),
                    config: config.clone(),
                    counters: Counters {
                        vcpu_exits: c.exits.load(Relaxed),
                        io_exits: c.io_exits.load(Relaxed),
                        mmio_exits: c.mmio_exits.load(Relaxed),
                        unhandled_accesses: c.unhandled.load(Relaxed),
                        console_bytes: machine.console.total_bytes(),
                        console_clients: machine.console.clients() as u64,
                        boot_marker_ms: (marker > 0).then(|| marker as f64 / 1000.0),
                    },
                    cdroms: cdroms(machine, config),
                },
            )
        }
        Request::Screenshot { scale } => match &machine.display {
            Some(display) => {
                let frame = lock(display).render();
                Response::png(if scale > 1 { frame.shrunk(scale) } else { frame }.to_png())
            }
            None => Response::error(404, NO_DISPLAY),
        },
        Request::ScreenText => match &machine.display {
            Some(display) => {
                let vga = lock(display);
                match vga.text() {
                    Some(rows) => {
                        Response::json(200, &kvmos_contract::control::ScreenText { mode: "text".into(), rows })
                    }
                    None => Response::error(409, "the screen is in a graphics mode, not text; take a GET /screenshot"),
                }
            }
            None => Response::error(404, NO_DISPLAY),
        },
        Request::ChangeMedium { disk, medium } => change_medium(machine, config, disk, medium, file),
        Request::Act(Action::Pause) => {
            machine.control.pause();
            kick_until(threads, || machine.control.parked() >= running);
            Response::no_content()
        }
        Request::Act(Action::Resume) => {
            machine.control.resume();
            Response::no_content()
        }
        Request::Act(Action::PowerOff) => {
            if machine.control.is_paused() {
                return Response::error(409, "the VM is paused; resume it first");
            }
            let mut pm = lock(&machine.acpi_pm);
            if !pm.power_button_enabled() {
                return Response::error(
                    409,
                    "the guest has not enabled its ACPI power button (no ACPI driver yet?); use stop",
                );
            }
            pm.press_power_button();
            Response::no_content()
        }
        Request::Act(Action::Reset) => {
            machine.exit.request(ExitReason::Reboot);
            Response::no_content()
        }
        Request::Act(Action::Stop) => {
            machine.exit.request(ExitReason::Stopped);
            Response::no_content()
        }
        #[cfg(feature = "test-hooks")]
        Request::Act(Action::ForbiddenSyscall) => {
            // What an exploited device model might try first: open a file.
            // SAFETY: openat(2) on a NUL-terminated path; the fd, if any, is closed.
            let fd = unsafe { libc::openat(libc::AT_FDCWD, c"/".as_ptr(), libc::O_RDONLY) };
            if fd >= 0 {
                // SAFETY: closes the fd just opened.
                unsafe { libc::close(fd) };
            }
            Response::error(500, "the forbidden system call returned (no seccomp filter?)")
        }
    }
}

/// The CD-ROM drives as `GET /vm` shows them: (disk index, CD-ROM index).
fn cdrom_disks(config: &VmConfig) -> impl Iterator<Item = (usize, usize)> + '_ {
    let cdroms = config.disks.iter().enumerate().filter(|(_, d)| d.media == crate::config::DiskMedia::Cdrom);
    cdroms.enumerate().map(|(cdrom, (disk, _))| (disk, cdrom))
}

fn cdroms(machine: &Machine, config: &VmConfig) -> Vec<kvmos_contract::control::CdromInfo> {
    let Some(ide) = &machine.ide else { return Vec::new() };
    cdrom_disks(config)
        .filter_map(|(disk, cdrom)| {
            ide.with_cdrom(cdrom, |d| kvmos_contract::control::CdromInfo {
                disk,
                medium: d.medium().map(str::to_string),
                locked: d.locked(),
            })
        })
        .collect()
}

/// `PUT /disks/{disk}/medium`: the eject button, or a new medium from the
/// descriptor that came with the request.
fn change_medium(
    machine: &Machine,
    config: &VmConfig,
    disk: usize,
    medium: Option<String>,
    file: Option<std::fs::File>,
) -> Response {
    use crate::devices::ide::atapi::Medium;
    let cdrom = cdrom_disks(config).find(|&(d, _)| d == disk).map(|(_, c)| c);
    let (Some(ide), Some(cdrom)) = (&machine.ide, cdrom) else {
        return Response::error(404, &format!("disk {disk} is not a CD-ROM drive; GET /vm lists the VM's cdroms"));
    };
    let new = match (medium, file) {
        (None, _) => None,
        (Some(name), Some(file)) => match Medium::new(file, name) {
            Ok(m) => Some(m),
            Err(e) => return Response::error(400, &format!("cannot use the file passed: {e}")),
        },
        (Some(name), None) => {
            return Response::error(
                400,
                &format!(
                    "{name}: pass the medium's file descriptor with the request (SCM_RIGHTS); the jailed VMM opens no files"
                ),
            )
        }
    };
    ide.with_cdrom(cdrom, |d| match new {
        Some(m) => {
            tracing::info!("CD-ROM (disk {disk}): {} put in", m.name);
            d.insert(m);
        }
        None => {
            if let Some(old) = d.eject() {
                tracing::info!("CD-ROM (disk {disk}): {} ejected", old.name);
            }
        }
    });
    Response::no_content()
}

fn lock<T: ?Sized>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
