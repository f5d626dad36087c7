//! The jail on this host's /dev/kvm: a VMM booting SeaBIOS and the
//! display guest runs as its own user, with no capabilities, in its own
//! namespaces with an empty root, every thread under seccomp; its screen,
//! keys and API still work; a forbidden system call kills it, and the exit
//! record says why.

mod support;

use kvmos_vmm::jail::testing;
use kvmos_vmm::tiny_guest;
use kvmos_vmm::vnc::client::Viewer;
use kvmos_vmm::vnc::rfb::{ENCODING_DESKTOP_SIZE, ENCODING_RAW};
use std::process::Command;
use support::{Vm, VMM};

fn status_field(pid: u32, task: Option<&str>, key: &str) -> String {
    let path = match task {
        Some(t) => format!("/proc/{pid}/task/{t}/status"),
        None => format!("/proc/{pid}/status"),
    };
    let status = std::fs::read_to_string(&path).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in {path}"))
        .trim()
        .to_string()
}

#[test]
fn a_jailed_vmm_has_its_own_user_no_capabilities_its_own_namespaces_and_seccomp_on_every_thread() {
    let mut vm = Vm::start(&tiny_guest::display_disk(), 1);
    let uid = testing::uid(1);
    vm.wait_console("TEXT\n", 1);
    // The screen, the keyboard and the API work from inside the jail.
    let mut viewer = Viewer::connect(&vm.path("vnc.sock"), &[ENCODING_RAW, ENCODING_DESKTOP_SIZE]).unwrap();
    viewer.request(false).unwrap();
    viewer.update().unwrap();
    assert_eq!((viewer.width, viewer.height), (720, 400));
    viewer.tap_scancode(0x1E).unwrap();
    vm.wait_console("K1E\nK9E\n", 1);
    let (status, _) = vm.api("GET", "/screen/text", None);
    assert_eq!(status, 200);

    let pid = vm.jailed_pid();
    let ids = format!("{uid}\t{uid}\t{uid}\t{uid}");
    assert_eq!(status_field(pid, None, "Uid"), ids, "real, effective, saved and file-system uid");
    assert_eq!(status_field(pid, None, "Gid"), ids);
    assert_eq!(status_field(pid, None, "Groups"), "");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, None, set), "0000000000000000", "{set}");
    }
    assert_eq!(status_field(pid, None, "NoNewPrivs"), "1");
    // PID 1 of its own PID namespace.
    assert_eq!(status_field(pid, None, "NSpid"), format!("{pid}\t1"));
    // Every thread (event loop, vCPU, disk, API, VNC) in seccomp's filter mode.
    // (KVM's own kernel worker, kvm-nx-lpage-recovery, shows among them on
    // newer kernels; it runs no user code.)
    let comm = |t: &str| std::fs::read_to_string(format!("/proc/{pid}/task/{t}/comm")).unwrap().trim().to_string();
    let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| t.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|t| !comm(t).starts_with("kvm-"))
        .collect();
    let mut names: Vec<String> = tasks.iter().map(|t| comm(t)).collect();
    names.sort();
    assert_eq!(names, ["api", "disk0", "kvmos-vmm", "vcpu0", "vnc"]);
    for t in &tasks {
        assert_eq!(status_field(pid, Some(t), "Seccomp"), "2", "thread {t}");
    }
    for ns in ["mnt", "net", "uts", "pid"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "the {ns} namespace");
    }
    // An empty root; no core dumps; the process limit of one VM.
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root")).unwrap().collect();
    assert!(root.is_empty(), "the jail's root holds {root:?}");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let limit = |name: &str| {
        let l = limits.lines().find(|l| l.starts_with(name)).unwrap().to_string();
        l[name.len()..].split_whitespace().next().unwrap().to_string()
    };
    assert_eq!(limit("Max core file size"), "0");
    assert_eq!(limit("Max processes"), "6", "1 vCPU + 1 disk + 4");
    assert!(limit("Max open files").parse::<u32>().unwrap() < 1024);

    // A stop through the API: the exit record from the jail's parent, and
    // the sockets gone.
    let (status, _) = vm.api("PUT", "/actions", Some(r#"{"action":"stop"}"#));
    assert_eq!(status, 204);
    let (code, record) = vm.wait_exit();
    assert_eq!(code, kvmos_vmm::exit::EXIT_STOPPED);
    assert_eq!(record["code"], kvmos_vmm::exit::EXIT_STOPPED);
    assert_eq!(record["reason"], "stopped from outside");
    for s in ["vnc.sock", "api.sock"] {
        assert!(!vm.path(s).exists(), "{s} removed");
    }
}

#[test]
fn a_forbidden_system_call_kills_the_vmm_and_the_exit_record_says_why() {
    let mut vm = Vm::start(&tiny_guest::display_disk(), 2);
    vm.wait_console("TEXT\n", 1);
    // The answer never comes: the VMM dies in the call.
    let _ = vm.api("PUT", "/actions", Some(r#"{"action":"forbidden_syscall"}"#));
    let (code, record) = vm.wait_exit();
    assert_eq!(code, kvmos_vmm::exit::EXIT_FORBIDDEN_SYSCALL);
    assert_eq!(record["code"], kvmos_vmm::exit::EXIT_FORBIDDEN_SYSCALL);
    let reason = record["reason"].as_str().unwrap();
    assert!(reason.contains("seccomp") && reason.contains("SIGSYS"), "{reason}");
}

#[test]
fn the_jail_is_required_unless_asked_off_and_never_root() {
    let out = Command::new(VMM).args(["--firmware", "bios"]).output().unwrap();
    assert_eq!(out.status.code(), Some(kvmos_vmm::exit::EXIT_BAD_CONFIG));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("jail") && err.contains("--no-jail"), "{err}");
    let out = Command::new(VMM).args(["--firmware", "bios", "--jail-uid", "0", "--jail-gid", "7"]).output().unwrap();
    assert_eq!(out.status.code(), Some(kvmos_vmm::exit::EXIT_BAD_CONFIG));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("jail.uid") && err.contains("never runs as root"), "{err}");
    let weight = ["--jail-uid", "1000", "--jail-gid", "1000", "--jail-cgroup", "/sys/fs/cgroup/kvmos.slice/t"];
    let out =
        Command::new(VMM).args(["--firmware", "bios"]).args(weight).args(["--jail-cpu-weight", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(kvmos_vmm::exit::EXIT_BAD_CONFIG));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("jail.cpu_weight") && err.contains("1 to 10000"), "{err}");
}

#[test]
fn a_guest_that_triple_faults_in_the_jail_ends_with_the_guest_fault_code_and_the_log_says_where() {
    let mut vm = Vm::start(&tiny_guest::fault_disk("about to fault"), 3);
    vm.wait_console("about to fault", 1);
    let (code, record) = vm.wait_exit();
    assert_eq!(code, kvmos_vmm::exit::EXIT_GUEST_FAULT, "{record}");
    let reason = record["reason"].as_str().unwrap();
    assert!(reason.contains("triple fault") && reason.contains("IDT 0x0+0x0"), "the panel sees where: {record}");
    // The vCPU read its registers for the log under its seccomp filter.
    let log = std::fs::read_to_string(vm.path("vmm.err")).unwrap();
    assert!(log.contains("triple fault; the CPU was at vCPU 0: RIP 0x"), "{log}");
    assert!(log.contains("IDT 0x0+0x0"), "the empty interrupt table it loaded: {log}");
}

/// The memory-limit guest of the appliance tests really makes the VMM hold
/// the memory it touches (here 48 MiB of its 64).
#[test]
fn the_memory_hog_guest_makes_the_vmm_hold_its_memory() {
    let mut vm = Vm::start(&tiny_guest::memory_hog_disk("hog ready", 48), 4);
    vm.wait_console(tiny_guest::HOG_WAITING, 1);
    let pid = vm.jailed_pid();
    let rss = || {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status_line_kib(&s, "VmRSS")
    };
    let before = rss();
    let _ = vm.api("GET", "/vm", None);
    vm.send_console(b"x");
    vm.wait_console(tiny_guest::HOG_DONE, 1);
    assert!(rss() > before + 40 * 1024, "VmRSS {before} kB, then {} kB", rss());
    let (status, _) = vm.api("PUT", "/actions", Some(r#"{"action":"stop"}"#));
    assert_eq!(status, 204);
    vm.wait_exit();
}

fn status_line_kib(status: &str, key: &str) -> u64 {
    let line = status.lines().find(|l| l.starts_with(&format!("{key}:"))).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
