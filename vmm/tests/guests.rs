//! The VMM's device plumbing against this machine's real /dev/kvm, with
//! tiny guests assembled by hand (real mode, loaded at 0x1000). Linux guests
//! cannot run on this host's KVM (see DESIGN.md); qemu-test boots those.

use kvmos_vmm::builder::{build_machine, Machine};
use kvmos_vmm::config::VmConfig;
use kvmos_vmm::console::Console;
use kvmos_vmm::devices::bus::BusDevice;
use kvmos_vmm::exit::{ExitReason, EXIT_GUEST_FAULT};
use kvmos_vmm::runner;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};

const LOAD: u64 = 0x1000;

/// `mov al, 0xfe; out 0x64, al; hlt`: reset through the i8042.
const RESET: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64, 0xf4];

/// A 1 MiB machine whose vCPU 0 starts in real mode at [`LOAD`].
fn machine(code: &[u8]) -> Machine {
    let m = build_machine(1, 1, Console::new(false), Instant::now(), vec![]).expect("build a machine on /dev/kvm");
    m.vm.memory.write_slice(code, GuestAddress(LOAD)).unwrap();
    let v = &m.vcpus[0];
    let mut sregs = v.fd.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    v.fd.set_sregs(&sregs).unwrap();
    let regs = kvm_bindings::kvm_regs { rip: LOAD, rflags: 2, ..Default::default() };
    v.fd.set_regs(&regs).unwrap();
    m
}

