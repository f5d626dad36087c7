//! PID 1's life after the kernel hands over: boot, then the event loop.
//!
//! Signals are blocked in every thread and taken by one thread with
//! `sigwait`, which forwards them, like every other event (network changes,
//! the power button, debug commands), to the main loop over a channel. The
//! main loop is the only place that reaps children and starts services, so
//! the supervisor always sees its service's exit.

use crate::boot;
use crate::config::Config;
use crate::console;
use crate::debug;
use crate::net::NetStatus;
use crate::shutdown::{self, Action};
use crate::status::{Status, SETUP_CODE_FILE};
use crate::supervisor::Service;
use crate::watchdog::Watchdog;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// Everything that wakes the main loop.
#[derive(Debug)]
pub enum Event {
    Signal(Signal),
    Network(NetStatus),
    PowerButton,
    Debug(Result<debug::Command, String>),
}

/// The state PID 1 keeps.
pub struct Machine {
    pub config: Config,
    /// What the kernel command line set; it wins over saved settings.
    pub cmdline: crate::config::Overrides,
    pub status: Status,
    pub webadmin: Option<Service>,
    pub watchdog: Option<Watchdog>,
    pub events: Sender<Event>,
}

/// Boot and serve until shutdown; never returns.
pub fn run() -> ! {
    let signals = handled_signals();
    if let Err(e) = signals.thread_block() {
        console::warn(&format!("cannot block signals: {e}"));
    }
    // With ctrl-alt-del off, the kernel sends SIGINT to PID 1 instead of
    // rebooting on the spot, so data is synced first.
    if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
        console::warn(&format!("cannot route ctrl-alt-del to init: {e}"));
    }
    let (tx, rx) = channel();
    spawn_signal_thread(signals, tx.clone());
    let mut m = Machine {
        config: Config::default(),
        cmdline: Default::default(),
        status: Status { version: crate::VERSION.into(), panel_port: 443, ..Default::default() },
        webadmin: None,
        watchdog: None,
        events: tx,
    };
    boot::run(&mut m);
    event_loop(&mut m, rx)
}

fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGHUP] {
        set.add(s);
    }
    set
}

