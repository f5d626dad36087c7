//! Long-running services PID 1 keeps alive (today: kvmos-webadmin). A service
//! that dies is logged with its exit status and started again after a
//! backoff that doubles up to a cap; one that ran a while starts from the
//! shortest backoff again.

use nix::sys::signal::SigSet;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A run at least this long resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Service {
    pub name: &'static str,
    pub program: String,
    pub args: Vec<String>,
    pub pid: Option<Pid>,
    started: Option<Instant>,
    backoff: Duration,
    /// When to start it next, if it is down.
    next_start: Option<Instant>,
    pub restarts: u32,
    stopping: bool,
}

impl Service {
    pub fn new(name: &'static str, program: &str, args: Vec<String>) -> Self {
        Self {
            name,
            program: program.into(),
            args,
            pid: None,
            started: None,
            backoff: FIRST_BACKOFF,
            next_start: Some(Instant::now()),
            restarts: 0,
            stopping: false,
        }
    }

    /// When [`Service::tick`] must run next.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.stopping {
            None
        } else {
            self.next_start
        }
    }

    /// Starts the service if it is due; returns what to log.
    pub fn tick(&mut self, now: Instant) -> Option<String> {
        match self.next_start {
            Some(t) if t <= now && self.pid.is_none() && !self.stopping => {}
            _ => return None,
        }
        self.next_start = None;
        match child_command(&self.program).args(&self.args).spawn() {
            Ok(child) => {
                let pid = Pid::from_raw(child.id() as i32);
                // PID 1 reaps it through waitpid(-1); dropping the handle
                // neither waits nor kills.
                drop(child);
                self.pid = Some(pid);
                self.started = Some(now);
                Some(format!("started {} (pid {pid})", self.name))
            }
            Err(e) => {
                self.schedule_restart(now);
                Some(format!("cannot start {} ({}): {e}; retrying in {:?}", self.name, self.program, self.backoff))
            }
        }
    }

    /// Called for every reaped child; returns what to log if it was ours.
    pub fn on_exit(&mut self, status: &WaitStatus, now: Instant) -> Option<String> {
        let pid = status.pid()?;
        if self.pid != Some(pid) {
            return None;
        }
        self.pid = None;
        let ran = self.started.map(|s| now - s).unwrap_or_default();
        if self.stopping {
            return Some(format!("{} stopped ({})", self.name, describe(status)));
        }
        if ran >= HEALTHY_RUN {
            self.backoff = FIRST_BACKOFF;
        }
        self.schedule_restart(now);
        self.restarts += 1;
        Some(format!(
            "{} exited after {:.1} s ({}); restarting in {:?}",
            self.name,
            ran.as_secs_f64(),
            describe(status),
            self.next_start.map(|t| t - now).unwrap_or_default()
        ))
    }

    fn schedule_restart(&mut self, now: Instant) {
        self.next_start = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Stops restarting it (shutdown).
    pub fn stop_supervising(&mut self) {
        self.stopping = true;
    }
}

/// A command for a child of PID 1. PID 1 blocks the signals it takes with
/// sigwait, and a child inherits the mask across exec (std does not reset
/// it): without this, kvmos-webadmin would never see SIGTERM.
pub fn child_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    // SAFETY: the closure only calls pthread_sigmask, which is
    // async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| SigSet::empty().thread_set_mask().map_err(std::io::Error::from));
    }
    cmd
}

pub fn describe(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, sig, core) => format!("killed by {sig}{}", if *core { ", core dumped" } else { "" }),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[test]
    fn restarts_with_doubling_capped_backoff_and_resets_after_a_healthy_run() {
        let t0 = Instant::now();
        let mut s = Service::new("svc", "/bin/true", vec![]);
        let mut gaps = vec![];
        for i in 0..10 {
            let pid = Pid::from_raw(1000 + i);
            s.pid = Some(pid);
            s.started = Some(t0);
            let msg = s.on_exit(&WaitStatus::Signaled(pid, Signal::SIGKILL, false), t0).unwrap();
            assert!(msg.contains("killed by SIGKILL"), "{msg}");
            gaps.push(s.next_start.unwrap() - t0);
        }
        assert_eq!(gaps[0], Duration::from_secs(1));
        assert_eq!(gaps[1], Duration::from_secs(2));
        assert_eq!(*gaps.last().unwrap(), MAX_BACKOFF);
        // A long healthy run starts over from the first backoff.
        let pid = Pid::from_raw(5);
        s.pid = Some(pid);
        s.started = Some(t0);
        s.on_exit(&WaitStatus::Exited(pid, 1), t0 + HEALTHY_RUN).unwrap();
        assert_eq!(s.next_start.unwrap() - (t0 + HEALTHY_RUN), FIRST_BACKOFF);
    }

    #[test]
    fn other_children_and_stopped_services_are_not_restarted() {
        let t0 = Instant::now();
        let mut s = Service::new("svc", "/bin/true", vec![]);
        s.pid = Some(Pid::from_raw(10));
        assert!(s.on_exit(&WaitStatus::Exited(Pid::from_raw(11), 0), t0).is_none());
        s.stop_supervising();
        let msg = s.on_exit(&WaitStatus::Exited(Pid::from_raw(10), 0), t0).unwrap();
        assert!(msg.contains("stopped"));
        assert_eq!(s.next_deadline(), None);
        assert!(s.tick(t0 + Duration::from_secs(100)).is_none());
    }

    #[test]
    fn children_start_with_no_signal_blocked() {
        let mut blocked = SigSet::empty();
        blocked.add(nix::sys::signal::Signal::SIGTERM);
        let old = blocked.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK).unwrap();
        let out = child_command("/bin/grep").args(["^SigBlk", "/proc/self/status"]).output().unwrap();
        old.thread_set_mask().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.trim(), "SigBlk:\t0000000000000000", "{text}");
    }

    #[test]
    fn starts_a_real_process_when_due() {
        let mut s = Service::new("true", "/bin/true", vec![]);
        let t0 = Instant::now();
        let msg = s.tick(t0).unwrap();
        assert!(msg.starts_with("started true"), "{msg}");
        let pid = s.pid.unwrap();
        let status = nix::sys::wait::waitpid(pid, None).unwrap();
        assert_eq!(status, WaitStatus::Exited(pid, 0));
        let mut missing = Service::new("missing", "/nonexistent/program", vec![]);
        let msg = missing.tick(Instant::now()).unwrap();
        assert!(msg.contains("cannot start missing"), "{msg}");
        assert!(missing.next_deadline().unwrap() > t0);
    }
}
