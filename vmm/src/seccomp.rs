//! A seccomp filter for each kind of thread, built with `seccompiler`
//! (rust-vmm): an allow-list, with the ioctl requests, `fcntl` commands,
//! signals and memory protections checked where the thread needs only a
//! few. Anything else kills the whole VMM (SIGSYS); the jail's parent
//! (`jail.rs`) records that as the exit reason.
//!
//! A thread installs its filter first thing (the event loop after it has
//! started the others), once the jail is closed. Nothing that runs under
//! a filter opens a file, creates a socket, forks or executes: everything
//! the VM needs was opened before.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr};

// The KVM ioctls used once the VM runs (numbers as in linux/kvm.h).
const KVMIO: u32 = 0xAE;
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_iow_nr!(KVM_IRQ_LINE, KVMIO, 0x61, kvm_bindings::kvm_irq_level);
ioctl_iow_nr!(KVM_SET_USER_MEMORY_REGION, KVMIO, 0x46, kvm_bindings::kvm_userspace_memory_region);
ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_bindings::kvm_ioeventfd);
ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_bindings::kvm_irqfd);
ioctl_iow_nr!(KVM_SET_GSI_ROUTING, KVMIO, 0x6a, kvm_bindings::kvm_irq_routing);
ioctl_iow_nr!(KVM_SIGNAL_MSI, KVMIO, 0xa5, kvm_bindings::kvm_msi);
ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_bindings::kvm_dirty_log);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_bindings::kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_bindings::kvm_sregs);

/// The kinds of thread, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thread {
    /// The event loop: virtio queues (disk, network, entropy), the
    /// console, the API's requests, the RTC, and the vCPU kicks.
    EventLoop,
    /// A vCPU: KVM_RUN and the devices it exits into.
    Vcpu,
    /// The control API's socket.
    Api,
    /// The VNC server.
    Vnc,
    /// A device's own I/O thread (a disk's reads, writes and flushes).
    DeviceIo,
}

/// The compiled filters, one per thread kind.
pub struct Filters {
    event_loop: BpfProgram,
    vcpu: BpfProgram,
    api: BpfProgram,
    vnc: BpfProgram,
    device_io: BpfProgram,
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
#[error("seccomp: {0}")]
pub struct SeccompError(String);

impl Filters {
    /// Compiles the four filters; `kick_signal` is the real-time signal
    /// the event loop sends to the vCPU threads.
    pub fn new(kick_signal: i32) -> Result<Self, SeccompError> {
        Ok(Self {
            event_loop: compile(Thread::EventLoop, kick_signal)?,
            vcpu: compile(Thread::Vcpu, kick_signal)?,
            api: compile(Thread::Api, kick_signal)?,
            vnc: compile(Thread::Vnc, kick_signal)?,
            device_io: compile(Thread::DeviceIo, kick_signal)?,
        })
    }

    pub fn program(&self, kind: Thread) -> &BpfProgram {
        match kind {
            Thread::EventLoop => &self.event_loop,
            Thread::Vcpu => &self.vcpu,
            Thread::Api => &self.api,
            Thread::Vnc => &self.vnc,
            Thread::DeviceIo => &self.device_io,
        }
    }

