//! The whole appliance, end to end, driven only from outside as an admin
//! would: `kvmos.img` boots under QEMU TCG (`-cpu max`, so KVM works
//! nested inside) with a data disk, and the test acts through the forwarded
//! panel port and the serial console of the appliance only.
//!
//! Day one: set up with the code from the console, check the host, create
//! the demo guest with a new disk and a NIC on br0, use its shell over the
//! console WebSocket, write a file on its disk, shut it down, reboot the
//! appliance from the panel (the definition, the file and the autostart VM
//! come back), and power the appliance off with a VM running.

use kvmos_image_builder::guest::READY_LINE;
use kvmos_image_builder::qemu::{free_port, QemuOptions};
use kvmos_qemu_test::browser::Browser;
use kvmos_qemu_test::panel::{Console, Panel, Screen};
use kvmos_qemu_test::ssh::Ssh;
use kvmos_qemu_test::{image, wait_https, work_dir, Appliance, Boot, DataDisk, BOOT_TIMEOUT};
use kvmos_vmm::vnc::client::Viewer;
use serde_json::json;
use std::time::Duration;

const PASSWORD: &str = "day one admin password";
/// Nested guests under TCG are slow: minutes, not seconds.
const GUEST_TIMEOUT: Duration = Duration::from_secs(300);
const PROMPT: &str = "demo:/# ";

/// Reads the setup code from the console block.
fn setup_code(vm: &mut Appliance) -> String {
    let block = vm.expect("(enter it in the panel", BOOT_TIMEOUT).unwrap();
    let line = block.lines().rev().find(|l| l.contains("Setup code:")).unwrap();
    line.split_whitespace().nth(2).unwrap().to_string()
}

fn demo_vm_spec(name: &str) -> serde_json::Value {
    json!({"name": name, "vcpus": 1, "memory_mib": 128, "boot": {"type": "guest", "guest": "demo"},
           "disks": [{"image": format!("{name}-disk"), "size_mib": 64}], "network": true, "autostart": true})
}

