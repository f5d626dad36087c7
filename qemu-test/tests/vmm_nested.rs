//! kvmos-vmm booting Linux guests, nested under QEMU TCG (see the nested
//! harness): the guest kernel from kernel-config/guest.config reaches its
//! init with 1 and 2 vCPUs, reads virtio-rng, signals the boot marker, and
//! powers off through ACPI, which ends the VMM with the power-off exit code.

use kvmos_qemu_test::nested::{guest_initramfs, Nested};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(900);

/// An L2 init that reports, marks boot, and powers off.
const L2_INIT: &str = r#"
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "L2-MARKER cpus=$(grep -c ^processor /proc/cpuinfo) kernel=$(uname -r)"
echo "L2-RNG $(cat /sys/class/misc/hw_random/rng_current) $(dd if=/dev/hwrng bs=16 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')"
printf x | dd of=/dev/port bs=1 seek=1088 count=1 2>/dev/null
poweroff -f
"#;

/// Runs an L1 `script` next to kvmos-vmm, the guest kernel and an L2
/// initramfs (`l2.cpio.zst`) whose init is `l2_init`.
fn with_l2(name: &str, l2_init: &str, script: &str) -> kvmos_qemu_test::nested::NestedResult {
    Nested::new(script)
        .unwrap()
        .with_vmm()
        .unwrap()
        .file("l2.cpio.zst", guest_initramfs(l2_init).unwrap(), 0o644)
        .unwrap()
        .run(name, TIMEOUT)
        .unwrap()
}

fn boot_to_marker(vcpus: u8) {
    // The VMM's log goes to a file: on the shared console its lines would
    // land in the middle of the guest's.
    let script = format!(
        "./kvmos-vmm --jail-uid 1000 --jail-gid 1000 --kernel guest-bzImage --initrd l2.cpio.zst --cmdline 'console=ttyS0 reboot=k panic=1 pci=off' \
         --vcpus {vcpus} --memory-mib 128 --serial stdio < /dev/null 2> vmm.err\n\
         echo \"VMM-EXIT $?\"\n\
         cat vmm.err\n"
    );
    let r = with_l2(&format!("vmm-boot-{vcpus}cpu"), L2_INIT, &script);
    assert!(r.output.contains(&format!("L2-MARKER cpus={vcpus}")), "{}", r.output);
    assert!(r.output.contains("guest boot marker"), "the VMM logged the marker:\n{}", r.output);
    let rng = r.output.lines().find_map(|l| l.split("L2-RNG ").nth(1)).unwrap_or_default();
    let mut words = rng.split_whitespace();
    assert_eq!(words.next(), Some("virtio_rng.0"), "the guest uses virtio-rng:\n{}", r.output);
    let bytes = words.next().unwrap_or_default();
    assert!(bytes.len() == 32 && bytes.chars().all(|c| c.is_ascii_hexdigit()), "16 bytes read from /dev/hwrng: {rng}");
    assert!(r.output.contains("VMM-EXIT 0"), "ACPI power-off ends the VMM with code 0:\n{}", r.output);
    assert_eq!(r.status, 0);
}

#[test]
fn guest_kernel_boots_to_init_with_one_vcpu_and_powers_off() {
    boot_to_marker(1);
}

#[test]
fn guest_kernel_boots_to_init_with_two_vcpus_and_powers_off() {
    boot_to_marker(2);
}

