//! The kvmos-vmm binary end to end on this host's /dev/kvm with the tiny
//! guest: the console socket with two clients (the late one gets the
//! replay), input reaching the guest, the control API, and ACPI power-off
//! ending the VMM with code 0 and the exit file.

use kvmos_vmm::tiny_guest;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const VMM: &str = env!("CARGO_BIN_EXE_kvmos-vmm");

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(path).is_err() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads from a console client until `needle` appears.
fn read_until(s: &mut UnixStream, needle: &str) -> String {
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains(needle) {
        assert!(Instant::now() < deadline, "no {needle:?} in {:?}", String::from_utf8_lossy(&got));
        if let Ok(n) = s.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn console_clients_api_and_acpi_power_off_with_the_tiny_guest() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("tiny.elf");
    tiny_guest::write(&kernel).unwrap();
    let console = dir.path().join("console.sock");
    let api = dir.path().join("api.sock");
    let exit_file = dir.path().join("exit.json");
    let config = serde_json::json!({
        "vm_id": "tiny", "kernel": kernel, "memory_mib": 32, "rng": false,
        "serial": {"mode": "socket", "path": console}, "api_socket": api, "exit_file": exit_file,
        "jail": {"uid": kvmos_vmm::jail::testing::uid(0), "gid": kvmos_vmm::jail::testing::uid(0)},
    });
    let cfg = dir.path().join("vm.json");
    std::fs::write(&cfg, config.to_string()).unwrap();
    let mut vmm = Command::new(VMM).arg("--config").arg(&cfg).stderr(Stdio::inherit()).spawn().unwrap();
    wait_for(&console);
    wait_for(&api);

    let mut first = UnixStream::connect(&console).unwrap();
    read_until(&mut first, tiny_guest::PROMPT);
    first.write_all(b"hello").unwrap();
    read_until(&mut first, "hello");

    // A client attaching late gets the replay, then live output; both see it.
    let mut late = UnixStream::connect(&console).unwrap();
    let replay = read_until(&mut late, "hello");
    assert!(replay.contains(tiny_guest::READY_LINE), "{replay}");
    late.write_all(b"-both").unwrap();
    read_until(&mut first, "-both");
    read_until(&mut late, "-both");

    let control = kvmos_contract::control::Client::new(&api);
    let info = control.vm().unwrap();
    assert_eq!(info.state, kvmos_contract::control::RunState::Running);
    assert_eq!(info.counters.console_clients, 2);

    control.act(kvmos_contract::control::Action::PowerOff).unwrap();
    let code = vmm.wait().unwrap().code();
    assert_eq!(code, Some(0), "ACPI power-off is exit code 0");
    let record: kvmos_vmm::config::ExitRecord =
        serde_json::from_str(&std::fs::read_to_string(&exit_file).unwrap()).unwrap();
    assert_eq!(record.code, 0);
    assert!(record.reason.contains("powered off"), "{}", record.reason);
    assert!(!api.exists() && !console.exists(), "the sockets are removed");
}
