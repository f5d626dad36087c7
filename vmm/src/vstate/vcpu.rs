//! vCPUs: one thread each, running KVM_RUN and dispatching the exits to the
//! I/O and MMIO buses. A guest touching an address with no device behind it
//! reads all-ones and is logged (rate-limited); a triple fault or a KVM
//! error stops this VM with the reason. Nothing a guest does panics the VMM.

use crate::devices::bus::Bus;
use crate::exit::{ExitReason, ExitSignal};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Pause and stop requests for all vCPUs of a VM.
#[derive(Default)]
pub struct VcpuControl {
    paused: Mutex<bool>,
    cv: Condvar,
    stop: AtomicBool,
    /// vCPUs currently parked because of a pause.
    parked: AtomicU64,
}

impl VcpuControl {
    pub fn pause(&self) {
        *self.paused.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }

    pub fn resume(&self) {
        *self.paused.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.cv.notify_all();
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.resume();
    }

    pub fn is_paused(&self) -> bool {
        *self.paused.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn parked(&self) -> u64 {
        self.parked.load(Ordering::SeqCst)
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Blocks while paused; returns false when the vCPU must stop.
    fn wait_if_paused(&self) -> bool {
        let mut paused = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        if *paused && !self.stopping() {
            self.parked.fetch_add(1, Ordering::SeqCst);
            while *paused && !self.stopping() {
                paused = self.cv.wait(paused).unwrap_or_else(|p| p.into_inner());
            }
            self.parked.fetch_sub(1, Ordering::SeqCst);
        }
        !self.stopping()
    }
}

/// Counters the API reports.
#[derive(Default)]
pub struct VcpuCounters {
    pub exits: AtomicU64,
    pub io_exits: AtomicU64,
    pub mmio_exits: AtomicU64,
    pub unhandled: AtomicU64,
    /// The exits per port and per MMIO page, added by each vCPU thread as
    /// it ends (see [`VcpuCounters::busiest`]).
    places: Mutex<HashMap<Place, u64>>,
}

/// Where a guest access that left KVM went: a port, or a 4 KiB MMIO page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Place {
    Port(u16),
    MmioPage(u64),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Port(p) => write!(f, "port {p:#x}"),
            Place::MmioPage(a) => write!(f, "MMIO {a:#x}"),
        }
    }
}

