//! The VMM's jail, in the way Firecracker's jailer works, but in this
//! process: a guest drives the device models, so a guest that breaks one
//! must find nothing behind it. The jail is entered in two stages around
//! the building of the VM, and each thread then gets its own seccomp
//! filter ([`crate::seccomp`]).
//!
//! 1. [`enter_pid_namespace`], first of all: the VM's cgroup v2 leaf (its
//!    memory, process and CPU limits), then a PID namespace. The process
//!    forks; the child goes on as PID 1 of the new namespace and builds
//!    the VM, and the parent stays behind only to wait for it and write
//!    the exit record (the child can no longer reach the file). The child
//!    dies with its parent.
//! 2. [`lock_down`], once `/dev/kvm`, the disks, the tap, the firmware and
//!    the sockets are open and before any thread starts: new mount, UTS,
//!    network and IPC namespaces; an empty read-only root; rlimits; the
//!    bounding set emptied; the VM's own user and group (never root, one
//!    per VM); no capabilities and `no_new_privs`.
//!
//! `kvmos-vmm --no-jail` skips both, for development only; the panel
//! always gives a jail.

use crate::config::{ExitRecord, JailConfig, VmConfig};
use crate::exit::EXIT_FORBIDDEN_SYSCALL;
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::path::Path;

/// Where the empty root is mounted, in the jail's own mount namespace,
/// before it becomes `/` (nothing shows on the host).
const ROOT_MOUNT: &str = "/tmp";
/// Memory for the VMM itself on top of the guest's, in the cgroup's
/// `memory.max`: the device models, the display's framebuffer (16 MiB),
/// buffers and thread stacks.
pub const MEMORY_OVERHEAD_MIB: u64 = 64;
/// Threads besides the vCPUs and the disks' I/O threads: the event loop,
/// the API, the VNC server, and the waiting parent (which runs as root, so
/// the VM user's RLIMIT_NPROC has one to spare).
const THREADS_BESIDES_VCPUS: u64 = 4;
/// The cgroup counts KVM's own worker (kvm-nx-lpage-recovery) among the
/// VMM's tasks too, and one more is kept spare.
const CGROUP_TASKS_BESIDES_VCPUS: u64 = THREADS_BESIDES_VCPUS + 2;
/// File descriptors beyond those open when the jail closes: console, VNC
/// and API clients.
const SPARE_FDS: u64 = 256;
/// The longest exit record the parent reads from the child.
const MAX_REPORT: u64 = 64 * 1024;

fn os_err(what: &str) -> std::io::Error {
    let e = std::io::Error::last_os_error();
    std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn check(ret: libc::c_long, what: &str) -> std::io::Result<()> {
    if ret < 0 {
        Err(os_err(what))
    } else {
        Ok(())
    }
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in a constant path")
}

/// cgroup v2's own default `cpu.weight`.
pub const DEFAULT_CPU_WEIGHT: u32 = 100;

/// The cgroup v2 limits a VM gets, from its definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLimits {
    pub memory_max: u64,
    pub pids_max: u64,
    /// `cpu.max`: the quota and the period, in µs.
    pub cpu_max: (u64, u64),
    /// `cpu.weight`: the share against other VMs, from the definition.
    pub cpu_weight: u32,
}

impl CgroupLimits {
    /// Guest memory plus [`MEMORY_OVERHEAD_MIB`]; the vCPUs and the
    /// VMM's other threads; as much CPU as the vCPUs, and half a CPU more
    /// for the devices; the CPU weight the definition gives (100 without).
    pub fn for_vm(config: &VmConfig) -> Self {
        let vcpus = u64::from(config.vcpus);
        Self {
            memory_max: (config.memory_mib + MEMORY_OVERHEAD_MIB) << 20,
            pids_max: vcpus + device_threads(config) + CGROUP_TASKS_BESIDES_VCPUS,
            cpu_max: (vcpus * 100_000 + 50_000, 100_000),
            cpu_weight: config.jail.as_ref().and_then(|j| j.cpu_weight).unwrap_or(DEFAULT_CPU_WEIGHT),
        }
    }
}

