//! The panel supervising real kvmos-vmm processes on this host, driven
//! through its HTTPS API and console WebSocket: start, no double start, the
//! console, graceful and forced stops with their exit reasons, re-attaching
//! after the panel is killed, and powering the VMs off at SIGTERM.
//!
//! The guest is the tiny guest (kvmos_vmm::tiny_guest), bundled like the
//! demo guest: this host's KVM cannot run Linux guests (DESIGN.md).

use kvmos_qemu_test::panel::{HostPanel, Panel};
use kvmos_vmm::tiny_guest::{PROMPT, READY_LINE};
use serde_json::json;
use std::time::Duration;

const PASSWORD: &str = "a long admin password";
const T: Duration = Duration::from_secs(30);

fn logged_in(p: &HostPanel) -> Panel {
    let mut panel = Panel::new(p.port);
    panel.setup(&p.setup_code().unwrap(), PASSWORD).unwrap();
    panel
}

fn create_tiny(panel: &Panel, name: &str) -> String {
    let vm = panel
        .ok(
            "POST",
            "/api/v1/vms",
            Some(json!({"name": name, "vcpus": 1, "memory_mib": 32, "boot": {"type": "guest", "guest": "tiny"}})),
        )
        .unwrap();
    vm["id"].as_str().unwrap().to_string()
}

fn last_run(panel: &Panel, id: &str) -> serde_json::Value {
    let vm = panel.ok("GET", &format!("/api/v1/vms/{id}"), None).unwrap();
    vm["runs"].as_array().unwrap().last().cloned().unwrap()
}

#[test]
fn start_console_stop_and_force_off() {
    let host = HostPanel::start("panel-supervision").unwrap();
    let panel = logged_in(&host);
    let id = create_tiny(&panel, "tiny1");

    // Two starts at once: exactly one wins.
    let start = || panel.call("POST", &format!("/api/v1/vms/{id}/actions"), Some(json!({"action": "start"}))).unwrap();
    let (a, b) = std::thread::scope(|sc| {
        let a = sc.spawn(start);
        let b = sc.spawn(start);
        (a.join().unwrap(), b.join().unwrap())
    });
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "no double start: {a:?} {b:?}");
    let (status, err) =
        panel.call("POST", &format!("/api/v1/vms/{id}/actions"), Some(json!({"action": "start"}))).unwrap();
    assert_eq!(status, 409, "no double start: {err}");
    assert_eq!(panel.ok("GET", &format!("/api/v1/vms/{id}"), None).unwrap()["state"], "running");
    assert_eq!(host.vmm_pids().len(), 1);

    // The console replays the boot output, then echoes what is typed.
    let mut console = panel.console(&id).unwrap();
    let at = console.expect(PROMPT, T).unwrap();
    assert!(console.seen.contains(READY_LINE));
    console.send("hello-from-the-api").unwrap();
    console.expect_after(at, "hello-from-the-api", T).unwrap();

    let (status, err) = panel.call("DELETE", &format!("/api/v1/vms/{id}"), None).unwrap();
    assert_eq!(status, 409, "a running VM cannot be deleted: {err}");

    // Graceful: the ACPI power button; the guest powers off by itself.
    panel.action(&id, "shutdown").unwrap();
    panel.wait_state(&id, "stopped", T).unwrap();
    let run = last_run(&panel, &id);
    assert_eq!(run["exit_code"], 0, "{run}");
    assert!(run["reason"].as_str().unwrap().contains("powered off"), "{run}");

    // Forced: stopped from outside.
    panel.action(&id, "start").unwrap();
    panel.action(&id, "force-off").unwrap();
    panel.wait_state(&id, "stopped", T).unwrap();
    let run = last_run(&panel, &id);
    assert_eq!(run["exit_code"], 5, "{run}");
    assert!(host.vmm_pids().is_empty(), "the run directory is cleaned up");

    // A VMM that no longer answers (stopped with SIGSTOP) is killed through
    // the panel's launcher, which keeps root for that.
    panel.action(&id, "start").unwrap();
    let started = host.vmm_pids()[0];
    let sock = host.dir.join("run").join(&id).join("control.sock");
    assert_eq!(owner(&sock), (kvmos_contract::panel::UID, kvmos_contract::panel::GID), "the panel's socket");
    let jailed = kvmos_contract::process::jailed_child(started as u32).unwrap();
    // SAFETY: stops the test's own VMM.
    unsafe { libc::kill(jailed as i32, libc::SIGSTOP) };
    panel.action(&id, "force-off").unwrap();
    panel.wait_state(&id, "stopped", T).unwrap();
    let run = last_run(&panel, &id);
    assert!(run["reason"].as_str().unwrap().starts_with("forced off"), "{run}");
    assert!(host.vmm_pids().is_empty());

    let audit = panel.ok("GET", "/api/v1/audit", None).unwrap();
    let actions: Vec<&str> = audit.as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    for a in ["vm.start", "vm.shutdown", "vm.forceoff", "vm.create"] {
        assert!(actions.contains(&a), "{a} audited: {actions:?}");
    }
}