fn spawn_signal_thread(signals: SigSet, tx: Sender<Event>) {
    let r = std::thread::Builder::new().name("signals".into()).spawn(move || loop {
        match signals.wait() {
            Ok(sig) => {
                if tx.send(Event::Signal(sig)).is_err() {
                    return;
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    });
    if let Err(e) = r {
        console::warn(&format!("cannot start the signal thread: {e}; shutdown signals will not work"));
    }
}

/// The shutdown action a signal asks for (see the README).
pub fn action_for(sig: Signal) -> Option<Action> {
    match sig {
        Signal::SIGTERM | Signal::SIGUSR2 => Some(Action::PowerOff),
        Signal::SIGINT | Signal::SIGUSR1 => Some(Action::Reboot),
        _ => None,
    }
}

fn event_loop(m: &mut Machine, rx: Receiver<Event>) -> ! {
    loop {
        let now = Instant::now();
        // Wake for the supervisor's next start, and at least every second to
        // notice the panel's setup code.
        let wake = m.webadmin.as_ref().and_then(Service::next_deadline).unwrap_or(now + Duration::from_secs(1));
        let timeout = wake.saturating_duration_since(now).min(Duration::from_secs(1));
        match rx.recv_timeout(timeout) {
            Ok(Event::Signal(Signal::SIGCHLD)) => reap(m),
            Ok(Event::Signal(sig)) => match action_for(sig) {
                Some(action) => {
                    console::info(&format!("kvmos-init: received {sig}: {action}"));
                    shutdown::run(m, action)
                }
                None => console::debug(&format!("ignoring {sig}")),
            },
            Ok(Event::PowerButton) => {
                console::info("kvmos-init: power button pressed: power off");
                shutdown::run(m, Action::PowerOff)
            }
            Ok(Event::Network(net)) => on_network(m, net),
            Ok(Event::Debug(cmd)) => on_debug(m, cmd),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(Duration::from_secs(1)),
        }
        // Reap here too: SIGCHLD is not queued, so one signal can stand
        // for several exits.
        reap(m);
        if let Some(msg) = m.webadmin.as_mut().and_then(|w| w.tick(Instant::now())) {
            console::info(&format!("kvmos-init: {msg}"));
        }
        refresh_setup_code(m);
    }
}

/// Collects every exited child, and tells the supervisor.
pub fn reap(m: &mut Machine) {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(status) => {
                let msg = m.webadmin.as_mut().and_then(|w| w.on_exit(&status, Instant::now()));
                match msg {
                    Some(msg) => console::info(&format!("kvmos-init: {msg}")),
                    None => console::debug(&format!("reaped {status:?}")),
                }
            }
        }
    }
}

fn on_network(m: &mut Machine, net: NetStatus) {
    let address_changed = net.address != m.status.net.address;
    let first_mac = m.status.net.mac.is_none() && net.mac.is_some();
    let note_changed = net.note != m.status.net.note;
    if first_mac && m.config.hostname.is_none() {
        if let Some(mac) = net.mac {
            boot::set_hostname(m, &crate::net::default_hostname(&mac));
        }
    }
    m.status.net = net;
    write_status(m);
    if address_changed {
        if m.status.net.address.is_some() {
            console::info(&format!("kvmos-init: network up {:.2} s after kernel start", crate::clock::uptime_secs()));
        }
        console::info(&m.status.screen());
    } else if note_changed {
        console::info(&format!("kvmos-init: network: {}", m.status.net.note));
    }
    if address_changed && m.status.net.address.is_some() {
        let ntp = m.config.ntp.or_else(|| m.status.net.ntp.first().copied());
        if let Some(server) = ntp {
            // Off the main loop: the query may wait up to 2 s for an answer,
            // and PID 1 must keep reaping and taking signals meanwhile.
            std::thread::spawn(move || match crate::clock::sntp(server) {
                Ok(msg) => console::info(&format!("kvmos-init: {msg}")),
                Err(e) => console::warn(&e),
            });
        }
    }
}

pub fn write_status(m: &Machine) {
    if let Err(e) = m.status.write() {
        console::warn(&format!("cannot write {}: {e}", crate::status::STATUS_FILE));
    }
}

fn refresh_setup_code(m: &mut Machine) {
    let code = std::fs::read_to_string(SETUP_CODE_FILE).ok().map(|c| c.trim().to_string()).filter(|c| !c.is_empty());
    if code != m.status.setup_code {
        m.status.setup_code = code;
        console::info(&m.status.screen());
    }
}

fn on_debug(m: &mut Machine, cmd: Result<debug::Command, String>) {
    let say = |s: &str| console::info(&format!("kvmos-debug: {s}"));
    match cmd {
        Err(e) => say(&e),
        Ok(debug::Command::KillWebadmin) => match m.webadmin.as_ref().and_then(|w| w.pid) {
            Some(pid) => {
                let r = kill(pid, Signal::SIGKILL);
                say(&format!("SIGKILL to kvmos-webadmin (pid {pid}): {r:?}"));
            }
            None => say("kvmos-webadmin is not running"),
        },
        Ok(debug::Command::Write { path, text }) => match std::fs::write(&path, format!("{text}\n")) {
            Ok(()) => {
                nix::unistd::sync();
                say(&format!("wrote {path}"));
            }
            Err(e) => say(&format!("cannot write {path}: {e}")),
        },
        Ok(debug::Command::Cat { path }) => {
            match std::fs::read_to_string(&path) {
                Ok(text) => say(&format!("{path}: {}", text.trim_end())),
                Err(e) => say(&format!("cannot read {path}: {e}")),
            }
            say(&format!("end of {path}"));
        }
        Ok(debug::Command::Ls { path }) => {
            match debug::list(&path) {
                Ok(list) => say(&format!("{path}: {list}")),
                Err(e) => say(&format!("cannot list {path}: {e}")),
            }
            say(&format!("end of {path}"));
        }
        Ok(debug::Command::Ps) => {
            for (pid, comm, state) in debug::processes() {
                say(&format!("ps {pid} {state} {comm}"));
            }
            say("ps end");
        }
        Ok(debug::Command::Orphans(n)) => {
            for _ in 0..n {
                let r = crate::supervisor::child_command("/init").arg(debug::ORPHAN_PARENT).spawn();
                if let Err(e) = r {
                    say(&format!("cannot start an orphan maker: {e}"));
                }
            }
            say(&format!("started {n} orphan makers"));
        }
        Ok(debug::Command::Status) => console::info(&m.status.screen()),
        Ok(debug::Command::Reboot) => {
            say("sending SIGUSR1 to PID 1");
            let _ = kill(Pid::from_raw(1), Signal::SIGUSR1);
        }
    }
}