/// The VM's device I/O threads: one per disk.
pub fn device_threads(config: &VmConfig) -> u64 {
    config.disks.iter().filter(|d| d.media.is_disk()).count() as u64
}

/// Creates the cgroup `leaf` (with the controllers enabled on the way down
/// from the cgroup root, which `leaf` must be under), writes its limits and
/// moves this process in.
pub fn join_cgroup(leaf: &Path, limits: &CgroupLimits) -> std::io::Result<()> {
    let root = crate::config::CGROUP_ROOT;
    let rel = leaf
        .strip_prefix(root)
        .map_err(|_| std::io::Error::other(format!("the cgroup {} is not under {root}", leaf.display())))?;
    let err = |what: String| move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"));
    let mut dir = Path::new(root).to_path_buf();
    for part in rel.components() {
        for c in ["+memory", "+pids", "+cpu"] {
            let f = dir.join("cgroup.subtree_control");
            std::fs::write(&f, c).map_err(err(format!("cannot enable {c} in {}", f.display())))?;
        }
        dir.push(part);
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(err(format!("cannot create the cgroup {}", dir.display()))(e))
            }
            _ => {}
        }
    }
    let write = |file: &str, value: String| {
        std::fs::write(leaf.join(file), &value).map_err(err(format!("cannot set {file} to {value}")))
    };
    write("memory.max", limits.memory_max.to_string())?;
    if leaf.join("memory.swap.max").exists() {
        write("memory.swap.max", "0".into())?;
    }
    write("pids.max", limits.pids_max.to_string())?;
    write("cpu.max", format!("{} {}", limits.cpu_max.0, limits.cpu_max.1))?;
    write("cpu.weight", limits.cpu_weight.to_string())?;
    write("cgroup.procs", std::process::id().to_string())
}

/// Stage 1: the cgroup, then a PID namespace. Returns, in the child (PID 1
/// of the new namespace), the pipe on which it reports its exit record to
/// the parent. The parent never returns: it waits for the child, writes
/// the exit record to `exit_file` and exits with the child's code.
pub fn enter_pid_namespace(jail: &JailConfig, config: &VmConfig) -> std::io::Result<File> {
    if let Some(leaf) = &jail.cgroup {
        join_cgroup(leaf, &CgroupLimits::for_vm(config))?;
    }
    // SAFETY: unshare(2) with flags only; pipe2 into a local array.
    check(unsafe { libc::unshare(libc::CLONE_NEWPID) }.into(), "cannot create a PID namespace")?;
    let mut fds = [0; 2];
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }.into(), "cannot create the report pipe")?;
    // SAFETY: fresh fds that nothing else owns.
    let (read_end, write_end) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    // SAFETY: the process is single-threaded here (nothing has been built),
    // so the child may do anything after fork.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(os_err("cannot fork into the PID namespace")),
        0 => {
            drop(read_end);
            // SAFETY: prctl with integer arguments.
            check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) }.into(), "PR_SET_PDEATHSIG")?;
            Ok(write_end)
        }
        child => {
            drop(write_end);
            wait_for_child(child, read_end, config)
        }
    }
}