/// Runs the machine on a thread with a deadline; returns the reason and
/// what the guest wrote on its serial port.
fn run(m: Machine) -> (ExitReason, Vec<u8>) {
    let console = m.console.clone();
    let exit = Arc::clone(&m.exit);
    let config = VmConfig::from_json(r#"{"kernel":"/none"}"#).unwrap();
    let sockets = runner::Sockets::bind(&config, &m).unwrap();
    let t = std::thread::spawn(move || runner::run(m, sockets, &config, None));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !t.is_finished() {
        if Instant::now() > deadline {
            exit.request(ExitReason::Stopped);
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let reason = t.join().unwrap();
    (reason, console.snapshot())
}

fn with_reset(code: &[u8]) -> Vec<u8> {
    let mut v = code.to_vec();
    v.extend_from_slice(RESET);
    v
}

#[test]
fn serial_output_then_i8042_reset() {
    let code = with_reset(&[
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'O', 0xee, // mov al, 'O'; out dx, al
        0xb0, b'K', 0xee, // mov al, 'K'; out dx, al
        0xb0, b'\n', 0xee, // mov al, '\n'; out dx, al
    ]);
    let (reason, out) = run(machine(&code));
    assert_eq!(reason, ExitReason::Reboot);
    assert_eq!(out, b"OK\n");
}

#[test]
fn serial_input_reaches_the_guest() {
    let code = with_reset(&[
        0xba, 0xfd, 0x03, // mov dx, 0x3fd (line status)
        0xec, // wait: in al, dx
        0xa8, 0x01, // test al, 1 (data ready)
        0x74, 0xfb, // jz wait
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xec, // in al, dx
        0xfe, 0xc0, // inc al
        0xee, // out dx, al
    ]);
    let m = machine(&code);
    m.serial.lock().unwrap().queue_input(b"A");
    let (reason, out) = run(m);
    assert_eq!(reason, ExitReason::Reboot);
    assert_eq!(out, b"B", "the guest read 'A' and echoed 'A'+1");
}

/// A device on the MMIO bus that records writes and answers reads.
struct Probe(Arc<Mutex<Vec<(u64, u8)>>>);
impl BusDevice for Probe {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0x5a);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.lock().unwrap().push((offset, data[0]));
    }
}

#[test]
fn mmio_hole_reads_all_ones_and_devices_get_their_accesses() {
    // Above the 1 MiB of RAM: the HMA at FFFF:0010 = 0x100000.
    let code = with_reset(&[
        0xb8, 0xff, 0xff, // mov ax, 0xffff
        0x8e, 0xd8, // mov ds, ax
        0xa0, 0x10, 0x00, // mov al, [0x10]      → 0x100000: nothing there
        0xa2, 0x20, 0x00, // mov [0x20], al      → 0x100010: nothing there
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xee, // out dx, al (what the read returned)
        0xa0, 0x30, 0x01, // mov al, [0x130]     → 0x100120: the probe
        0xee, // out dx, al
        0xa2, 0x31, 0x01, // mov [0x131], al     → probe offset 1
    ]);
    let m = machine(&code);
    let seen = Arc::new(Mutex::new(Vec::new()));
    // The buses are shared with the vCPUs and can change under them.
    m.mmio_bus.insert(0x100120, 0x10, Arc::new(Mutex::new(Probe(Arc::clone(&seen))))).unwrap();
    let counters = Arc::clone(&m.counters);
    let (reason, out) = run(m);
    assert_eq!(reason, ExitReason::Reboot, "the VMM survived the hole and the guest ran on");
    assert_eq!(out, vec![0xff, 0x5a]);
    assert_eq!(*seen.lock().unwrap(), vec![(1, 0x5a)]);
    assert_eq!(counters.unhandled.load(Ordering::Relaxed), 2, "the hole read and write were logged");
}

#[test]
fn unknown_ports_read_all_ones() {
    let code = with_reset(&[
        0xba, 0x34, 0x12, // mov dx, 0x1234
        0xec, // in al, dx
        0xee, // out dx, al (also unknown)
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xee, // out dx, al
    ]);
    let (reason, out) = run(machine(&code));
    assert_eq!(reason, ExitReason::Reboot);
    assert_eq!(out, vec![0xff]);
}

#[test]
fn triple_fault_stops_the_vm_with_a_guest_fault() {
    // Start in 64-bit mode exactly as a Linux kernel would (the VMM's own
    // boot GDT and page tables), whose boot IDT is empty: ud2 finds no gate
    // (#GP), nor does #GP (#DF), nor #DF: the CPU shuts down. (Not int3:
    // this host's kvm_pvm cannot emulate it, DESIGN.md.)
    let m = build_machine(1, 1, Console::new(false), Instant::now(), vec![]).unwrap();
    m.vm.memory.write_slice(&[0x0f, 0x0b, 0xf4], GuestAddress(LOAD)).unwrap(); // ud2; hlt
    kvmos_vmm::arch::regs::setup_sregs(&m.vm.memory, &m.vcpus[0].fd).unwrap();
    kvmos_vmm::arch::regs::setup_regs(&m.vcpus[0].fd, LOAD).unwrap();
    let (reason, _) = run(m);
    assert!(matches!(&reason, ExitReason::TripleFault(at) if at.contains("RIP 0x")), "{reason}");
    assert_eq!(reason.code(), EXIT_GUEST_FAULT);
}

#[test]
fn boot_marker_records_the_time_once() {
    let code = with_reset(&[
        0xba, 0x40, 0x04, // mov dx, 0x440
        0xee, // out dx, al
        0xee, // out dx, al (a second mark is ignored)
    ]);
    let m = machine(&code);
    let marker = Arc::clone(&m.boot_marker_us);
    let (reason, _) = run(m);
    assert_eq!(reason, ExitReason::Reboot);
    assert!(marker.load(Ordering::SeqCst) > 0);
}

#[test]
fn control_api_reports_pauses_resumes_and_stops() {
    use kvmos_contract::control::{Action, Client, ControlError, RunState};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let m = machine(&[0xe6, 0x80, 0xeb, 0xfe]); // out 0x80, al; jmp $
    let config =
        VmConfig::from_json(&format!(r#"{{"kernel":"/none","vm_id":"spin","api_socket":"{}"}}"#, sock.display()))
            .unwrap();
    let sockets = runner::Sockets::bind(&config, &m).unwrap();
    let t = std::thread::spawn(move || runner::run(m, sockets, &config, None));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);

    let control = Client::new(&sock);
    let info = control.vm().unwrap();
    assert_eq!(info.state, RunState::Running);
    assert_eq!(info.id, "spin");
    assert_eq!(info.config.vm_id, "spin");

    // The port write is the guest's one exit: once it is counted, the vCPU
    // is spinning inside the guest and only the pause's kick gets it out.
    let mut running = control.vm().unwrap();
    while running.counters.vcpu_exits == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
        running = control.vm().unwrap();
    }
    assert!(running.counters.vcpu_exits > 0, "the guest's port write was counted");
    control.act(Action::Pause).unwrap();
    let paused = control.vm().unwrap();
    assert_eq!(paused.state, RunState::Paused);
    assert!(paused.counters.vcpu_exits > running.counters.vcpu_exits, "the pause kicked the vCPU out of the guest");
    control.act(Action::Resume).unwrap();
    match control.act(Action::PowerOff) {
        Err(ControlError::Refused { status: 409, message }) => assert!(message.contains("use stop"), "{message}"),
        other => panic!("this guest has no ACPI: {other:?}"),
    }
    let (status, body) = control.request("POST", "/vm", None).unwrap();
    assert_eq!(status, 405, "{}", String::from_utf8_lossy(&body));
    control.act(Action::Stop).unwrap();
    let reason = t.join().unwrap();
    assert_eq!(reason, ExitReason::Stopped);
    assert_eq!(reason.code(), kvmos_vmm::exit::EXIT_STOPPED);
    assert!(!sock.exists(), "the socket is removed when the VM ends");
}
