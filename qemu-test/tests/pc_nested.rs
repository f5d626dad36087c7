//! The PC machine with a real operating system, nested under QEMU TCG (the
//! nested harness): the Debian 12 test image (stock kernel, GRUB, systemd;
//! see `kvmos_qemu_test::debian`) boots in kvmos-vmm through SeaBIOS and
//! through OVMF to a login prompt on the serial console. The test logs in,
//! sees the NIC get a DHCP lease from a server on the L1 side of its tap,
//! writes a file, and powers off; the VMM exits with the power-off code and
//! the file is on the disk. Under OVMF a boot entry made in the guest is
//! still there at the next boot, read from the VM's variable file. Both
//! run by hand for now (`-- --ignored`): see each test for why.

use kvmos_qemu_test::debian;
use kvmos_qemu_test::nested::{Nested, NestedResult};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(1500);

/// L1 set-up: the guest's network (a tap with a DHCP server on the L1
/// side) and a FIFO for typing on the guest's console. `{vmm}` starts
/// kvmos-vmm with the guest's console on `out`.
const L1_SETUP: &str = r#"
ip link set lo up
mkfifo in
{vmm} --disk /dev/vda --net tap=kv0,mac=52:54:00:00:00:42 --memory-mib 512 \
  --api-socket api.sock --serial stdio < in > out 2> vmm.err &