/// How long the parent waits for the child to end once it has sent its
/// record: it ends at once unless one of its threads is stuck in the
/// kernel (in a dead disk's I/O), which nothing can end.
const CHILD_EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The parent's whole job: the child's report (or, when it was killed, a
/// reason made from the signal), written to the exit file; and the
/// sockets' files removed, which the jailed child can no longer see.
fn wait_for_child(child: libc::pid_t, report: File, config: &VmConfig) -> ! {
    use std::io::BufRead;
    // The record is one line; the pipe ends early if the child is killed.
    let mut text = String::new();
    let _ = std::io::BufReader::new(report.take(MAX_REPORT)).read_line(&mut text);
    let record = serde_json::from_str::<ExitRecord>(&text).ok();
    let record = match record {
        Some(r) => match wait_child(child, Some(CHILD_EXIT_GRACE)) {
            Some(status) if libc::WIFSIGNALED(status) => record_from_status(status),
            Some(_) => r,
            None => {
                let secs = CHILD_EXIT_GRACE.as_secs();
                eprintln!("kvmos-vmm: the jailed VMM has not ended {secs} s after its report; leaving it");
                r
            }
        },
        None => record_from_status(wait_child(child, None).unwrap_or(0)),
    };
    crate::runner::Sockets::remove_files(config);
    if let Some(path) = &config.exit_file {
        if let Err(e) = record.write(path) {
            eprintln!("kvmos-vmm: cannot write {}: {e}", path.display());
        }
    }
    std::process::exit(record.code)
}

/// Waits for our child to end, for at most `limit` (None: for as long as
/// it takes); its wait status, or None if it is still running.
fn wait_child(child: libc::pid_t, limit: Option<std::time::Duration>) -> Option<libc::c_int> {
    if let Some(limit) = limit {
        // SAFETY: pidfd_open on our own child; the fd is owned below.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child, 0) };
        if fd >= 0 {
            // SAFETY: a new fd that nothing else owns.
            let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
            let mut p = libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&pidfd), events: libc::POLLIN, revents: 0 };
            let ms = limit.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: poll on one valid pollfd. Readable when the child ended.
            if unsafe { libc::poll(&mut p, 1, ms) } == 0 {
                return None;
            }
        }
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    while unsafe { libc::waitpid(child, &mut status, 0) } < 0
        && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
    {}
    Some(status)
}

/// What a wait status says when the child left no record.
pub fn record_from_status(status: libc::c_int) -> ExitRecord {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        if sig == libc::SIGSYS {
            return ExitRecord {
                code: EXIT_FORBIDDEN_SYSCALL,
                reason: "the VMM made a system call its seccomp filter forbids, and was killed (SIGSYS)".into(),
            };
        }
        return ExitRecord { code: 128 + sig, reason: format!("the VMM was killed by signal {sig}") };
    }
    let code = libc::WEXITSTATUS(status);
    ExitRecord { code, reason: format!("the VMM exited with code {code} without a reason") }
}

/// Sends the exit record to the waiting parent.
pub fn report(pipe: &mut File, record: &ExitRecord) {
    let mut line = serde_json::to_vec(record).unwrap_or_default();
    line.push(b'\n');
    let _ = pipe.write_all(&line);
}

/// Stage 2: the steps, in order. Each names what it does for the error.
type Step = fn(&JailConfig, &Facts) -> std::io::Result<()>;
const STEPS: &[(&str, Step)] = &[
    ("no thread runs yet", no_threads),
    ("new mount, UTS, network and IPC namespaces", namespaces),
    ("an empty read-only root", empty_root),
    ("rlimits on files, processes and core dumps", rlimits),
    ("an empty capability bounding set", drop_bounding_set),
    ("the VM's own user and group", switch_user),
    ("no capabilities and no new privileges", no_privileges),
];

/// What the steps read from `/proc` before the root goes away.
struct Facts {
    threads: usize,
    highest_fd: u64,
    last_cap: u32,
    ipc_namespace: bool,
    /// The vCPUs and the device threads.
    vm_threads: u64,
}

/// Stage 2 (see the module docs).
pub fn lock_down(jail: &JailConfig, config: &VmConfig) -> std::io::Result<()> {
    let facts = Facts {
        threads: std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0),
        highest_fd: std::fs::read_dir("/proc/self/fd")
            .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok()).max().unwrap_or(0))
            .unwrap_or(0),
        last_cap: std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(63),
        ipc_namespace: Path::new("/proc/self/ns/ipc").exists(),
        vm_threads: u64::from(config.vcpus) + device_threads(config),
    };
    for (name, step) in STEPS {
        step(jail, &facts).map_err(|e| std::io::Error::new(e.kind(), format!("jail: {name}: {e}")))?;
    }
    tracing::info!(uid = jail.uid, gid = jail.gid, "jailed");
    Ok(())
}