    /// Installs `kind`'s filter on the calling thread (which needs
    /// `no_new_privs`, set by the jail).
    pub fn apply(&self, kind: Thread) -> Result<(), SeccompError> {
        seccompiler::apply_filter(self.program(kind)).map_err(|e| SeccompError(format!("{kind:?}: {e}")))
    }
}

/// Installs `kind`'s filter on the calling thread when the VMM is jailed
/// (`filters` present); nothing otherwise.
pub fn confine(filters: Option<&Filters>, kind: Thread) -> Result<(), SeccompError> {
    filters.map_or(Ok(()), |f| f.apply(kind))
}

fn cond(arg: u8, op: Op, value: u64) -> Result<Cond, SeccompError> {
    Cond::new(arg, Len::Qword, op, value).map_err(|e| SeccompError(e.to_string()))
}

/// One rule per allowed value of argument `arg`.
fn one_of(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, SeccompError> {
    values
        .iter()
        .map(|&v| SeccompRule::new(vec![cond(arg, Op::Eq, v)?]).map_err(|e| SeccompError(e.to_string())))
        .collect()
}

/// Memory may be mapped and protected, but never made executable: no new
/// code runs in a jailed VMM.
fn never_exec(prot_arg: u8) -> Result<Vec<SeccompRule>, SeccompError> {
    let rule = SeccompRule::new(vec![cond(prot_arg, Op::MaskedEq(libc::PROT_EXEC as u64), 0)?])
        .map_err(|e| SeccompError(e.to_string()))?;
    Ok(vec![rule])
}

/// The system calls of `kind`, as (number, rules); no rules allows every
/// call.
fn allowed(kind: Thread, kick_signal: i32) -> Result<Vec<(i64, Vec<SeccompRule>)>, SeccompError> {
    let any = Vec::new;
    // Every thread: memory, locks, signals, time, logging to stderr, and
    // its own end.
    let mut calls = vec![
        (libc::SYS_read, any()),
        (libc::SYS_write, any()),
        (libc::SYS_readv, any()),
        (libc::SYS_writev, any()),
        (libc::SYS_close, any()),
        (libc::SYS_futex, any()),
        (libc::SYS_mmap, never_exec(2)?),
        (libc::SYS_mprotect, never_exec(2)?),
        (libc::SYS_munmap, any()),
        (libc::SYS_mremap, any()),
        (libc::SYS_madvise, any()),
        (libc::SYS_brk, any()),
        (libc::SYS_rt_sigreturn, any()),
        (libc::SYS_rt_sigprocmask, any()),
        (libc::SYS_sigaltstack, any()),
        (libc::SYS_restart_syscall, any()),
        (libc::SYS_clock_gettime, any()),
        (libc::SYS_clock_nanosleep, any()),
        (libc::SYS_nanosleep, any()),
        (libc::SYS_sched_yield, any()),
        (libc::SYS_sched_getaffinity, any()),
        (libc::SYS_getrandom, any()),
        (libc::SYS_gettid, any()),
        (libc::SYS_getpid, any()),
        (libc::SYS_rseq, any()),
        (libc::SYS_set_robust_list, any()),
        (libc::SYS_exit, any()),
        (libc::SYS_exit_group, any()),
        // abort(), after a panic while panicking: SIGABRT to itself.
        (libc::SYS_tgkill, one_of(2, &[libc::SIGABRT as u64])?),
        (
            libc::SYS_fcntl,
            one_of(
                1,
                &[libc::F_GETFL, libc::F_SETFL, libc::F_GETFD, libc::F_SETFD, libc::F_DUPFD_CLOEXEC].map(|c| c as u64),
            )?,
        ),
    ];
    let sockets = [
        (libc::SYS_accept4, any()),
        (libc::SYS_recvfrom, any()),
        (libc::SYS_sendto, any()),
        (libc::SYS_recvmsg, any()),
        (libc::SYS_sendmsg, any()),
        (libc::SYS_shutdown, any()),
        (
            libc::SYS_setsockopt,
            vec![SeccompRule::new(vec![cond(1, Op::Eq, libc::SOL_SOCKET as u64)?])
                .map_err(|e| SeccompError(e.to_string()))?],
        ),
    ];
    let polling = [(libc::SYS_epoll_wait, any()), (libc::SYS_epoll_pwait, any()), (libc::SYS_epoll_ctl, any())];
    let timers = [(libc::SYS_timerfd_settime, any()), (libc::SYS_timerfd_gettime, any())];
    let file_io = [
        (libc::SYS_pread64, any()),
        (libc::SYS_pwrite64, any()),
        (libc::SYS_preadv, any()),
        (libc::SYS_pwritev, any()),
        (libc::SYS_lseek, any()),
        (libc::SYS_fsync, any()),
        (libc::SYS_fdatasync, any()),
    ];
    let fionbio = libc::FIONBIO;
    let ioctls: &[u64] = match kind {
        Thread::EventLoop => &[
            KVM_IRQ_LINE(),
            KVM_SET_GSI_ROUTING(),
            KVM_SIGNAL_MSI(),
            KVM_IRQFD(),
            KVM_GET_DIRTY_LOG(),
            fionbio,
            // The terminal given back when the VMM ran on one.
            libc::TCGETS,
            libc::TCSETS,
            // A NIC's offloads, set when the guest's driver starts or resets it.
            crate::tap::TUNSETOFFLOAD,
        ],
        Thread::Vcpu => &[
            KVM_RUN(),
            KVM_IRQ_LINE(),
            KVM_SET_USER_MEMORY_REGION(),
            KVM_IOEVENTFD(),
            KVM_IRQFD(),
            KVM_SET_GSI_ROUTING(),
            KVM_SIGNAL_MSI(),
            // A NIC's offloads: its driver starts it with a register write.
            crate::tap::TUNSETOFFLOAD,
            // Where the CPU was when the guest faulted, for the log.
            KVM_GET_REGS(),
            KVM_GET_SREGS(),
        ],
        Thread::Api => &[fionbio],
        Thread::Vnc => &[KVM_GET_DIRTY_LOG(), KVM_IRQ_LINE(), fionbio],
        Thread::DeviceIo => &[],
    };
    // (No rules would allow every request: a thread without ioctls gets
    // no ioctl at all.)
    if !ioctls.is_empty() {
        calls.push((libc::SYS_ioctl, one_of(1, ioctls)?));
    }
    match kind {
        Thread::EventLoop => {
            calls.extend(sockets);
            calls.extend(polling);
            calls.extend(timers);
            calls.extend(file_io);
            // The vCPU kick (and abort's SIGABRT, already listed).
            let tgkill = calls.iter_mut().find(|(n, _)| *n == libc::SYS_tgkill).expect("listed above");
            tgkill.1.extend(one_of(2, &[kick_signal as u64])?);
        }
        // A vCPU writes the UEFI variable store and the firmware log, and
        // the console's clients.
        Thread::Vcpu => {
            calls.extend(timers);
            calls.extend(file_io);
            calls.extend([(libc::SYS_sendto, any()), (libc::SYS_sendmsg, any())]);
        }
        Thread::Api => calls.extend(sockets),
        Thread::Vnc => {
            calls.extend(sockets);
            calls.extend(polling);
            calls.extend(timers);
        }
        // Its queues' events, the file's I/O, the interrupt's eventfd.
        Thread::DeviceIo => {
            calls.extend(polling);
            calls.extend(file_io);
        }
    }
    Ok(calls)
}

fn compile(kind: Thread, kick_signal: i32) -> Result<BpfProgram, SeccompError> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> = allowed(kind, kick_signal)?.into_iter().collect();
    let filter = SeccompFilter::new(rules, SeccompAction::KillProcess, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| SeccompError(e.to_string()))?;
    filter.try_into().map_err(|e: seccompiler::BackendError| SeccompError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_kind_compiles_and_no_kind_may_open_files_or_fork() {
        let f = Filters::new(libc::SIGRTMIN() + 1).unwrap();
        for kind in [Thread::EventLoop, Thread::Vcpu, Thread::Api, Thread::Vnc, Thread::DeviceIo] {
            assert!(!f.program(kind).is_empty());
            let calls: Vec<i64> = allowed(kind, 40).unwrap().into_iter().map(|(n, _)| n).collect();
            for forbidden in [
                libc::SYS_openat,
                libc::SYS_open,
                libc::SYS_socket,
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_fork,
                libc::SYS_execve,
                libc::SYS_ptrace,
                libc::SYS_unshare,
                libc::SYS_setns,
                libc::SYS_mount,
                libc::SYS_kill,
            ] {
                assert!(!calls.contains(&forbidden), "{kind:?} allows system call {forbidden}");
            }
        }
        let io: Vec<i64> = allowed(Thread::DeviceIo, 40).unwrap().into_iter().map(|(n, _)| n).collect();
        assert!(!io.contains(&libc::SYS_ioctl), "a device thread makes no ioctl");
        assert!(!io.contains(&libc::SYS_accept4), "nor takes connections");
        assert_eq!(KVM_RUN(), 0xAE80);
        assert_eq!(KVM_GET_REGS(), 0x8090_AE81);
        assert_eq!(KVM_GET_SREGS(), 0x8138_AE83);
    }
}