#[test]
fn day_one_reboot_and_power_off() {
    let img = image().unwrap();
    let dir = work_dir("appliance-day-one").unwrap();
    let disk = DataDisk::create(&dir.join("data.img"), 512, "KVMOS_DATA").unwrap();
    let monitor = dir.join("monitor.sock");
    let port = free_port().unwrap();
    let mut opts = QemuOptions::new(Boot::Uefi { disk: img.disk_image.clone() }, &dir);
    opts.drives = vec![disk.path.clone()];
    opts.monitor_socket = Some(monitor.clone());
    opts.panel_host_port = Some(port);
    let mut vm = Appliance::boot("appliance-day-one", opts).unwrap();

    // 1. The setup code from the console; set the password (this logs in).
    let code = setup_code(&mut vm);
    wait_https(port, "/api/v1/health", BOOT_TIMEOUT).unwrap();
    let mut panel = Panel::new(port);
    panel.setup(&code, PASSWORD).unwrap();

    // 2. The host: KVM works (nested) and the data disk is mounted.
    let host = panel.ok("GET", "/api/v1/host", None).unwrap();
    assert_eq!(host["kvm_available"], true, "{host}");
    assert_eq!(host["data_disk"]["mounted"], true, "{host}");

    // 3. The demo guest with a new 64 MiB disk and a NIC on br0.
    let created = panel.ok("POST", "/api/v1/vms", Some(demo_vm_spec("demo1"))).unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    panel.action(&id, "start").unwrap();

    // 4. Its shell, over the console WebSocket.
    let mut console = panel.console(&id).unwrap();
    let mut at = console.expect(READY_LINE, GUEST_TIMEOUT).unwrap();
    console.send("\n").unwrap();
    at = console.expect_after(at, PROMPT, GUEST_TIMEOUT).unwrap();
    console.send("echo answer-$((6*7))\n").unwrap();
    at = console.expect_after(at, "answer-42", GUEST_TIMEOUT).unwrap();
    // The NIC on br0 got a lease from the network the host is on.
    console
        .send("for i in $(seq 60); do ip -4 addr show eth0 | grep -q 'inet 10.0.2' && break; sleep 1; done; ip -4 addr show eth0 | grep -o 'inet 10.0.2[0-9.]*' | sed 's/^/LEASE /'\n")
        .unwrap();
    at = console.expect_after(at, "LEASE inet 10.0.2", GUEST_TIMEOUT).unwrap();

    // 5. A file on the VM's disk, then a graceful shutdown from the panel.
    console
        .send("mke2fs -q /dev/vda && mkdir -p /mnt && mount -t ext4 /dev/vda /mnt && echo kvmos-e2e-proof > /mnt/proof.txt && umount /mnt && echo WROTE-$((1+1))\n")
        .unwrap();
    console.expect_after(at, "WROTE-2", GUEST_TIMEOUT).unwrap();
    panel.action(&id, "shutdown").unwrap();
    let stopped = panel.wait_state(&id, "stopped", GUEST_TIMEOUT).unwrap();
    let run = stopped["runs"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(run["exit_code"], 0, "the guest powered off by itself: {run}");

    // 6. Reboot the appliance from the panel; everything comes back.
    panel.ok("POST", "/api/v1/host/power", Some(json!({"action": "reboot"}))).unwrap();
    // (The kernel's own reboot messages may cut into init's last line, so
    // wait for the signal and then the next boot.)
    vm.expect("kvmos-init: received SIGUSR1: reboot", BOOT_TIMEOUT).unwrap();
    vm.expect("kvmos-init: ready", BOOT_TIMEOUT).unwrap();
    wait_https(port, "/api/v1/health", BOOT_TIMEOUT).unwrap();
    let mut panel = Panel::new(port);
    panel.login(PASSWORD).unwrap();
    let again = panel.wait_state(&id, "running", GUEST_TIMEOUT).unwrap();
    assert_eq!(again["name"], "demo1", "the definition survived: {again}");
    let mut console = panel.console(&id).unwrap();
    let mut at = console.expect(READY_LINE, GUEST_TIMEOUT).unwrap();
    console.send("\n").unwrap();
    at = console.expect_after(at, PROMPT, GUEST_TIMEOUT).unwrap();
    console.send("mkdir -p /mnt && mount -t ext4 /dev/vda /mnt && cat /mnt/proof.txt | sed 's/^/FOUND /'\n").unwrap();
    at = console.expect_after(at, "FOUND kvmos-e2e-proof", GUEST_TIMEOUT).unwrap();
    let _ = at;

    // 7. system_powerdown with the VM running: the VM powers off first,
    // then the appliance, and QEMU exits by itself with a clean disk.
    vm.monitor(&monitor, "system_powerdown").unwrap();
    vm.expect("power button pressed: power off", BOOT_TIMEOUT).unwrap();
    let shutdown = vm.expect("shutdown: sync and unmount the data disk", BOOT_TIMEOUT).unwrap();
    assert!(shutdown.contains("powering off 1 VM"), "the panel powered the VM off:\n{shutdown}");
    assert!(shutdown.contains("the guest powered off"), "gracefully:\n{shutdown}");
    let status = vm.wait_exit(Duration::from_secs(120)).unwrap();
    assert!(status.success(), "QEMU exits by itself: {status}");
    disk.check_clean().unwrap();
}

/// Steps 1 to 4 in headless Chromium against the appliance; screenshots in
/// target/qemu-test/appliance-browser/screenshots/.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn day_one_in_chromium() {
    let (mut vm, port, dir) = tokio::task::spawn_blocking(|| {
        let img = image().unwrap();
        let dir = work_dir("appliance-browser").unwrap();
        let disk = DataDisk::create(&dir.join("data.img"), 256, "KVMOS_DATA").unwrap();
        let mut opts =
            QemuOptions::new(Boot::Direct { kernel: img.bz_image.clone(), initrd: img.initramfs.clone() }, &dir);
        opts.drives = vec![disk.path.clone()];
        let port = free_port().unwrap();
        opts.panel_host_port = Some(port);
        (Appliance::boot("appliance-browser", opts).unwrap(), port, dir)
    })
    .await
    .unwrap();
    let code = tokio::task::spawn_blocking(move || {
        let code = setup_code(&mut vm);
        wait_https(port, "/api/v1/health", BOOT_TIMEOUT).unwrap();
        (vm, code)
    })
    .await
    .unwrap();
    let (_vm, code) = code;
    let shots = dir.join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let b = Browser::start(&shots).await.unwrap();
    let t = Duration::from_secs(60);
    b.client.goto(&format!("https://127.0.0.1:{port}/")).await.unwrap();
    b.fill("#code", &code).await.unwrap();
    b.fill("#password", PASSWORD).await.unwrap();
    b.fill("#password2", PASSWORD).await.unwrap();
    b.click("#setup-submit").await.unwrap();
    b.wait_text("#kvm", "available", t).await.unwrap();
    b.wait_text("#datadisk", "mounted", t).await.unwrap();
    b.screenshot("01-dashboard").await.unwrap();
    b.click("#logout").await.unwrap();
    b.fill("#password", PASSWORD).await.unwrap();
    b.click("#login-submit").await.unwrap();
    b.wait_for("#vm-table", t).await.unwrap();

    b.click("#new-vm").await.unwrap();
    b.fill("#name", "web1").await.unwrap();
    let disk_mode = b.wait_for("#disk-mode", t).await.unwrap();
    disk_mode.select_by_value("new").await.unwrap();
    b.fill("#disk-name", "web1-disk").await.unwrap();
    b.fill("#disk-size", "64").await.unwrap();
    b.screenshot("02-new-vm").await.unwrap();
    b.click("#create-start").await.unwrap();
    b.wait_for("#vm-state [data-state=running]", t).await.unwrap();
    b.wait_text(".xterm-rows", READY_LINE, GUEST_TIMEOUT).await.unwrap();
    let input = b.wait_for(".xterm-helper-textarea", t).await.unwrap();
    input.send_keys("\n").await.unwrap();
    b.wait_text(".xterm-rows", "demo:/#", GUEST_TIMEOUT).await.unwrap();
    input.send_keys("echo browser-$((6*7))\n").await.unwrap();
    b.wait_text(".xterm-rows", "browser-42", GUEST_TIMEOUT).await.unwrap();
    b.screenshot("03-guest-shell").await.unwrap();
    b.close().await.unwrap();
}