fn no_threads(_: &JailConfig, f: &Facts) -> std::io::Result<()> {
    // Namespaces and credentials change for the calling thread only.
    if f.threads != 1 {
        return Err(std::io::Error::other(format!("{} threads run; the jail must close before any starts", f.threads)));
    }
    Ok(())
}

fn namespaces(_: &JailConfig, f: &Facts) -> std::io::Result<()> {
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWNET;
    // A kernel without System V IPC and POSIX message queues (kvmos's own)
    // has no IPC namespaces, and no IPC objects to share either.
    if f.ipc_namespace {
        flags |= libc::CLONE_NEWIPC;
    }
    // SAFETY: unshare(2) with flags only.
    check(unsafe { libc::unshare(flags) }.into(), "unshare")
}

fn mount(
    src: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> std::io::Result<()> {
    let (src, fstype, data) = (src.map(cstr), fstype.map(cstr), data.map(cstr));
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    let target_c = cstr(target);
    // SAFETY: NUL-terminated strings or null pointers, alive for the call.
    let ret =
        unsafe { libc::mount(ptr(&src), target_c.as_ptr(), ptr(&fstype), flags, ptr(&data).cast::<libc::c_void>()) };
    check(ret.into(), &format!("mount {target}"))
}

fn empty_root(_: &JailConfig, _: &Facts) -> std::io::Result<()> {
    // Nothing this namespace mounts propagates back to the host.
    mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    let hardened = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(Some("tmpfs"), ROOT_MOUNT, Some("tmpfs"), hardened, Some("size=4k,nr_inodes=2,mode=0555"))?;
    let dot = cstr(".");
    let root = cstr(ROOT_MOUNT);
    // SAFETY: path syscalls on NUL-terminated strings.
    unsafe {
        check(libc::chdir(root.as_ptr()).into(), "chdir")?;
        // pivot_root(".", ".") stacks the old root under the new one; the
        // detach then drops it.
        if libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) == 0 {
            check(libc::umount2(dot.as_ptr(), libc::MNT_DETACH).into(), "detach the old root")?;
        } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            // The root is the initramfs (kvmos runs from one), which cannot
            // be pivoted away: the new root is moved over it and becomes
            // this process's root, as switch_root does. Nothing is left to
            // climb out with: no capabilities (so no chroot), no open
            // directory.
            mount(Some("."), "/", None, libc::MS_MOVE, None)?;
            check(libc::chroot(dot.as_ptr()).into(), "chroot")?;
        } else {
            return Err(os_err("pivot_root"));
        }
        check(libc::chdir(cstr("/").as_ptr()).into(), "chdir /")?;
    }
    mount(None, "/", None, libc::MS_REMOUNT | libc::MS_RDONLY | hardened, None)
}

fn set_rlimit(resource: libc::__rlimit_resource_t, value: u64, what: &str) -> std::io::Result<()> {
    let lim = libc::rlimit { rlim_cur: value, rlim_max: value };
    // SAFETY: a valid rlimit struct.
    check(unsafe { libc::setrlimit(resource, &lim) }.into(), what)
}

fn rlimits(_: &JailConfig, f: &Facts) -> std::io::Result<()> {
    set_rlimit(libc::RLIMIT_NOFILE, f.highest_fd + 1 + SPARE_FDS, "RLIMIT_NOFILE")?;
    // Counted per user, and the user is this VM's alone.
    set_rlimit(libc::RLIMIT_NPROC, f.vm_threads + THREADS_BESIDES_VCPUS, "RLIMIT_NPROC")?;
    // A core dump would hold the guest's memory.
    set_rlimit(libc::RLIMIT_CORE, 0, "RLIMIT_CORE")
}

fn drop_bounding_set(_: &JailConfig, f: &Facts) -> std::io::Result<()> {
    for cap in 0..=f.last_cap {
        // SAFETY: prctl with integer arguments.
        check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) }.into(), "PR_CAPBSET_DROP")?;
    }
    Ok(())
}