/// The same guest kernel as an ELF vmlinux, which has the PVH note: it is
/// entered through PVH (32-bit, hvm_start_info) and reads its command line,
/// initrd and memory map from there.
#[test]
fn guest_vmlinux_boots_through_pvh() {
    let vmlinux = std::fs::read(&kvmos_qemu_test::image().unwrap().guest_vmlinux).unwrap();
    let script =
        "./kvmos-vmm --jail-uid 1000 --jail-gid 1000 --kernel vmlinux --initrd l2.cpio.zst --cmdline 'console=ttyS0 reboot=k panic=1 pci=off quiet' \
         --memory-mib 128 --serial stdio < /dev/null 2> vmm.err\n\
         echo \"VMM-EXIT $?\"\n\
         cat vmm.err\n";
    let r = Nested::new(script)
        .unwrap()
        .with_vmm()
        .unwrap()
        .file("vmlinux", vmlinux, 0o644)
        .unwrap()
        .file("l2.cpio.zst", guest_initramfs(L2_INIT).unwrap(), 0o644)
        .unwrap()
        .run("vmm-boot-pvh", TIMEOUT)
        .unwrap();
    assert!(r.output.contains("L2-MARKER cpus=1"), "{}", r.output);
    assert!(r.output.contains("L2-RNG virtio_rng.0"), "{}", r.output);
    assert!(r.output.contains("VMM-EXIT 0"), "{}", r.output);
}

/// Runs an L1 `script` next to kvmos-vmm, the guest kernel and the demo
/// guest's initramfs. In the script, `{vmm}` is the command that boots the
/// demo guest and `{ready}` the line its init prints when the shell is up.
fn with_demo_guest(name: &str, script: &str) -> kvmos_qemu_test::nested::NestedResult {
    let img = kvmos_qemu_test::image().unwrap();
    let vmm = format!(
        "./kvmos-vmm --jail-uid 1000 --jail-gid 1000 --kernel guest-bzImage --initrd demo.cpio.zst --cmdline '{}' --memory-mib 128",
        kvmos_image_builder::guest::CMDLINE
    );
    let script = script.replace("{vmm}", &vmm).replace("{ready}", kvmos_image_builder::guest::READY_LINE);
    Nested::new(&script)
        .unwrap()
        .with_vmm()
        .unwrap()
        .file("demo.cpio.zst", std::fs::read(&img.guest_initramfs).unwrap(), 0o644)
        .unwrap()
        .run(name, TIMEOUT)
        .unwrap()
}

/// The bundled demo guest boots on kvmos-vmm to its shell, takes a command
/// typed on the serial console, and `poweroff` ends the VMM cleanly.
#[test]
fn demo_guest_boots_to_a_shell_that_answers_and_powers_off() {
    let r = with_demo_guest(
        "vmm-demo-guest",
        "mkfifo in\n\
         {vmm} --serial stdio < in > out 2>&1 &\n\
         exec 3>in\n\
         until grep -q '{ready}' out; do sleep 1; done\n\
         sleep 2\n\
         echo 'echo answer-$((6*7))' >&3\n\
         until grep -q answer-42 out; do sleep 1; done\n\
         echo poweroff >&3\n\
         wait $!\n\
         status=$?\n\
         cat out\n\
         echo \"VMM-EXIT $status\"\n",
    );
    assert!(r.output.contains("demo:"), "the shell prompt:\n{}", r.output);
    assert!(r.output.contains("answer-42"), "{}", r.output);
    assert!(r.output.contains("VMM-EXIT 0"), "poweroff ends the VMM with code 0:\n{}", r.output);
}

/// ACPI power-off requested through the control API: the demo guest's
/// acpid shuts it down cleanly and the VMM exits with the power-off code.
#[test]
fn api_power_off_shuts_the_guest_down_cleanly() {
    let r = with_demo_guest(
        "vmm-api-poweroff",
        "{vmm} --api-socket api.sock --serial stdio < /dev/null > out 2>&1 &\n\
         vmm=$!\n\
         until grep -q '{ready}' out; do sleep 1; done\n\
         sleep 3\n\
         ./kvmos-vmm ctl --api-socket api.sock get\n\
         ./kvmos-vmm ctl --api-socket api.sock power-off\n\
         echo \"CTL-EXIT $?\"\n\
         wait $vmm\n\
         status=$?\n\
         cat out\n\
         echo \"VMM-EXIT $status\"\n",
    );
    // `ctl get` prints the answer pretty, one field per line.
    assert!(r.output.contains("\"state\": \"running\""), "GET /vm answered:\n{}", r.output);
    assert!(r.output.contains("CTL-EXIT 0"), "{}", r.output);
    assert!(r.output.contains("the guest powered off"), "{}", r.output);
    assert!(r.output.contains("VMM-EXIT 0"), "{}", r.output);
}

