//! Every configuration error, through the real binary: the message names
//! the field and the fix, and the exit code is 2 (bad configuration).

use std::process::Command;

const VMM: &str = env!("CARGO_BIN_EXE_kvmos-vmm");

/// Runs kvmos-vmm (without the jail, whose errors `jail.rs` tests);
/// returns (exit code, stderr).
fn vmm(args: &[&str]) -> (i32, String) {
    let out = Command::new(VMM).args(args).arg("--no-jail").output().expect("run kvmos-vmm");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn fake_kernel(dir: &std::path::Path) -> String {
    let mut k = vec![0u8; 0x400];
    k[0x202..0x206].copy_from_slice(b"HdrS");
    let p = dir.join("bzImage");
    std::fs::write(&p, k).unwrap();
    p.display().to_string()
}

fn assert_bad_config(args: &[&str], message: &str) {
    let (code, err) = vmm(args);
    assert_eq!(code, 2, "exit code for {args:?}: {err}");
    assert!(err.contains(message), "{args:?} should say {message:?}, said: {err}");
}

#[test]
fn kernel_problems() {
    let dir = tempfile::tempdir().unwrap();
    assert_bad_config(&[], "--kernel: give --kernel PATH, --firmware bios|uefi, or --config FILE");
    assert_bad_config(&["--kernel", "/nonexistent/bzImage"], "kernel: /nonexistent/bzImage does not exist");
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a kernel").unwrap();
    assert_bad_config(&["--kernel", text.to_str().unwrap()], "is not a Linux kernel");
    let k = fake_kernel(dir.path());
    assert_bad_config(
        &["--kernel", &k, "--initrd", "/nonexistent/initrd"],
        "initrd: /nonexistent/initrd does not exist",
    );
}

#[test]
fn size_limits() {
    let dir = tempfile::tempdir().unwrap();
    let k = fake_kernel(dir.path());
    assert_bad_config(&["--kernel", &k, "--vcpus", "0"], "vcpus: a VM needs at least 1 vCPU");
    assert_bad_config(
        &["--kernel", &k, "--vcpus", "5000"],
        "vcpus: 5000 is more than KVM allows here (254); use at most 254",
    );
    assert_bad_config(
        &["--kernel", &k, "--memory-mib", "99999999"],
        "memory_mib: 99999999 MiB is more than this host can give",
    );
    assert_bad_config(&["--kernel", &k, "--memory-mib", "4"], "memory_mib: 4 MiB is too small");
    // The command line with the arguments the VMM appends must fit the
    // kernel's 2048 bytes (it was an internal error once the VM was built).
    let disk = dir.path().join("d.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let max = kvmos_vmm::config::cmdline_room(2); // the disk and virtio-rng
    let long = "x".repeat(max + 1);
    let d = disk.to_str().unwrap();
    assert_bad_config(
        &["--kernel", &k, "--disk", d, "--cmdline", &long],
        &format!("cmdline: {} bytes is too long for a direct boot with 2 virtio device(s): at most {max}", max + 1),
    );
}

#[test]
fn disk_problems() {
    let dir = tempfile::tempdir().unwrap();
    let k = fake_kernel(dir.path());
    assert_bad_config(
        &["--kernel", &k, "--disk", "/nonexistent/disk.img"],
        "disks[0].path: /nonexistent/disk.img does not exist",
    );
    // Another VM (here: this test) holds the disk's lock.
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let held = std::fs::File::options().read(true).write(true).open(&disk).unwrap();
    // SAFETY: flock on a file this test owns.
    assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&held), libc::LOCK_EX) }, 0);
    assert_bad_config(&["--kernel", &k, "--disk", disk.to_str().unwrap()], "is in use by another VM (it is locked)");
}

#[test]
fn config_file_problems() {
    let dir = tempfile::tempdir().unwrap();
    let k = fake_kernel(dir.path());
    let cfg = dir.path().join("vm.json");
    std::fs::write(&cfg, format!(r#"{{"kernel":"{k}","memroy_mib":64}}"#)).unwrap();
    assert_bad_config(&["--config", cfg.to_str().unwrap()], "unknown field `memroy_mib`");
    assert_bad_config(&["--config", "/nonexistent/vm.json"], "cannot read the configuration file /nonexistent/vm.json");
    assert_bad_config(&["--kernel", &k, "--serial", "tty"], "--serial: write stdio, none or socket:PATH");
    assert_bad_config(&["--kernel", &k, "--net", "tap=tap0,mac=01:00:00:00:00:01"], "nets[0].mac:");
    assert_bad_config(&["--kernel", &k, "--net", "bridge=br0"], "--net: cannot read \"bridge=br0\"");
    assert_bad_config(&["--kernel", &k, "--net", "tap=a/b"], "nets[0].tap: \"a/b\" is not a valid interface name");
    // `lo` exists and is not a TAP device, so opening it fails.
    assert_bad_config(&["--kernel", &k, "--net", "tap=lo"], "nets[0].tap: cannot open the TAP device lo");
}

#[test]
fn firmware_problems() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let disk = p("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let k = fake_kernel(dir.path());
    assert_bad_config(
        &["--kernel", &k, "--firmware", "bios", "--disk", &disk],
        "kernel and firmware: give one of them, not both",
    );
    assert_bad_config(&["--firmware", "coreboot"], "--firmware: \"coreboot\" is not a firmware; write bios or uefi");
    assert_bad_config(
        &["--firmware", "uefi", "--disk", &disk],
        "--uefi-vars: UEFI needs this VM's copy of OVMF_VARS_4M.fd",
    );
    assert_bad_config(
        &["--firmware", "bios", "--firmware-path", "/nonexistent/bios.bin"],
        "firmware: cannot read /nonexistent/bios.bin",
    );
    // Truncated, and random bytes of a firmware's size.
    let bios = std::fs::read("/usr/share/seabios/bios-256k.bin").expect("seabios is installed by the host tools");
    std::fs::write(p("cut.bin"), &bios[..100_000]).unwrap();
    assert_bad_config(&["--firmware", "bios", "--firmware-path", &p("cut.bin")], "is 100000 bytes; a BIOS image is");
    let random = kvmos_vmm::tiny_guest::noise(0x2545_f491, bios.len());
    std::fs::write(p("random.bin"), random).unwrap();
    assert_bad_config(&["--firmware", "bios", "--firmware-path", &p("random.bin")], "has no x86 reset vector");
    assert_bad_config(
        &["--firmware", "uefi", "--firmware-path", &p("random.bin"), "--uefi-vars", &disk],
        "is not an OVMF code image",
    );
    // A variable store that does not go with the code.
    let code = "/usr/share/OVMF/OVMF_CODE_4M.fd";
    assert_bad_config(
        &["--firmware", "uefi", "--firmware-path", code, "--uefi-vars", &disk, "--disk", &disk],
        "but with this OVMF code (3653632 bytes) the variable store must be 540672 bytes",
    );
    assert_bad_config(
        &["--firmware", "bios", "--disk", &disk, "--boot-order", "1"],
        "boot_order[0]: disk 1 does not exist; the VM has 1 disk(s), numbered from 0",
    );
    assert_bad_config(&["--kernel", &k, "--boot-order", "0"], "boot_order: only firmware boot has a boot order");
}