fn switch_user(jail: &JailConfig, _: &Facts) -> std::io::Result<()> {
    let (u, g) = (jail.uid, jail.gid);
    // SAFETY: credential syscalls with integer arguments; setgroups with no list.
    unsafe {
        check(libc::setgroups(0, std::ptr::null()).into(), "setgroups")?;
        check(libc::setresgid(g, g, g).into(), "setresgid")?;
        check(libc::setresuid(u, u, u).into(), "setresuid")?;
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn no_privileges(_: &JailConfig, _: &Facts) -> std::io::Result<()> {
    // Leaving uid 0 cleared the effective and permitted sets; this clears
    // the inheritable one too, and the ambient one.
    let mut hdr = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [CapData::default(); 2];
    // SAFETY: capset(2) with a v3 header and two data structs.
    check(unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) }, "capset")?;
    // SAFETY: prctl with integer arguments.
    unsafe {
        check(libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0).into(), "clear ambient")?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into(), "PR_SET_NO_NEW_PRIVS")?;
        check(libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0).into(), "PR_SET_DUMPABLE")?;
        // Changing the user cleared the parent-death signal: set it again.
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL).into(), "PR_SET_PDEATHSIG")?;
    }
    Ok(())
}

pub use kvmos_contract::process::jailed_child;

/// For tests that run jailed VMMs (feature `test-hooks`).
#[cfg(feature = "test-hooks")]
pub mod testing {
    /// A jail user for the test VM numbered `slot` (below 16) in this test
    /// process: no two VMs running at once share one (the process limit
    /// is per user).
    pub fn uid(slot: u32) -> u32 {
        200_000 + (std::process::id() % 100_000) * 16 + slot
    }

    /// A slot no other VM of this test process has had (from 8 up; tests
    /// may pick 0 to 7 themselves).
    pub fn next_slot() -> u32 {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(8);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 16
    }

    /// The flags that jail a VMM as [`uid`]`(slot)`.
    pub fn args(slot: u32) -> Vec<String> {
        let id = uid(slot).to_string();
        vec!["--jail-uid".into(), id.clone(), "--jail-gid".into(), id]
    }

    /// [`super::jailed_child`], which must exist.
    pub fn jailed_pid(started: u32) -> u32 {
        super::jailed_child(started).unwrap_or_else(|| panic!("{started} has no jailed child"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_vm_definition() {
        let mut c = VmConfig::from_json("{}").unwrap();
        c.memory_mib = 512;
        c.vcpus = 2;
        let l = CgroupLimits::for_vm(&c);
        assert_eq!(l.memory_max, (512 + MEMORY_OVERHEAD_MIB) << 20);
        assert_eq!(l.pids_max, 2 + 6);
        assert_eq!(l.cpu_max, (250_000, 100_000));
        c.disks.push(crate::config::DiskConfig {
            path: "/d".into(),
            read_only: false,
            id: None,
            media: Default::default(),
        });
        assert_eq!(CgroupLimits::for_vm(&c).pids_max, 2 + 1 + 6, "a disk's I/O thread");
        assert_eq!(l.cpu_weight, DEFAULT_CPU_WEIGHT, "the kernel's default without one");
        c.jail = Some(JailConfig { uid: 1000, gid: 1000, cgroup: None, cpu_weight: Some(300) });
        assert_eq!(CgroupLimits::for_vm(&c).cpu_weight, 300);
    }

    #[test]
    fn a_seccomp_kill_and_other_signals_become_reasons() {
        // Wait statuses as the kernel encodes them: the signal in the low bits.
        let r = record_from_status(libc::SIGSYS);
        assert_eq!(r.code, EXIT_FORBIDDEN_SYSCALL);
        assert!(r.reason.contains("seccomp"), "{}", r.reason);
        let r = record_from_status(libc::SIGKILL);
        assert_eq!(r.code, 128 + libc::SIGKILL);
        let r = record_from_status(3 << 8);
        assert_eq!(r.code, 3);
    }
}