/// A real operating system through the panel, in the appliance: the Debian
/// 12 test image uploaded as a disk image (2 GiB, about 110 s), a VM that
/// boots it with BIOS firmware (SeaBIOS from the appliance's own firmware),
/// and a login on its serial console over the console WebSocket; then its
/// screen, keyboard and mouse through the panel's screen WebSocket (see
/// [`screen_keyboard_and_tablet`]); then the same image booted by UEFI
/// (OVMF), logged in on its console.
///
/// The two longest tests' names sort first (`a_cloud…`, `a_debian…`):
/// libtest starts tests in name order, so the two threads begin with them
/// and the short ones fill in after, instead of one long test running alone
/// at the end.
#[test]
fn a_debian_image_uploaded_as_a_disk_boots_by_bios_and_uefi() {
    let debian = kvmos_qemu_test::debian::image().unwrap();
    let img = image().unwrap();
    let dir = work_dir("appliance-firmware-debian").unwrap();
    let disk = DataDisk::create(&dir.join("data.img"), 4096, "KVMOS_DATA").unwrap();
    let mut opts = QemuOptions::new(Boot::Direct { kernel: img.bz_image.clone(), initrd: img.initramfs.clone() }, &dir);
    opts.drives = vec![disk.path.clone()];
    // The debug console, to look at the VMM's jail from inside.
    opts.append = "kvmos.debug".into();
    let port = free_port().unwrap();
    opts.panel_host_port = Some(port);
    // A UEFI VM runs OVMF two levels down: the patched L0 QEMU.
    opts.emulator = Some(kvmos_qemu_test::l0_qemu::emulator().unwrap());
    let mut vm = Appliance::boot("appliance-firmware-debian", opts).unwrap();
    let code = setup_code(&mut vm);
    wait_https(port, "/api/v1/health", BOOT_TIMEOUT).unwrap();
    let mut panel = Panel::new(port);
    panel.setup(&code, PASSWORD).unwrap();

    let uploaded = panel.upload_file("debian12.img", "disk", &debian).unwrap();
    assert_eq!(uploaded["size"], std::fs::metadata(&debian).unwrap().len(), "{uploaded}");
    let id = start_debian(&panel, "deb1", "bios");

    // The firmware's and then GRUB's text screens, read through the
    // panel's screen text API while they show.
    wait_screen_text(&panel, &id, "SeaBIOS", BOOT_TIMEOUT);
    wait_screen_text(&panel, &id, "GRUB", BOOT_TIMEOUT);

    // Nested under TCG beside the other appliance tests, a boot takes 2
    // to 6 minutes.
    let boot = Duration::from_secs(600);
    let mut console = panel.console(&id).unwrap();
    let mut at = console.expect(kvmos_qemu_test::debian::KERNEL_MARKER, boot).unwrap();
    at = log_in(&mut console, at, boot);
    console.send("echo booted-$((6*7)) from $(grep -o 'root=[^ ]*' /proc/cmdline)\n").unwrap();
    at = console.expect_after(at, "booted-42 from root=LABEL=debroot", GUEST_TIMEOUT).unwrap();
    screen_keyboard_and_tablet(&panel, &id, &mut console, at);
    the_vmm_is_jailed(&mut vm, &panel, &id, 512, 1, 1);
    the_panel_runs_as_its_own_user(&mut vm);
    switch_page_with_debian_and_the_demo_guest(&panel, port, &dir);
    panel.action(&id, "force-off").unwrap();
    panel.wait_state(&id, "stopped", GUEST_TIMEOUT).unwrap();

    // The same image booted by UEFI (OVMF from the appliance): a login on
    // its serial console.
    let uefi = start_debian(&panel, "deb2", "uefi");
    let mut console = panel.console(&uefi).unwrap();
    let mut at = console.expect("BdsDxe: starting", boot).unwrap();
    at = console.expect_after(at, kvmos_qemu_test::debian::KERNEL_MARKER, boot).unwrap();
    at = log_in(&mut console, at, boot);
    console.send("echo uefi-$((6*7)) $(ls -d /sys/firmware/efi)\n").unwrap();
    console.expect_after(at, "uefi-42 /sys/firmware/efi", GUEST_TIMEOUT).unwrap();
    panel.action(&uefi, "force-off").unwrap();
    panel.wait_state(&uefi, "stopped", GUEST_TIMEOUT).unwrap();
}

/// The Debian VMs' CPU share (`cpu_weight`), which their cgroup shows.
const DEBIAN_CPU_WEIGHT: u32 = 200;

/// A VM named `name` that boots the uploaded Debian image with `firmware`
/// (bios or uefi), with a NIC on br0, started; its ID.
fn start_debian(panel: &Panel, name: &str, firmware: &str) -> String {
    let created = panel
        .ok(
            "POST",
            "/api/v1/vms",
            Some(json!({"name": name, "vcpus": 1, "memory_mib": 512,
                        "boot": {"type": "firmware", "firmware": firmware},
                        "disks": [{"image": "debian12.img"}], "network": true, "cpu_weight": DEBIAN_CPU_WEIGHT})),
        )
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    panel.action(&id, "start").unwrap();
    id
}

/// Logs in as root on the Debian VM's serial console once its login
/// prompt shows after `at`; where its shell's prompt is.
fn log_in(console: &mut Console, at: usize, boot: Duration) -> usize {
    let at = console.expect_after(at, "debian-test login:", boot).unwrap();
    console.send("root\n").unwrap();
    let at = console.expect_after(at, "Password:", GUEST_TIMEOUT).unwrap();
    console.send(&format!("{}\n", kvmos_qemu_test::debian::ROOT_PASSWORD)).unwrap();
    console.expect_after(at, "root@debian-test", GUEST_TIMEOUT).unwrap()
}