fn owner(path: &std::path::Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (m.uid(), m.gid())
}

/// The panel runs as its own user with two capabilities, and nothing in
/// its data directory is readable by anyone else (a VMM's user included).
#[test]
fn the_panel_runs_as_its_own_user_and_keeps_its_files_to_itself() {
    use std::os::unix::fs::MetadataExt;
    let host = HostPanel::start("panel-privileges").unwrap();
    let panel = logged_in(&host);
    create_tiny(&panel, "files");
    let status = std::fs::read_to_string(format!("/proc/{}/status", host.pid().unwrap())).unwrap();
    let field = |key: &str| status.lines().find_map(|l| l.strip_prefix(&format!("{key}:"))).unwrap().trim().to_string();
    let uid = kvmos_contract::panel::UID.to_string();
    assert_eq!(field("Uid").split_whitespace().collect::<Vec<_>>(), [uid.as_str(); 4]);
    // CAP_NET_BIND_SERVICE (10) and CAP_NET_ADMIN (12), nothing else.
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(field(set), "0000000000001400", "{set}");
    }
    assert_eq!(field("CapInh"), "0000000000000000");
    assert_eq!(field("NoNewPrivs"), "1");
    let mut files = 0;
    let mut todo = vec![host.dir.join("data")];
    while let Some(p) = todo.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o077), (kvmos_contract::panel::UID, 0), "{}", p.display());
        if m.is_dir() {
            todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            files += 1;
        }
    }
    assert!(files >= 3, "the password, the TLS key and the VM definition at least");
    let ps = std::fs::read_to_string(format!("/proc/{}/task/{0}/children", host.pid().unwrap())).unwrap();
    let launcher = ps.split_whitespace().next().expect("the launcher");
    let l = std::fs::read_to_string(format!("/proc/{launcher}/status")).unwrap();
    assert!(l.contains("Name:\tkvmos-launcher"), "{l}");
}

#[test]
fn a_restarted_panel_reattaches_and_sigterm_powers_vms_off() {
    let mut host = HostPanel::start("panel-reattach").unwrap();
    let panel = logged_in(&host);
    let id = create_tiny(&panel, "survivor");
    panel.action(&id, "start").unwrap();
    let pids = host.vmm_pids();
    assert_eq!(pids.len(), 1);

    // The panel crashes; its VMM does not.
    host.restart().unwrap();
    assert_eq!(host.vmm_pids(), pids, "the same VMM is still running");
    let mut panel = Panel::new(host.port);
    panel.login(PASSWORD).unwrap();
    assert_eq!(panel.ok("GET", &format!("/api/v1/vms/{id}"), None).unwrap()["state"], "running", "re-attached");
    let (status, _) =
        panel.call("POST", &format!("/api/v1/vms/{id}/actions"), Some(json!({"action": "start"}))).unwrap();
    assert_eq!(status, 409, "not started twice");
    let mut console = panel.console(&id).unwrap();
    let at = console.expect(PROMPT, T).unwrap();
    console.send("still-here").unwrap();
    console.expect_after(at, "still-here", T).unwrap();

    // At shutdown init sends SIGTERM: the VMs power off first.
    let status = host.terminate(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "{status}\n{}", host.log());
    let vm_file = host.dir.join(format!("data/panel/vms/{id}.json"));
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(vm_file).unwrap()).unwrap();
    let run = record["runs"].as_array().unwrap().last().unwrap();
    assert_eq!(run["exit_code"], 0, "powered off gracefully: {run}\n{}", host.log());
    // The VMM was started by the panel that was killed, so it was
    // reparented; until its new parent reaps it, it may linger as a zombie.
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
    };
    assert!(!pids.iter().any(|&p| alive(p)), "no VMM left");
}

