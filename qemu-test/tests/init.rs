//! kvmos-init end to end, under QEMU: DHCP and static networking on br0, the
//! console screen, the data disk and what survives a reboot, zombie reaping,
//! and an orderly power-off from the ACPI power button.
//!
//! The tests look inside through the `kvmos.debug` hooks (init/src/debug.rs).

use kvmos_image_builder::qemu::{free_port, QemuOptions};
use kvmos_qemu_test::{image, wait_https, work_dir, Appliance, Boot, DataDisk, BOOT_TIMEOUT};
use std::time::Duration;

fn direct(name: &str, append: &str) -> (QemuOptions, std::path::PathBuf) {
    let img = image().unwrap();
    let dir = work_dir(name).unwrap();
    let mut opts = QemuOptions::new(Boot::Direct { kernel: img.bz_image.clone(), initrd: img.initramfs.clone() }, &dir);
    opts.append = append.into();
    opts.panel_host_port = Some(free_port().unwrap());
    (opts, dir)
}

/// The default route and resolver the appliance set up, read from inside.
fn assert_route_via(vm: &mut Appliance, gateway_hex: &str) {
    vm.debug("cat /proc/net/route", "kvmos-debug: /proc/net/route:").unwrap();
    vm.expect(&format!("br0\t00000000\t{gateway_hex}"), Duration::from_secs(30)).unwrap();
}

fn assert_no_zombies(vm: &mut Appliance) {
    vm.debug("orphans 3", "started 3 orphan makers").unwrap();
    // The orphans live a second; give TCG time to run and reap them.
    std::thread::sleep(Duration::from_secs(8));
    let listing = vm.debug("ps", "kvmos-debug: ps end").unwrap();
    let zombies: Vec<&str> = listing
        .lines()
        .filter(|l| l.contains("kvmos-debug: ps ") && l.split_whitespace().nth(3) == Some("Z"))
        .collect();
    assert!(zombies.is_empty(), "zombies left: {zombies:?}\n{listing}");
    assert!(listing.contains("kvmos-debug: ps 1 "), "PID 1 is listed: {listing}");
}

#[test]
fn dhcp_data_disk_survives_reboot_no_zombies_and_power_button_powers_off_cleanly() {
    let (mut opts, dir) = direct("init-lifecycle", "kvmos.debug");
    let disk = DataDisk::create(&dir.join("data.img"), 128, "KVMOS_DATA").unwrap();
    let monitor = dir.join("monitor.sock");
    opts.drives = vec![disk.path.clone()];
    opts.monitor_socket = Some(monitor.clone());
    let mut vm = Appliance::boot("init-lifecycle", opts).unwrap();

    vm.expect("Data disk: /dev/vda1 mounted at /var/lib/kvmos", BOOT_TIMEOUT).unwrap();
    vm.expect("kvmos-init: ready", BOOT_TIMEOUT).unwrap();
    let mut screen = vm.expect("Panel:      https://10.0.2.15/", BOOT_TIMEOUT).unwrap();
    screen += &vm.expect("Data disk:", Duration::from_secs(30)).unwrap();
    assert!(screen.contains("10.0.2.15/24 on br0 (uplink eth0, 52:54:00:12:34:56)"), "{screen}");
    assert!(screen.contains("kvmos-123456"), "hostname from the MAC: {screen}");
    assert_route_via(&mut vm, "0202000A");
    vm.debug("cat /etc/resolv.conf", "nameserver 10.0.2.3").unwrap();
    assert_no_zombies(&mut vm);

    vm.debug("write /var/lib/kvmos/persist.txt kvmos-was-here", "wrote /var/lib/kvmos/persist.txt").unwrap();
    vm.debug("reboot", "sending SIGUSR1").unwrap();
    vm.expect("shutdown: sync and unmount the data disk", BOOT_TIMEOUT).unwrap();
    vm.expect("kvmos-init: shutdown: disarm the watchdog", BOOT_TIMEOUT).unwrap();
    vm.expect("kvmos-init: ready", BOOT_TIMEOUT).unwrap();
    vm.debug("cat /var/lib/kvmos/persist.txt", "/var/lib/kvmos/persist.txt: kvmos-was-here").unwrap();

    vm.monitor(&monitor, "system_powerdown").unwrap();
    vm.expect("power button pressed: power off", BOOT_TIMEOUT).unwrap();
    vm.expect("kvmos-init: shutdown: disarm the watchdog", BOOT_TIMEOUT).unwrap();
    let status = vm.wait_exit(Duration::from_secs(120)).unwrap();
    assert!(status.success(), "QEMU exits by itself after the power-off: {status}");
    let out = vm.output();
    assert!(!out.contains("WARNING: shutdown"), "every shutdown step succeeded:\n{out}");
    disk.check_clean().unwrap();
}