/// The panel, seen from `/proc` inside the appliance: kvmos-init started
/// it as its own user (990) with CAP_NET_BIND_SERVICE and CAP_NET_ADMIN
/// only, beside its launcher, which keeps root.
fn the_panel_runs_as_its_own_user(vm: &mut Appliance) {
    let ps = vm.debug("ps", "kvmos-debug: ps end").unwrap();
    let pid_of = |name: &str| {
        ps.lines()
            .filter_map(|l| l.split("kvmos-debug: ps ").nth(1))
            .find(|l| l.ends_with(&format!(" {name}")))
            .and_then(|l| l.split_whitespace().next().map(String::from))
            .unwrap_or_else(|| panic!("no {name} in {ps}"))
    };
    let panel = appliance_file(vm, &format!("/proc/{}/status", pid_of("kvmos-webadmin")));
    let field = |key: &str| panel.lines().find_map(|l| l.strip_prefix(&format!("{key}:"))).unwrap().trim().to_string();
    assert!(field("Uid").starts_with("990\t990"), "{panel}");
    assert_eq!(field("CapEff"), "0000000000001400", "{panel}");
    assert_eq!(field("NoNewPrivs"), "1");
    let launcher = appliance_file(vm, &format!("/proc/{}/status", pid_of("kvmos-launcher")));
    assert!(launcher.contains("Uid:\t0\t"), "{launcher}");
}

/// What a debug command (`cat` or `ls`) prints about `path` inside the
/// appliance: everything between its answer's head and its end line.
fn debug_answer(vm: &mut Appliance, cmd: &str, path: &str) -> String {
    let out = vm.debug(&format!("{cmd} {path}"), &format!("kvmos-debug: end of {path}")).unwrap();
    let head = format!("kvmos-debug: {path}:");
    let start = out.rfind(&head).unwrap_or_else(|| panic!("kvmos-debug {cmd} {path}: {out}")) + head.len();
    out[start..].rsplit_once("kvmos-debug: end of").unwrap().0.trim().to_string()
}

/// A file in the appliance.
fn appliance_file(vm: &mut Appliance, path: &str) -> String {
    debug_answer(vm, "cat", path)
}

/// A directory in the appliance (`name`, or `name->target` for a link).
fn appliance_dir(vm: &mut Appliance, path: &str) -> Vec<String> {
    debug_answer(vm, "ls", path).split_whitespace().map(String::from).collect()
}

/// The VM's VMM, seen from `/proc` inside the appliance: the panel started
/// it as root, and it waits outside the jail for its one child, which runs
/// the VM as a user of its own with no capabilities, `no_new_privs`,
/// seccomp on every thread, its own namespaces and the VM's cgroup with
/// the limits from its definition. The panel shows the cgroup's figures.
fn the_vmm_is_jailed(vm: &mut Appliance, panel: &Panel, id: &str, memory_mib: u64, vcpus: u64, disks: u64) {
    let field = |status: &str, key: &str| -> String {
        status.lines().find_map(|l| l.strip_prefix(&format!("{key}:"))).unwrap_or_default().trim().to_string()
    };
    let ps = vm.debug("ps", "kvmos-debug: ps end").unwrap();
    let vmms: Vec<String> = ps
        .lines()
        .filter_map(|l| l.split("kvmos-debug: ps ").nth(1))
        .filter(|l| l.ends_with(" kvmos-vmm"))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    let mut jailed = Vec::new();
    for pid in &vmms {
        let status = appliance_file(vm, &format!("/proc/{pid}/status"));
        if field(&status, "Uid").starts_with("0\t") {
            continue;
        }
        jailed.push((pid.clone(), status));
    }
    assert_eq!(jailed.len(), 1, "one jailed VMM among {vmms:?} ({} VMs run)", vmms.len() / 2);
    let (pid, status) = &jailed[0];
    let uid = field(status, "Uid");
    let first: u32 = uid.split_whitespace().next().unwrap().parse().unwrap();
    assert!(first >= 100_000, "a VM user: {uid}");
    assert_eq!(uid.split_whitespace().collect::<Vec<_>>(), vec![first.to_string(); 4], "{uid}");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(status, set), "0000000000000000", "{set}");
    }
    assert_eq!(field(status, "NoNewPrivs"), "1");
    assert_eq!(field(status, "NSpid"), format!("{pid}\t1"), "PID 1 of its own PID namespace");
    let mut threads = 0;
    for tid in appliance_dir(vm, &format!("/proc/{pid}/task")) {
        let t = appliance_file(vm, &format!("/proc/{pid}/task/{tid}/status"));
        if field(&t, "Name").starts_with("kvm-") {
            continue; // KVM's own kernel worker
        }
        assert_eq!(field(&t, "Seccomp"), "2", "thread {tid} ({}) in seccomp's filter mode", field(&t, "Name"));
        threads += 1;
    }
    assert_eq!(threads, 3 + vcpus + disks, "the event loop, the API, the VNC server, the vCPUs and the disks' I/O");
    let ns = |vm: &mut Appliance, p: &str| appliance_dir(vm, &format!("/proc/{p}/ns"));
    let (theirs, init) = (ns(vm, pid), ns(vm, "1"));
    for kind in ["mnt", "net", "uts", "pid"] {
        let of = |list: &[String]| list.iter().find(|e| e.starts_with(&format!("{kind}->"))).cloned().unwrap();
        assert_ne!(of(&theirs), of(&init), "its own {kind} namespace");
    }
    assert!(appliance_dir(vm, &format!("/proc/{pid}/root/")).is_empty(), "an empty root");
    let cgroup = appliance_file(vm, &format!("/proc/{pid}/cgroup"));
    assert_eq!(cgroup, format!("0::/kvmos.slice/{id}"));
    let leaf = format!("/sys/fs/cgroup/kvmos.slice/{id}");
    let memory_max = appliance_file(vm, &format!("{leaf}/memory.max"));
    assert_eq!(memory_max, ((memory_mib + kvmos_vmm::jail::MEMORY_OVERHEAD_MIB) << 20).to_string());
    assert_eq!(appliance_file(vm, &format!("{leaf}/pids.max")), (vcpus + disks + 6).to_string());
    assert_eq!(appliance_file(vm, &format!("{leaf}/cpu.max")), format!("{} 100000", vcpus * 100_000 + 50_000));
    assert_eq!(appliance_file(vm, &format!("{leaf}/cpu.weight")), DEBIAN_CPU_WEIGHT.to_string(), "from the definition");
    let shown = panel.ok("GET", &format!("/api/v1/vms/{id}"), None).unwrap();
    let used = shown["usage"]["memory_bytes"].as_u64().unwrap_or(0);
    assert!(used > 100 << 20, "the panel shows the VM's memory from its cgroup: {shown}");
    assert!(shown["usage"]["cpu_usec"].as_u64().unwrap_or(0) > 0, "{shown}");
}