/// A PC VM from the panel: a raw disk image uploaded as a disk, booted by
/// SeaBIOS (BIOS firmware). The console shows the firmware's screen and
/// what the disk's boot sector prints; the boot order from the panel picks
/// the disk.
#[test]
fn a_bios_vm_boots_an_uploaded_disk_image() {
    let host = HostPanel::start("panel-bios-vm").unwrap();
    let panel = logged_in(&host);
    panel.upload("first.img", "disk", kvmos_vmm::tiny_guest::boot_disk("panel boot sector one")).unwrap();
    panel.upload("second.img", "disk", kvmos_vmm::tiny_guest::boot_disk("panel boot sector two")).unwrap();
    let vm = panel
        .ok(
            "POST",
            "/api/v1/vms",
            Some(json!({
                "name": "pc1", "vcpus": 1, "memory_mib": 64,
                "boot": {"type": "firmware", "firmware": "bios"},
                "disks": [{"image": "first.img"}, {"image": "second.img"}],
                "boot_order": [1, 0],
            })),
        )
        .unwrap();
    let id = vm["id"].as_str().unwrap().to_string();
    panel.action(&id, "start").unwrap();
    let mut console = panel.console(&id).unwrap();
    console.expect("SeaBIOS (version", T).unwrap();
    console.expect("panel boot sector two", Duration::from_secs(60)).unwrap();
    assert!(!console.seen.contains("panel boot sector one"), "the boot order picked the second disk");
    panel.action(&id, "force-off").unwrap();
    panel.wait_state(&id, "stopped", T).unwrap();

    // A kernel command line makes no sense for firmware: the field says so.
    let (status, err) = panel
        .call(
            "POST",
            "/api/v1/vms",
            Some(json!({
                "name": "pc2", "vcpus": 1, "memory_mib": 64, "cmdline": "quiet",
                "boot": {"type": "firmware", "firmware": "uefi"}, "disks": [{"image": "first.img"}],
            })),
        )
        .unwrap();
    assert_eq!((status, err["field"].as_str()), (400, Some("cmdline")), "{err}");
}

/// An ISO that is not hybrid boots from the CD-ROM drive the panel puts it
/// in, and the admin changes the medium of the running VM: the guest (which
/// reads its medium through the BIOS every 300 ms) sees it ejected, then
/// sees the new ISO; the VM's definition keeps the new one.
#[test]
fn an_iso_boots_from_the_cdrom_and_the_panel_changes_its_medium() {
    use kvmos_vmm::tiny_guest::{CDROM_READ, CDROM_READ_FAILED};
    let host = HostPanel::start("panel-cdrom").unwrap();
    let panel = logged_in(&host);
    panel.upload_cdrom_media(&kvmos_qemu_test::work_dir("panel-cdrom-media").unwrap()).unwrap();
    let id = panel.start_bios_vm("cd1", "a.iso").unwrap();
    let mut console = panel.console(&id).unwrap();
    console.expect("Booting from DVD/CD", T).unwrap();
    let at = console.expect(&format!("{CDROM_READ}KVMOSTEST"), T).unwrap();
    let medium = format!("/api/v1/vms/{id}/disks/0/medium");
    panel.ok("PUT", &medium, Some(json!({"image": null}))).unwrap();
    let at = console.expect_after(at, CDROM_READ_FAILED, T).unwrap();
    let changed = panel.ok("PUT", &medium, Some(json!({"image": "b.iso"}))).unwrap();
    assert_eq!(changed["spec"]["disks"][0]["image"], "b.iso", "{changed}");
    console.expect_after(at, &format!("{CDROM_READ}SECONDISO"), T).unwrap();
    panel.action(&id, "force-off").unwrap();
    panel.wait_state(&id, "stopped", T).unwrap();
}