#[test]
fn static_address_and_ram_only_warning() {
    let (mut opts, _) =
        direct("init-static", "kvmos.net=static:10.0.2.50/24,10.0.2.2,10.0.2.3 kvmos.hostname=node7 kvmos.debug");
    // A USB controller may find a disk after boot: init waits for it.
    opts.devices = vec!["qemu-xhci".into()];
    let mut vm = Appliance::boot("init-static", opts).unwrap();
    vm.expect("no data disk yet; waiting for the disks behind 0000:00:", BOOT_TIMEOUT).unwrap();
    vm.expect("RAM-ONLY: no partition labelled KVMOS_DATA was found", BOOT_TIMEOUT).unwrap();
    vm.expect("kvmos-init: ready", BOOT_TIMEOUT).unwrap();
    let screen = vm.expect("Panel:      https://10.0.2.50/", BOOT_TIMEOUT).unwrap();
    assert!(screen.contains("node7"), "{screen}");
    vm.expect("Nothing will survive a reboot", Duration::from_secs(30)).unwrap();
    assert_route_via(&mut vm, "0202000A");
    vm.debug("cat /etc/resolv.conf", "nameserver 10.0.2.3").unwrap();
    vm.debug("cat /run/kvmos/status.json", "\"ram_only\": true").unwrap();
}

/// Also: a blank partition named KVMOS_DATA is formatted on first boot, and
/// a hardware watchdog (QEMU's i6300esb) is armed.
#[test]
fn malformed_net_option_warns_and_falls_back_to_dhcp() {
    let (mut opts, dir) = direct("init-malformed", "kvmos.net=static:bogus kvmos.colour=blue");
    let disk = DataDisk::create_blank(&dir.join("blank.img"), 96, "KVMOS_DATA").unwrap();
    opts.drives = vec![disk.path.clone()];
    opts.devices = vec!["i6300esb".into()];
    let mut vm = Appliance::boot("init-malformed", opts).unwrap();
    vm.expect("kvmos.net=\"static:bogus\" is not valid; expected dhcp, none, or static:<ip>/<prefix>", BOOT_TIMEOUT)
        .unwrap();
    vm.expect("unknown key kvmos.colour is ignored", BOOT_TIMEOUT).unwrap();
    vm.expect("Data disk: /dev/vda1 formatted (it was blank) and mounted at /var/lib/kvmos", BOOT_TIMEOUT).unwrap();
    vm.expect("hardware watchdog armed", BOOT_TIMEOUT).unwrap();
    vm.expect("Panel:      https://10.0.2.15/", BOOT_TIMEOUT).unwrap();
}

#[test]
fn killed_webadmin_is_restarted_and_reachable_again_through_the_forwarded_port() {
    let (opts, _) = direct("init-supervise", "kvmos.debug");
    let port = opts.panel_host_port.unwrap();
    let mut vm = Appliance::boot("init-supervise", opts).unwrap();
    vm.expect("kvmos-init: started kvmos-webadmin", BOOT_TIMEOUT).unwrap();
    vm.expect("kvmos-init: ready", BOOT_TIMEOUT).unwrap();
    // No USB, NVMe or SCSI controller: nothing to wait for, RAM-only at once.
    let boot = vm.output();
    assert!(boot.contains("RAM-ONLY") && !boot.contains("waiting for the disks"), "{boot}");
    vm.expect("Panel:      https://10.0.2.15/", BOOT_TIMEOUT).unwrap();
    let body = wait_https(port, "/api/v1/health", BOOT_TIMEOUT).unwrap();
    assert!(body.contains("\"ok\""), "{body}");

    vm.debug("kill-webadmin", "SIGKILL to kvmos-webadmin").unwrap();
    let exit = vm.expect("restarting in", Duration::from_secs(60)).unwrap();
    assert!(exit.contains("kvmos-webadmin exited after") && exit.contains("killed by SIGKILL"), "{exit}");
    vm.expect("kvmos-init: started kvmos-webadmin", Duration::from_secs(60)).unwrap();
    let body = wait_https(port, "/api/v1/health", BOOT_TIMEOUT).unwrap();
    assert!(body.contains("\"ok\""), "{body}");
}