impl VcpuCounters {
    /// The `n` places the stopped vCPUs exited for most, busiest first.
    pub fn busiest(&self, n: usize) -> Vec<(Place, u64)> {
        let places = self.places.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<(Place, u64)> = places.iter().map(|(p, c)| (*p, *c)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    fn add_places(&self, tally: &HashMap<Place, u64>) {
        let mut places = self.places.lock().unwrap_or_else(|p| p.into_inner());
        for (p, c) in tally {
            *places.entry(*p).or_default() += c;
        }
    }
}

pub struct Vcpu {
    pub fd: VcpuFd,
    pub index: u8,
    pub io_bus: Arc<Bus>,
    pub mmio_bus: Arc<Bus>,
    pub exit: Arc<ExitSignal>,
    pub control: Arc<VcpuControl>,
    pub counters: Arc<VcpuCounters>,
    /// This vCPU's exits per place, kept by its thread alone.
    pub tally: HashMap<Place, u64>,
}

/// How many unhandled accesses are logged before going quiet.
const UNHANDLED_LOG_LIMIT: u64 = 20;
/// How long a vCPU waits before trying KVM_RUN again after EAGAIN.
const EAGAIN_RETRY: Duration = Duration::from_micros(200);

impl Vcpu {
    fn unhandled(&self, what: &str, addr: u64, len: usize) {
        let n = self.counters.unhandled.fetch_add(1, Ordering::Relaxed);
        if n < UNHANDLED_LOG_LIMIT {
            tracing::warn!(
                vcpu = self.index,
                "guest {what} at {addr:#x} ({len} bytes) has no device; reads return all-ones"
            );
        } else if n == UNHANDLED_LOG_LIMIT {
            tracing::warn!(vcpu = self.index, "more accesses without a device; no longer logged");
        }
    }

    /// Where the vCPU stopped and how its CPU was set up, for the log when
    /// the guest faults (what an OS developer asks first).
    fn cpu_state(&self) -> String {
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => format!(
                "RIP {:#x} RSP {:#x} RFLAGS {:#x} CS {:#x} CR0 {:#x} CR2 {:#x} CR3 {:#x} CR4 {:#x} EFER {:#x} \
                 IDT {:#x}+{:#x} GDT {:#x}+{:#x}",
                r.rip,
                r.rsp,
                r.rflags,
                s.cs.selector,
                s.cr0,
                s.cr2,
                s.cr3,
                s.cr4,
                s.efer,
                s.idt.base,
                s.idt.limit,
                s.gdt.base,
                s.gdt.limit
            ),
            (Err(e), _) | (_, Err(e)) => format!("an unknown place (KVM cannot read its registers: {e})"),
        }
    }

    /// Runs one KVM_RUN and handles its exit. Returns false when the vCPU
    /// must stop running.
    pub fn run_once(&mut self) -> bool {
        let result = self.fd.run();
        self.counters.exits.fetch_add(1, Ordering::Relaxed);
        let mut unhandled: Option<(&'static str, u64, usize)> = None;
        let stop = match result {
            Ok(VcpuExit::IoIn(port, data)) => {
                self.counters.io_exits.fetch_add(1, Ordering::Relaxed);
                *self.tally.entry(Place::Port(port)).or_default() += 1;
                if !self.io_bus.read(u64::from(port), data) {
                    data.fill(0xff);
                    unhandled = Some(("port read", u64::from(port), data.len()));
                }
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                self.counters.io_exits.fetch_add(1, Ordering::Relaxed);
                *self.tally.entry(Place::Port(port)).or_default() += 1;
                if !self.io_bus.write(u64::from(port), data) {
                    unhandled = Some(("port write", u64::from(port), data.len()));
                }
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                self.counters.mmio_exits.fetch_add(1, Ordering::Relaxed);
                *self.tally.entry(Place::MmioPage(addr & !0xfff)).or_default() += 1;
                if !self.mmio_bus.read(addr, data) {
                    data.fill(0xff);
                    unhandled = Some(("MMIO read", addr, data.len()));
                }
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                self.counters.mmio_exits.fetch_add(1, Ordering::Relaxed);
                *self.tally.entry(Place::MmioPage(addr & !0xfff)).or_default() += 1;
                if !self.mmio_bus.write(addr, data) {
                    unhandled = Some(("MMIO write", addr, data.len()));
                }
                None
            }
            Ok(VcpuExit::Shutdown) => {
                let at = format!("vCPU {}: {}", self.index, self.cpu_state());
                tracing::error!(vcpu = self.index, "triple fault; the CPU was at {at}");
                Some(ExitReason::TripleFault(at))
            }
            Ok(VcpuExit::Hlt) => Some(ExitReason::GuestFault("the CPU halted with interrupts off".into())),
            Ok(VcpuExit::InternalError) => {
                Some(ExitReason::GuestFault("KVM internal error (emulation failure)".into()))
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                Some(ExitReason::GuestFault(format!("KVM could not enter the guest (reason {reason:#x}, cpu {cpu})")))
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => Some(match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => ExitReason::Reboot,
                other => ExitReason::GuestFault(format!("system event {other}")),
            }),
            Ok(VcpuExit::Intr) => None,
            Ok(other) => Some(ExitReason::GuestFault(format!("unexpected exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR => None,
            // Not ready to run yet: some KVMs (kvm_pvm) refuse a new VM while
            // another is still being torn down. Retry, without taking a
            // whole host CPU from that teardown.
            Err(e) if e.errno() == libc::EAGAIN => {
                std::thread::sleep(EAGAIN_RETRY);
                None
            }
            Err(e) => Some(ExitReason::Internal(format!("KVM_RUN failed on vCPU {}: {e}", self.index))),
        };
        if let Some((what, addr, len)) = unhandled {
            self.unhandled(what, addr, len);
        }
        match stop {
            Some(reason) => {
                self.exit.request(reason);
                false
            }
            None => true,
        }
    }

    /// The vCPU thread's body: run until the VM stops.
    pub fn run_loop(mut self) {
        loop {
            if !self.control.wait_if_paused() || self.exit.reason().is_some() {
                break;
            }
            if !self.run_once() {
                break;
            }
        }
        self.counters.add_places(&self.tally);
        tracing::debug!(vcpu = self.index, "vCPU thread done");
    }
}

/// The signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Installs the (empty) handler for [`kick_signal`]: delivery alone makes
/// KVM_RUN return EINTR.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    vmm_sys_util::signal::register_signal_handler(kick_signal(), noop)
}

/// Kicks running vCPU threads until they have all left KVM_RUN (stop) or
/// parked (pause). A kick can land just before KVM_RUN starts, so repeat.
pub fn kick_until<T>(threads: &[std::thread::JoinHandle<T>], done: impl Fn() -> bool) {
    use vmm_sys_util::signal::Killable;
    // A vCPU that is on its way out takes microseconds: look again soon,
    // then less often (about a second in all).
    let mut wait = Duration::from_micros(50);
    for _ in 0..500 {
        if done() {
            return;
        }
        for t in threads {
            if !t.is_finished() {
                let _ = t.kill(kick_signal());
            }
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_places_add_up_over_the_vcpus() {
        let counters = VcpuCounters::default();
        counters.add_places(&HashMap::from([(Place::Port(0x80), 5), (Place::Port(0x3f8), 2)]));
        counters.add_places(&HashMap::from([(Place::Port(0x80), 1), (Place::MmioPage(0xd000_0000), 3)]));
        assert_eq!(
            counters.busiest(2),
            vec![(Place::Port(0x80), 6), (Place::MmioPage(0xd000_0000), 3)],
            "the two busiest, most first"
        );
        assert_eq!(Place::Port(0x80).to_string(), "port 0x80");
        assert_eq!(Place::MmioPage(0xd000_0000).to_string(), "MMIO 0xd0000000");
    }
}