/// cloud-init's seed reaches the guest: a VM with cloud-init settings gets
/// a second disk, a FAT volume labelled CIDATA, whose label a boot sector
/// reads through the BIOS; the panel shows what the seed holds.
#[test]
fn a_vm_with_cloud_init_settings_gets_its_seed_as_a_disk() {
    use kvmos_vmm::tiny_guest::{self, CDROM_READ};
    let host = HostPanel::start("panel-cloud-init").unwrap();
    let panel = logged_in(&host);
    panel.upload("reader.img", "disk", tiny_guest::disk_label_reader("reading the second disk")).unwrap();
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKvmosKvmosKvmosKvmosKvmosKvmosKvmosKvmos admin@laptop";
    let vm = panel
        .ok(
            "POST",
            "/api/v1/vms",
            Some(json!({
                "name": "cloud1", "vcpus": 1, "memory_mib": 64,
                "boot": {"type": "firmware", "firmware": "bios"}, "disks": [{"image": "reader.img"}],
                "cloud_init": {"hostname": "web1", "user": "ops", "ssh_keys": [key]},
            })),
        )
        .unwrap();
    let id = vm["id"].as_str().unwrap().to_string();
    panel.action(&id, "start").unwrap();
    let mut console = panel.console(&id).unwrap();
    console.expect("reading the second disk", T).unwrap();
    console.expect(&format!("{CDROM_READ}CIDATA     "), T).unwrap();
    let seed = panel.ok("GET", &format!("/api/v1/vms/{id}/cloud-init"), None).unwrap();
    assert!(seed["user_data"].as_str().unwrap().contains(key), "{seed}");
    panel.action(&id, "force-off").unwrap();
    panel.wait_state(&id, "stopped", T).unwrap();
}