/// The Switch page in headless Chromium with the Debian VM (a screen) and
/// the demo guest (a serial console) side by side: both tiles show their
/// VM, and a hotkey moves the keyboard to the demo guest's terminal, whose
/// shell runs what is typed. Screenshots in
/// target/qemu-test/appliance-firmware-debian/screenshots/.
fn switch_page_with_debian_and_the_demo_guest(panel: &Panel, port: u16, dir: &std::path::Path) {
    let demo = panel
        .ok(
            "POST",
            "/api/v1/vms",
            Some(json!({"name": "demo1", "vcpus": 1, "memory_mib": 128, "boot": {"type": "guest", "guest": "demo"}})),
        )
        .unwrap();
    let demo = demo["id"].as_str().unwrap().to_string();
    panel.action(&demo, "start").unwrap();
    let mut console = panel.console(&demo).unwrap();
    console.expect(READY_LINE, GUEST_TIMEOUT).unwrap();
    let shots = dir.join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let t = Duration::from_secs(60);
        let b = Browser::logged_in(&shots, port, PASSWORD).await.unwrap();
        b.client.goto(&format!("https://127.0.0.1:{port}/#/switch")).await.unwrap();
        let names = "[...document.querySelectorAll('.tile')].map((t) => t.dataset.tileName).join(',')";
        b.wait_js("the two tiles", &format!("{names} === 'deb1,demo1'"), t).await.unwrap();
        // deb1 has the focus: its full-size view shows Linux's console.
        let lit = "(() => { const c = document.querySelector('.tile.focused .tile-view canvas'); if (!c || !c.width) return false;
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            for (let i = 0; i < d.length; i += 4 * 5) if (d[i] > 100) return true; return false; })()";
        b.wait_js("deb1's screen", lit, GUEST_TIMEOUT).await.unwrap();
        b.wait_js("demo1's terminal", &format!("switchView.terminalText('{demo}').includes('kvmos demo guest')"), t)
            .await
            .unwrap();
        b.screenshot("switch-01-debian-and-demo").await.unwrap();
        b.chord(&['\u{e009}', '\u{e00a}', '2']).await.unwrap();
        b.wait_js("the focus on demo1", "document.querySelector('.tile.focused')?.dataset.tileName === 'demo1'", t).await.unwrap();
        b.type_keys("\necho switch-$((6*7))\n").await.unwrap();
        b.wait_js("the demo guest's answer", &format!("switchView.terminalText('{demo}').includes('switch-42')"), GUEST_TIMEOUT)
            .await
            .unwrap();
        b.screenshot("switch-02-typed-into-demo").await.unwrap();
        b.close().await.unwrap();
    });
    panel.action(&demo, "force-off").unwrap();
}