/// virtio-blk: the guest reads the disk's ID, writes a pattern with fsync,
/// and after the VM is gone the bytes are in the host file.
#[test]
fn virtio_blk_writes_reach_the_backing_file_and_the_id_is_read() {
    const L2: &str = r#"
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "L2-SERIAL $(cat /sys/block/vda/serial)"
printf 'kvmos-blk-check!' | dd of=/dev/vda bs=4096 seek=1 conv=fsync 2>/dev/null
echo "L2-WROTE $?"
poweroff -f
"#;
    let script = "dd if=/dev/zero of=disk.img bs=1M count=8 2>/dev/null\n\
         ./kvmos-vmm --jail-uid 1000 --jail-gid 1000 --kernel guest-bzImage --initrd l2.cpio.zst --cmdline 'console=ttyS0 reboot=k panic=1 pci=off quiet' \
         --disk disk.img --serial stdio < /dev/null\n\
         echo \"VMM-EXIT $?\"\n\
         echo \"DISK $(dd if=disk.img bs=1 skip=4096 count=16 2>/dev/null)\"\n";
    let r = with_l2("vmm-blk", L2, script);
    assert!(r.output.contains("L2-SERIAL disk.img"), "the device ID:\n{}", r.output);
    assert!(r.output.contains("L2-WROTE 0"), "{}", r.output);
    assert!(r.output.contains("VMM-EXIT 0"), "{}", r.output);
    assert!(r.output.contains("DISK kvmos-blk-check!"), "the pattern is on the host file:\n{}", r.output);
}

/// virtio-net on a TAP: the guest pings the L1 side of its tap, with small
/// packets and with ones that need IP fragments, and L1 sees the guest's
/// derived MAC in its neighbour table.
#[test]
fn virtio_net_guest_pings_the_l1_side_of_its_tap() {
    const L2: &str = r#"
mount -t proc proc /proc
mount -t sysfs sysfs /sys
ip addr add 10.0.2.2/24 dev eth0
ip link set eth0 up
echo "L2-MAC $(cat /sys/class/net/eth0/address)"
ping -c 3 -W 5 10.0.2.1
echo "L2-PING $?"
ping -c 2 -s 6000 -W 5 10.0.2.1
echo "L2-PING-BIG $?"
poweroff -f
"#;
    let script = "./kvmos-vmm --jail-uid 1000 --jail-gid 1000 --kernel guest-bzImage --initrd l2.cpio.zst \
         --cmdline 'console=ttyS0 reboot=k panic=1 pci=off quiet' \
         --net tap=tap0,mac=52:54:00:12:34:56 --serial stdio < /dev/null > out 2>&1 &\n\
         vmm=$!\n\
         until [ -e /sys/class/net/tap0 ]; do sleep 0.2; done\n\
         ip addr add 10.0.2.1/24 dev tap0\n\
         ip link set tap0 up\n\
         wait $vmm\n\
         status=$?\n\
         cat out\n\
         echo \"VMM-EXIT $status\"\n";
    let r = with_l2("vmm-net", L2, script);
    assert!(r.output.contains("L2-MAC 52:54:00:12:34:56"), "the configured MAC:\n{}", r.output);
    assert!(r.output.contains("3 packets transmitted, 3 packets received"), "{}", r.output);
    assert!(r.output.contains("L2-PING 0"), "{}", r.output);
    assert!(r.output.contains("L2-PING-BIG 0"), "fragmented pings:\n{}", r.output);
    assert!(r.output.contains("VMM-EXIT 0"), "{}", r.output);
}