/// A VMM that makes a system call its seccomp filter forbids is killed,
/// and the panel records why: the VM is stopped, and its last run has the
/// exit code and a reason that names seccomp. The VMM here is a build with
/// its test hooks, whose control API makes the forbidden call on request.
#[test]
fn a_vmm_killed_by_seccomp_is_recorded_with_its_reason() {
    let vmm = kvmos_qemu_test::vmm_with_test_hooks().unwrap();
    let host = HostPanel::start_with_vmm("panel-seccomp-kill", Some(vmm)).unwrap();
    let panel = logged_in(&host);
    let other = create_tiny(&panel, "tiny2");
    panel.action(&other, "start").unwrap();
    let id = create_tiny(&panel, "hostile1");
    panel.action(&id, "start").unwrap();
    panel.console(&id).unwrap().expect(PROMPT, T).unwrap();
    // The test, as root, talks to the VMM's own API, as a compromised VMM
    // thread would act on its own.
    // No answer comes: the VMM dies in the call.
    let vmm_api = kvmos_contract::control::Client::new(host.dir.join("run").join(&id).join("control.sock"));
    let _ = vmm_api.request("PUT", "/actions", Some(r#"{"action":"forbidden_syscall"}"#));
    panel.wait_state(&id, "stopped", T).unwrap();
    let run = last_run(&panel, &id);
    assert_eq!(run["exit_code"], kvmos_vmm::exit::EXIT_FORBIDDEN_SYSCALL, "{run}");
    let reason = run["reason"].as_str().unwrap();
    assert!(reason.contains("seccomp") && reason.contains("SIGSYS"), "{run}");
    // The other VM carries on.
    assert_eq!(host.vmm_pids().len(), 1, "only the other VM's VMM is left");
    assert_eq!(panel.ok("GET", &format!("/api/v1/vms/{other}"), None).unwrap()["state"], "running");
    let mut console = panel.console(&other).unwrap();
    let at = console.expect(PROMPT, T).unwrap();
    console.send("still-here").unwrap();
    console.expect_after(at, "still-here", T).unwrap();
    panel.action(&other, "force-off").unwrap();
    panel.wait_state(&other, "stopped", T).unwrap();
}

/// Force off while the guest reboots over and over (its boot sector resets
/// the machine at once): whenever it lands (the VMM running, ended, or
/// being started again), it answers OK and the VM stays off. It once
/// answered 500 (the old VMM already gone) or 409 (between a VMM's end and
/// the next one's start) and the VM came back.
#[test]
fn force_off_during_a_reboot_loop_stops_the_vm() {
    let host = HostPanel::start("panel-reboot-loop").unwrap();
    let panel = logged_in(&host);
    panel.upload("loop.img", "disk", kvmos_vmm::tiny_guest::boot_disk("rebooting at once")).unwrap();
    let id = panel.start_bios_vm("loop1", "loop.img").unwrap();
    for delay_ms in [0u64, 200, 400, 600, 800, 1000, 1300] {
        let mut console = panel.console(&id).unwrap();
        console.expect("rebooting at once", T).unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        panel.action(&id, "force-off").unwrap_or_else(|e| panic!("force off {delay_ms} ms after a boot: {e}"));
        panel.wait_state(&id, "stopped", T).unwrap();
        std::thread::sleep(Duration::from_secs(2));
        let vm = panel.ok("GET", &format!("/api/v1/vms/{id}"), None).unwrap();
        assert_eq!(vm["state"], "stopped", "it stays off ({delay_ms} ms): {vm}");
        panel.action(&id, "start").unwrap();
    }
    panel.action(&id, "force-off").unwrap();
    panel.wait_state(&id, "stopped", T).unwrap();
}

/// Connections that send nothing, or a request head that never ends, are
/// closed (they were held open for ever): 200 of each, and the panel still
/// answers while they wait and after.
#[test]
fn idle_and_half_open_connections_are_closed() {
    use std::io::{Read, Write};
    let host = HostPanel::start("panel-idle-connections").unwrap();
    let panel = Panel::new(host.port);
    let mut idle: Vec<std::net::TcpStream> =
        (0..200).map(|_| std::net::TcpStream::connect(("127.0.0.1", host.port)).unwrap()).collect();
    // From another address: one address may hold at most 256 connections.
    let mut half: Vec<_> = (0..200)
        .map(|_| {
            let tcp = kvmos_qemu_test::panel::connect_from([127, 0, 0, 2].into(), host.port).unwrap();
            let mut tls = panel.tls_over(tcp).unwrap();
            tls.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n").unwrap();
            tls.flush().unwrap();
            tls
        })
        .collect();
    let (status, body) = panel.call("GET", "/api/v1/health", None).unwrap();
    assert_eq!(status, 200, "the panel answers beside 400 idle connections: {body}");
    let started = std::time::Instant::now();
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut b = [0u8; 64];
        assert!(matches!(s.read(&mut b), Ok(0) | Err(_)), "an idle connection stays open");
    }
    for s in &mut half {
        s.sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut b = [0u8; 64];
        // Closed, perhaps after an error answer; never a hang.
        loop {
            match s.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
    assert!(started.elapsed() < Duration::from_secs(25), "closed within the header timeout: {:?}", started.elapsed());
    let (status, _) = panel.call("GET", "/api/v1/health", None).unwrap();
    assert_eq!(status, 200);
}

/// One address may hold at most 256 connections open
/// (`webadmin/src/connections.rs`): the next is closed at once, before
/// TLS; other addresses are still served; a closed connection frees its
/// slot.
#[test]
fn connections_over_the_per_address_cap_are_closed_and_others_are_served() {
    use kvmos_qemu_test::panel::connect_from;
    use std::io::Read;
    const PER_ADDRESS: usize = 256;
    let host = HostPanel::start("panel-connection-cap").unwrap();
    let panel = Panel::new(host.port);
    let crowd: std::net::Ipv4Addr = [127, 0, 0, 7].into();
    let mut held: Vec<_> = (0..PER_ADDRESS).map(|_| connect_from(crowd, host.port).unwrap()).collect();
    // The panel admits connections in the order they come: wait until the
    // last of them is in (its TLS handshake would be answered).
    std::thread::sleep(Duration::from_secs(1));
    let mut over = connect_from(crowd, host.port).unwrap();
    over.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = std::time::Instant::now();
    let mut b = [0u8; 16];
    match over.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the connection over the cap is closed at once, not {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3), "closed at once: {:?}", started.elapsed());

    let (status, body) = panel.call("GET", "/api/v1/health", None).unwrap();
    assert_eq!(status, 200, "another address is served: {body}");

    // Well before the panel's 10 s TLS handshake limit closes the rest.
    drop(held.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let tcp = connect_from(crowd, host.port).unwrap();
        let answer = panel.tls_over(tcp).and_then(|mut tls| {
            use std::io::Write;
            tls.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut s = String::new();
            let _ = tls.read_to_string(&mut s);
            Ok(s)
        });
        if matches!(&answer, Ok(s) if s.starts_with("HTTP/1.1 200")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "a closed connection frees its slot: {answer:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(held);
}