/// Polls the VM's text screen until a row has `needle`; returns the rows.
fn wait_screen_text(panel: &Panel, id: &str, needle: &str, timeout: Duration) -> Vec<String> {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = Vec::new();
    loop {
        if let Ok((200, v)) = panel.call("GET", &format!("/api/v1/vms/{id}/screen/text"), None) {
            last = v["rows"].as_array().unwrap().iter().map(|r| r.as_str().unwrap_or("").to_string()).collect();
            if last.iter().any(|r| r.contains(needle)) {
                return last;
            }
        }
        assert!(std::time::Instant::now() < deadline, "the screen never showed {needle:?}; last text screen: {last:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Linux drives the VM's display, keyboard and mouse, and they work over
/// the panel's screen WebSocket (the VMM's VNC server behind it):
/// - the guest kernel binds its bochs DRM driver to the standard VGA, the
///   AT keyboard and the PS/2 mouse to the i8042, and `virtio_input` to
///   the tablet;
/// - the screen (tty1's login prompt) comes through, and a login typed on
///   it over VNC gets a shell there, which writes to the serial console;
/// - the pointer reaches the tablet as absolute coordinates and a click.
///
/// Probes echo `$((40+2))` so that the tty's echo of the command does not
/// match what the test waits for.
fn screen_keyboard_and_tablet(panel: &Panel, id: &str, console: &mut Console, mut at: usize) {
    console
        .send(
            "dmesg -n 1; echo \"FB-$((40+2)) $(cat /proc/fb)\"; grep -o 'Name=.*' /proc/bus/input/devices; \
             ev=$(grep -l 'Virtio Tablet' /sys/class/input/event*/device/name | cut -d/ -f5); \
             kb=$(grep -l 'AT Translated' /sys/class/input/event*/device/name | cut -d/ -f5); \
             (timeout 900 cat /dev/input/$ev > /tmp/ev &); (timeout 900 cat /dev/input/$kb > /tmp/kev &); \
             echo \"TABLET-$((40+2)) $ev\"\n",
        )
        .unwrap();
    at = console.expect_after(at, "TABLET-42 event", GUEST_TIMEOUT).unwrap();
    let seen = console.seen.clone();
    assert!(seen.contains("bochs-drmdrmfb"), "Linux's bochs DRM driver runs the standard VGA:\n{seen}");
    assert!(seen.contains("Name=\"AT Translated Set 2 keyboard\""), "the PS/2 keyboard:\n{seen}");
    assert!(seen.contains("PS/2 Generic"), "the PS/2 mouse:\n{seen}");
    assert!(seen.contains("Name=\"kvmos Virtio Tablet\""), "the tablet:\n{seen}");

    let mut screen = panel.screen(id).unwrap();
    screen.request(false).unwrap();
    screen.update().unwrap();
    let shown = |v: &Viewer<Screen>| v.pixels.iter().any(|&p| p != v.pixels[0]) && v.width >= 640 && v.height >= 400;
    screen.until(GUEST_TIMEOUT, shown).unwrap();
    let (width, height) = (screen.width, screen.height);
    eprintln!("the guest's screen is {width}x{height}");

    // Log in on tty1 by typing on the screen once its getty runs (it
    // flushes what was typed before); the serial shell watches, and says
    // what the keyboard delivered if the login does not start.
    console
        .send("until ps -t tty1 -o comm= | grep -q agetty; do sleep 1; done; sleep 2; echo GETTY-$((40+2))\n")
        .unwrap();
    at = console.expect_after(at, "GETTY-42", GUEST_TIMEOUT).unwrap();
    screen.type_text("root\n").unwrap();
    console
        .send(
            "for i in $(seq 90); do ps -t tty1 -o comm= | grep -q login && break; sleep 1; done; sleep 3; \
             echo \"TTY1-$((40+2)) on tty1: $(ps -t tty1 -o comm= | tr '\\n' ' ')key events: $(($(stat -c %s /tmp/kev) / 24)) \
             IRQ 1: $(grep -w '1:' /proc/interrupts | tr -s ' ')\"\n",
        )
        .unwrap();
    let from = console.expect_after(at, "TTY1-42 on tty1:", GUEST_TIMEOUT).unwrap();
    at = console.expect_after(from, "\n", GUEST_TIMEOUT).unwrap();
    let line = console.seen[from..at].to_string();
    assert!(line.contains("login"), "no login on tty1 after typing root over VNC: {line}");
    screen.type_text(&format!("{}\n", kvmos_qemu_test::debian::ROOT_PASSWORD)).unwrap();
    console.send("until ps -t tty1 -o comm= | grep -q bash; do sleep 1; done; echo SHELL-$((40+2))\n").unwrap();
    at = console.expect_after(at, "SHELL-42", GUEST_TIMEOUT).unwrap();
    let before = screen.pixels.clone();
    screen.type_text("echo \"Typed over VNC: $((6*7))\" > /dev/ttyS0\n").unwrap();
    at = console.expect_after(at, "Typed over VNC: 42", GUEST_TIMEOUT).unwrap();
    screen.until(GUEST_TIMEOUT, |v| v.pixels != before).unwrap();

    // The pointer: to three quarters across and half-way down, a click.
    let (x, y) = (width * 3 / 4, height / 2);
    for buttons in [0, 1, 0] {
        screen.pointer(x as u16, y as u16, buttons).unwrap();
    }
    console
        .send("sleep 2; od -An -v -td4 -w24 /tmp/ev | awk '{print \"EV\", $5, $6}' | tail -12; echo EVENTS-$((40+2))\n")
        .unwrap();
    console.expect_after(at, "EVENTS-42", GUEST_TIMEOUT).unwrap();
    let seen = console.seen.clone();
    // input_event: type in the low half of the fifth word, code in the high.
    let abs_x = x * 0x7fff / (width - 1);
    let abs_y = y * 0x7fff / (height - 1);
    // (A kernel message may follow an event on the same line: the value
    // ends where its digits do.)
    let event = |code: u32, value: u32| {
        let probe = format!("EV {code} {value}");
        seen.match_indices(&probe).any(|(i, _)| !seen[i + probe.len()..].starts_with(|c: char| c.is_ascii_digit()))
    };
    assert!(event(3, abs_x), "ABS_X {abs_x}:\n{seen}");
    assert!(event(3 + (1 << 16), abs_y), "ABS_Y {abs_y}:\n{seen}");
    assert!(event(1 + (0x110 << 16), 1), "BTN_LEFT pressed:\n{seen}");
    assert!(event(1 + (0x110 << 16), 0), "and released:\n{seen}");
}

/// A guest that touches more memory than its VMM's cgroup allows is
/// stopped (the kernel's OOM killer, within the cgroup), and the reason is
/// the VM's last exit; the host, the panel and the other VM keep running.
/// The guest is the memory-hog boot sector (`tiny_guest::memory_hog_disk`),
/// uploaded as a disk and booted by SeaBIOS; the test lowers its cgroup's
/// `memory.max` through the debug console, then lets it touch 200 MiB.
#[test]
fn a_guest_over_its_memory_limit_is_stopped_and_nothing_else_is() {
    use kvmos_vmm::tiny_guest::{memory_hog_disk, HOG_DONE, HOG_WAITING};
    let img = image().unwrap();
    let dir = work_dir("appliance-memory-limit").unwrap();
    let disk = DataDisk::create(&dir.join("data.img"), 1024, "KVMOS_DATA").unwrap();
    let mut opts = QemuOptions::new(Boot::Direct { kernel: img.bz_image.clone(), initrd: img.initramfs.clone() }, &dir);
    opts.drives = vec![disk.path.clone()];
    opts.append = "kvmos.debug".into();
    let port = free_port().unwrap();
    opts.panel_host_port = Some(port);
    let mut vm = Appliance::boot("appliance-memory-limit", opts).unwrap();
    let code = setup_code(&mut vm);
    wait_https(port, "/api/v1/health", BOOT_TIMEOUT).unwrap();
    let mut panel = Panel::new(port);
    panel.setup(&code, PASSWORD).unwrap();

    let demo = panel
        .ok(
            "POST",
            "/api/v1/vms",
            Some(
                json!({"name": "bystander", "vcpus": 1, "memory_mib": 128, "boot": {"type": "guest", "guest": "demo"}}),
            ),
        )
        .unwrap();
    let demo = demo["id"].as_str().unwrap().to_string();
    panel.action(&demo, "start").unwrap();
    let mut bystander = panel.console(&demo).unwrap();
    let at = bystander.expect(READY_LINE, GUEST_TIMEOUT).unwrap();

    panel.upload("hog.img", "disk", memory_hog_disk("memory hog", 200)).unwrap();
    let hog = panel
        .ok(
            "POST",
            "/api/v1/vms",
            Some(json!({"name": "hog", "vcpus": 1, "memory_mib": 256,
                        "boot": {"type": "firmware", "firmware": "bios"}, "disks": [{"image": "hog.img"}]})),
        )
        .unwrap();
    let hog = hog["id"].as_str().unwrap().to_string();
    panel.action(&hog, "start").unwrap();
    let mut console = panel.console(&hog).unwrap();
    console.expect(HOG_WAITING, GUEST_TIMEOUT).unwrap();
    // Far less than the guest is about to touch.
    let limit = format!("/sys/fs/cgroup/kvmos.slice/{hog}/memory.max");
    vm.debug(&format!("write {limit} 96M"), &format!("wrote {limit}")).unwrap();
    console.send("x").unwrap();
    panel.wait_state(&hog, "stopped", GUEST_TIMEOUT).unwrap();
    assert!(!console.seen.contains(HOG_DONE), "the guest got its memory:\n{}", console.seen);
    let shown = panel.ok("GET", &format!("/api/v1/vms/{hog}"), None).unwrap();
    let run = shown["runs"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(run["exit_code"], 128 + 9, "{run}");
    assert!(run["reason"].as_str().unwrap().contains("killed by signal 9"), "{run}");

    // The other VM, the panel and the host are unharmed.
    bystander.send("echo still-$((6*7))\n").unwrap();
    bystander.expect_after(at, "still-42", GUEST_TIMEOUT).unwrap();
    assert_eq!(panel.ok("GET", &format!("/api/v1/vms/{demo}"), None).unwrap()["state"], "running");
    let host = panel.ok("GET", "/api/v1/host", None).unwrap();
    assert!(host["vms_running"].as_u64() == Some(1), "{host}");
}

/// Where the cloud VM lives on the appliance's network (QEMU's user
/// network: the host is 10.0.2.2, its DNS 10.0.2.3).
const CLOUD_VM_ADDRESS: &str = "10.0.2.50";

/// A cloud image, as an admin brings one (issue 14's acceptance test): a
/// Debian 12 cloud-style image (`debian::Flavour::Cloud`: cloud-init,
/// OpenSSH, growpart, no password, key or network of its own), made into
/// a compressed qcow2 as images are published, served by a local HTTPS
/// mirror whose CA the panel is told to trust, and imported by URL. A VM is
/// made from it as the wizard's "From a cloud image" makes one: a copy of
/// the image, grown, with cloud-init's host name, user, SSH key and a
/// static address. The test logs in as that user with the key over SSH
/// (QEMU forwards a host port to the VM's address on br0), then stops the
/// VM, grows its disk, starts it again, and the guest's root file system
/// has grown with it.
#[test]
fn a_cloud_image_imported_by_url_comes_up_on_ssh_and_grows() {
    use kvmos_qemu_test::debian::{image_of, Flavour};
    let cloud = image_of(Flavour::Cloud).unwrap();
    let img = image().unwrap();
    let dir = work_dir("appliance-cloud-image").unwrap();
    let qcow2 = dir.join("debian-12-cloud.qcow2");
    kvmos_image_builder::util::run(
        std::process::Command::new("qemu-img").args(["convert", "-c", "-O", "qcow2"]).arg(&cloud).arg(&qcow2),
    )
    .unwrap();
    let mirror = kvmos_qemu_test::https_file::FileServer::start(&qcow2, &["10.0.2.2"]).unwrap();
    let (key, public_key) = kvmos_qemu_test::ssh::new_key(&dir).unwrap();

    let disk = DataDisk::create(&dir.join("data.img"), 8192, "KVMOS_DATA").unwrap();
    let mut opts = QemuOptions::new(Boot::Direct { kernel: img.bz_image.clone(), initrd: img.initramfs.clone() }, &dir);
    opts.drives = vec![disk.path.clone()];
    let port = free_port().unwrap();
    let ssh_port = free_port().unwrap();
    opts.panel_host_port = Some(port);
    opts.forwards = vec![(ssh_port, format!("{CLOUD_VM_ADDRESS}:22"))];
    let mut vm = Appliance::boot("appliance-cloud-image", opts).unwrap();
    let code = setup_code(&mut vm);
    wait_https(port, "/api/v1/health", BOOT_TIMEOUT).unwrap();
    let mut panel = Panel::new(port);
    panel.setup(&code, PASSWORD).unwrap();

    // 1. Import by URL; the mirror's certificate is trusted once its CA is.
    let url = mirror.url("10.0.2.2");
    let task = panel.ok("POST", "/api/v1/images/import", Some(json!({"name": "debian-12-cloud", "url": url}))).unwrap();
    let err = panel.wait_task(&task, BOOT_TIMEOUT).unwrap_err().to_string();
    assert!(err.contains("trusted-ca"), "an unknown CA is refused and the message says where to add it: {err}");
    let trusted = panel.ok("PUT", "/api/v1/settings/trusted-ca", Some(json!({"pem": mirror.ca_pem()}))).unwrap();
    assert_eq!(trusted["count"], 1, "{trusted}");
    let task = panel.ok("POST", "/api/v1/images/import", Some(json!({"name": "debian-12-cloud", "url": url}))).unwrap();
    let done = panel.wait_task(&task, Duration::from_secs(1200)).unwrap();
    eprintln!("import: {}", done["log"]);
    let images = panel.ok("GET", "/api/v1/images", None).unwrap();
    let image = images["images"].as_array().unwrap().iter().find(|i| i["name"] == "debian-12-cloud").unwrap().clone();
    assert_eq!(image["kind"], "disk", "{image}");
    assert_eq!(image["converted_from"], "qcow2", "{image}");
    assert_eq!(image["size"], std::fs::metadata(&cloud).unwrap().len(), "{image}");

    // 2. "From a cloud image": a copy, grown to 3 GiB, with cloud-init.
    let task = panel.ok("POST", "/api/v1/images/debian-12-cloud/clone", Some(json!({"name": "web1-disk"}))).unwrap();
    panel.wait_task(&task, Duration::from_secs(1200)).unwrap();
    panel.ok("POST", "/api/v1/images/web1-disk/grow", Some(json!({"size_mib": 3072}))).unwrap();
    let spec = json!({"name": "web1", "vcpus": 1, "memory_mib": 512,
        "boot": {"type": "firmware", "firmware": "bios"}, "disks": [{"image": "web1-disk"}], "network": true,
        "cloud_init": {"hostname": "web1", "user": "ops", "ssh_keys": [public_key],
            "network": {"mode": "static", "address": format!("{CLOUD_VM_ADDRESS}/24"),
                        "gateway": "10.0.2.2", "dns": ["10.0.2.3"]}}});
    let created = panel.ok("POST", "/api/v1/vms", Some(spec)).unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    panel.action(&id, "start").unwrap();

    // 3. SSH as the wizard's user, with the key: the host name, the user,
    // the address, sudo, and a root file system grown to the disk.
    let ssh = Ssh { key: key.clone(), host: "127.0.0.1".into(), port: ssh_port, user: "ops".into() };
    let first_boot = Duration::from_secs(1200);
    let facts = ssh.wait(FACTS, first_boot).unwrap_or_else(|e| panic!("{e:#}\n{}", vm_console(&panel, &id)));
    assert!(facts.contains("HOST web1\n"), "{facts}");
    assert!(facts.contains("USER ops\n"), "{facts}");
    assert!(facts.contains(&format!("inet {CLOUD_VM_ADDRESS}/24")), "{facts}");
    assert!(facts.contains("SUDO ok\n") && !facts.contains("unable to resolve"), "{facts}");
    assert_eq!(fact(&facts, "DISK"), 3072 << 20, "{facts}");
    let root = fact(&facts, "ROOT");
    assert!(root > 2800 << 20, "growpart gave the root file system the copy's 3 GiB: {facts}");

    // 4. Stop it, grow the disk to 4 GiB, start it: the guest grows into it.
    // cloud-init's first boot may still be running (and restarting sshd,
    // which once reset the next connection): wait for it, then sync.
    ssh.wait("timeout 600 cloud-init status --wait > /dev/null; sync", GUEST_TIMEOUT).unwrap();
    panel.action(&id, "force-off").unwrap();
    panel.wait_state(&id, "stopped", GUEST_TIMEOUT).unwrap();
    let grown = panel.ok("POST", "/api/v1/images/web1-disk/grow", Some(json!({"size_mib": 4096}))).unwrap();
    assert_eq!(grown["size"], 4096u64 << 20, "{grown}");
    panel.action(&id, "start").unwrap();
    let facts = ssh.wait(FACTS, first_boot).unwrap_or_else(|e| panic!("{e:#}\n{}", vm_console(&panel, &id)));
    assert_eq!(fact(&facts, "DISK"), 4096 << 20, "{facts}");
    assert!(fact(&facts, "ROOT") > root + (900 << 20), "the root file system grew by about 1 GiB: {facts}");
    assert!(facts.contains("HOST web1\n"), "still web1 after a restart: {facts}");
    panel.action(&id, "force-off").unwrap();
    panel.wait_state(&id, "stopped", GUEST_TIMEOUT).unwrap();
}

/// What the test asks the cloud VM over SSH, one `KEY value` per line.
const FACTS: &str = "echo HOST $(hostname); echo USER $(id -un); ip -4 -o addr show eth0; \
                     echo DISK $(lsblk -bdno SIZE /dev/vda); echo ROOT $(df -B1 --output=size / | tail -1); \
                     sudo -n true 2>&1 && echo SUDO ok";

/// The number after `KEY ` in what [`FACTS`] printed.
fn fact(facts: &str, key: &str) -> u64 {
    let prefix = format!("{key} ");
    let line = facts.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no {key} in {facts}"));
    line.trim().parse().unwrap_or_else(|_| panic!("{key} is not a number in {facts}"))
}

/// The VM's console as the panel replays it, for a failure's message.
fn vm_console(panel: &Panel, id: &str) -> String {
    match panel.console(id) {
        Ok(mut console) => {
            let _ = console.expect("\u{0}(read for a while)", Duration::from_secs(3));
            format!("the VM's console:\n{}", console.seen)
        }
        Err(e) => format!("(no console: {e})"),
    }
}