vmm=$!
exec 3>in
# The guest's console, live in the L1 console (and so in the serial log).
tail -f out &
tail=$!
# net_up: once the VMM has made its tap, the L1 end and a DHCP server on it
# (a VMM's tap goes with it: each boot needs this again).
net_up() {
  until [ -e /sys/class/net/kv0 ]; do sleep 0.2; done
  ip addr add 10.0.3.1/24 dev kv0
  ip link set kv0 up
  printf 'start 10.0.3.100\nend 10.0.3.150\ninterface kv0\nlease_file /tmp/leases\noption subnet 255.255.255.0\noption router 10.0.3.1\n' > udhcpd.conf
  touch /tmp/leases
  kill $dhcpd 2>/dev/null
  udhcpd -f udhcpd.conf 2>/dev/null &
  dhcpd=$!
}
net_up
# wait_for TEXT: until the guest printed TEXT (5 s steps, 20 min at most).
wait_for() {
  n=0
  until grep -q "$1" out; do
    n=$((n + 1)); [ $n -gt 240 ] && { echo "NEVER-SAW $1"; exit 1; }
    sleep 5
  done
  echo "STAGE $1"
}
login() {
  wait_for 'login:'
  sleep 2
  echo root >&3
  wait_for 'Password:'
  sleep 1
  echo kvmos >&3
  wait_for 'root@debian-test'
}
# wait_vmm: waits for the VMM to end (after a poweroff). If it is still
# there after 5 minutes, prints what it was doing (each thread's state and
# wait channel, the VM's counters twice 10 s apart: are the vCPUs still
# exiting?), then kills it (L1_FINISH prints its log), so a hang fails the
# test with facts instead of running into the test's timeout.
wait_vmm() {
  n=0
  while kill -0 $vmm 2>/dev/null && [ $n -lt 300 ]; do sleep 1; n=$((n + 1)); done
  if kill -0 $vmm 2>/dev/null; then
    echo "VMM-HUNG: still running 300 s after poweroff"
    for p in /proc/[0-9]*; do
      grep -q kvmos-vmm $p/cmdline 2>/dev/null || continue
      for t in $p/task/*; do
        echo "THREAD $(cat $t/comm) state=$(cut -d' ' -f3 $t/stat) wchan=$(cat $t/wchan 2>/dev/null)"
      done
    done
    ./kvmos-vmm ctl --api-socket api.sock get | grep -A8 counters
    sleep 10
    ./kvmos-vmm ctl --api-socket api.sock get | grep -A8 counters
    kill -9 $vmm
  fi
  wait $vmm
}
"#;

/// Powers the guest off, waits for the VMM, prints what it saw.
const L1_FINISH: &str = r#"
echo poweroff >&3
wait_vmm
status=$?
sleep 1
kill $tail
echo "----- vmm log -----"
grep -v 'has no device' vmm.err | tail -20
echo "VMM-EXIT $status"
"#;

fn run_pc(
    name: &str,
    vmm: &str,
    guest_commands: &str,
    after: &str,
    extra: Vec<(&str, Vec<u8>)>,
    l1_cpus: u32,
) -> NestedResult {
    let image = debian::image().unwrap();
    let script = format!("{}{guest_commands}{L1_FINISH}{after}", L1_SETUP.replace("{vmm}", vmm));
    let mut n = Nested::new(&script).unwrap().cpus(l1_cpus).with_vmm().unwrap().drive(&image);
    if vmm.contains("--firmware uefi") {
        n = n.for_uefi_guests().unwrap();
    }
    for (path, data) in extra {
        n = n.file(path, data, 0o644).unwrap();
    }
    n.run(name, TIMEOUT).unwrap()
}

fn firmware_file(name: &str) -> (&'static str, Vec<u8>) {
    let path = kvmos_vmm::arch::firmware::find(name).unwrap_or_else(|| panic!("{name} is installed by the host tools"));
    (Box::leak(name.to_string().into_boxed_str()), std::fs::read(path).unwrap())
}

/// The commands every boot runs once logged in: the lease, the CPUs, and a
/// file on the root file system.
const CHECKS: &str = r#"
login
echo 'echo "LEASE $(ip -4 -o addr show eth0 | grep -o "inet [0-9.]*")"; echo "CPUS $(grep -c ^processor /proc/cpuinfo)"; echo proof-$((6*7)) > /root/proof.txt; sync; echo "WROTE-$?"' >&3
wait_for 'WROTE-'
"#;

/// The NIC (00:04.0) again with its legacy interrupt: MSI is refused to its
/// next driver (`msi_bus`), the driver is bound again, and the guest gets
/// a DHCP lease from the L1 side again, now through INTx (an IO-APIC line,
/// resampled when the guest ends it).
const INTX: &str = r#"
echo 'd=0000:00:04.0; echo 0 > /sys/bus/pci/devices/$d/msi_bus; echo $d > /sys/bus/pci/drivers/virtio-pci/unbind; echo $d > /sys/bus/pci/drivers/virtio-pci/bind; sleep 3; timeout 90 dhclient -1 eth0; echo "INTX-LEASE $(ip -4 -o addr show eth0 | grep -o "inet [0-9.]*")"; echo "IRQS $(grep virtio /proc/interrupts | tr -s " " | grep -o "[A-Z-]*APIC[^v]*virtio[0-9]*" | tr "\n" ";")"; echo "INTX-DON""E"' >&3
wait_for 'INTX-DONE'
"#;

/// After the VMM is gone: the file is on the disk's root partition.
const READ_BACK: &str = r#"
mkdir -p /mnt/root
mount -t ext4 -o ro /dev/vda3 /mnt/root && echo "ON-DISK $(cat /mnt/root/root/proof.txt)"
umount /mnt/root
"#;

fn assert_booted_and_powered_off(r: &NestedResult, firmware_banner: &str) {
    let out = &r.output;
    assert!(out.contains(firmware_banner), "the firmware's output:\n{out}");
    assert!(out.contains(debian::KERNEL_MARKER), "GRUB started the kernel with its configuration:\n{out}");
    assert!(out.contains("debian-test login:"), "the login prompt:\n{out}");
    assert!(out.contains("LEASE inet 10.0.3.1"), "a DHCP lease from the L1 side:\n{out}");
    assert!(out.contains("WROTE-0"), "{out}");
    assert!(out.contains("VMM-EXIT 0"), "poweroff ends the VMM with the power-off code:\n{out}");
    assert!(out.contains("ON-DISK proof-42"), "the file is on the disk:\n{out}");
    assert_eq!(r.status, 0, "{out}");
}

/// Run by hand for now (`-- --ignored`): it passed 4 of 5 runs on
/// 2026-12-01 and 2 of 2 on 2026-12-04; in the fifth the guest
/// triple-faulted while systemd stopped networking at poweroff (VMM exit
/// 4). Not yet explained; the UEFI test below once hung at the same point
/// (see there). The appliance test boots the same image through SeaBIOS in
/// the default run.
#[test]
#[ignore = "1 run in 5 triple-faults at poweroff; under investigation"]
fn debian_boots_through_seabios_with_two_vcpus() {
    let checks = format!("{CHECKS}{INTX}");
    let r = run_pc(
        "pc-seabios-debian",
        "./kvmos-vmm --jail-uid 1000 --jail-gid 1000 --firmware bios --firmware-path bios-256k.bin --vcpus 2",
        &checks,
        READ_BACK,
        vec![firmware_file("bios-256k.bin")],
        2,
    );
    assert_booted_and_powered_off(&r, "SeaBIOS (version");
    assert!(r.output.contains("CPUS 2"), "both vCPUs in /proc/cpuinfo:\n{}", r.output);
    assert!(r.output.contains("INTX-LEASE inet 10.0.3.1"), "the NIC works with INTx:\n{}", r.output);
    let irqs = r.output.split("IRQS ").last().unwrap_or_default().lines().next().unwrap_or_default();
    assert!(irqs.contains("IO-APIC") && irqs.contains("fasteoi"), "a level-triggered IO-APIC line: {irqs}");
}

/// Runs on the patched L0 QEMU (`kvmos_qemu_test::l0_qemu`): Debian's
/// aborts when OVMF writes CR8 two levels down.
///
/// Run by hand for now (`-- --ignored`): it passed twice on 2026-12-04,
/// then in CI on 2026-12-06 the second boot's poweroff hung, with the L0
/// QEMU idle, right after systemd printed "Stopping networking.service"
/// (the same point as the SeaBIOS test's triple fault). `wait_vmm` now
/// prints the VMM's threads and counters when that happens. The appliance
/// test boots the same image through OVMF and logs in in the default run.
#[test]
#[ignore = "1 run in 3 hangs at the second boot's poweroff; under investigation"]
fn debian_boots_through_ovmf_and_its_boot_entry_survives_a_restart() {
    // First boot: the fallback loader; the guest adds a boot entry.
    let first = format!(
        "{CHECKS}\
         echo 'efibootmgr -c -d /dev/vda -p 2 -L kvmos-entry -l \"\\\\EFI\\\\debian\\\\grubx64.efi\" > /dev/null; echo \"ENTRY-$?\"' >&3\n\
         wait_for 'ENTRY-'\n"
    );
    let second = r#"
echo "----- second boot -----"
{vmm} --disk /dev/vda --net tap=kv0,mac=52:54:00:00:00:42 --memory-mib 512 --api-socket api.sock \
  --serial stdio < in2 > out 2> vmm.err &
"#;
    // The second boot reuses the same variable file: OVMF boots the entry.
    let vmm = "./kvmos-vmm --jail-uid 1000 --jail-gid 1000 --firmware uefi --firmware-path OVMF_CODE_4M.fd --uefi-vars vars.fd";
    let after = format!(
        "{READ_BACK}\
         mkfifo in2\n\
         {}\
         vmm=$!\n\
         exec 3>in2\n\
         net_up\n\
         tail -f out &\n\
         tail=$!\n\
         login\n\
         echo 'echo \"CURRENT $(efibootmgr | grep BootCurrent)\"; efibootmgr | grep kvmos-entry' >&3\n\
         wait_for 'CURRENT'\n\
         sleep 3\n\
         {L1_FINISH}",
        second.replace("{vmm}", vmm)
    );
    let (_, vars) = firmware_file("OVMF_VARS_4M.fd");
    let r = run_pc(
        "pc-ovmf-debian",
        &format!("cp OVMF_VARS_4M.fd vars.fd\n{vmm}"),
        &first,
        &after,
        vec![firmware_file("OVMF_CODE_4M.fd"), ("OVMF_VARS_4M.fd", vars)],
        1,
    );
    let out = &r.output;
    assert!(out.contains("ENTRY-0"), "efibootmgr made the entry:\n{out}");
    assert!(out.matches("VMM-EXIT 0").count() == 2, "both boots powered off:\n{out}");
    assert!(out.contains("ON-DISK proof-42"), "{out}");
    let second_boot = out.rsplit("----- second boot -----").next().unwrap_or_default();
    assert!(second_boot.contains("debian-test login:"), "{out}");
    // The firmware booted the entry the guest made: BootCurrent names it.
    let current = second_boot.split("CURRENT BootCurrent: ").nth(1).map(|s| s[..4].to_string());
    let current = current.unwrap_or_else(|| panic!("no BootCurrent in the second boot:\n{out}"));
    assert!(
        second_boot.contains(&format!("Boot{current}* kvmos-entry")),
        "the entry survived the restart and was booted (BootCurrent {current}):\n{out}"
    );
}
