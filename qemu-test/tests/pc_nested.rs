//! The PC machine with a real operating system, nested under QEMU TCG (the
//! nested harness): the Debian 12 test image (stock kernel, GRUB, systemd;
//! see `kvmos_qemu_test::debian`) boots in kvmos-vmm through SeaBIOS and
//! through OVMF to a login prompt on the serial console. The test logs in,
//! sees the NIC get a DHCP lease from a server on the L1 side of its tap,
//! writes a file, and powers off; the VMM exits with the power-off code and
//! the file is on the disk. Under OVMF a boot entry made in the guest is
//! still there at the next boot, read from the VM's variable file.
//!
//! The CD-ROM drive: OVMF boots an El Torito ISO that is not hybrid (GRUB
//! for UEFI on it reads a file from the medium; in the default run), and
//! Debian's own kernel (`ata_piix`, `sr`) reads the medium, sees it
//! ejected and sees a new one put in through the control API.

use kvmos_qemu_test::debian;
use kvmos_qemu_test::nested::{Nested, NestedResult, L1_TSC};
use std::time::Duration;

/// A run takes 3 to 6 minutes; at 15 the L1 is taken as hung, and the
/// harness reports where its CPUs are.
const TIMEOUT: Duration = Duration::from_secs(900);

/// L1 set-up: the guest's network (a tap with a DHCP server on the L1
/// side) and a FIFO for typing on the guest's console. `{vmm}` starts
/// kvmos-vmm with the guest's console on `out`.
const L1_SETUP: &str = r#"
ip link set lo up
mkfifo in
# The console file exists before tail follows it: the VMM's shell opens it
# only once `exec 3>in` below has opened the FIFO it reads first.
: > out
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
# l1_clock: the L1's clocksource, and why its kernel gave up on the TSC if
# it did. Its KVM keeps a guest's clock and timer right only with a stable
# TSC (the harness boots the L1 with tsc=reliable); healthy: "L1-CLOCK tsc".
# Then the L1's TSC rate, first and refined: when the two differ by more
# than 250 ppm, its KVM loses track of a new vCPU's TSC unless the VMM
# repairs it (kvmos_vmm::arch::tsc; the VMM's log says so).
l1_clock() {
  echo "L1-CLOCK $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)$(dmesg | grep -o 'TSC unstable.*' | sed 's/^/ /' | tr '\n' ';')"
  {l1_tsc}
}
# dump_vmm: what the VMM is doing: each thread's state and wait channel (a
# disk thread in I/O or waiting for work, vCPUs in the guest), and the VM's
# counters twice 10 s apart (are the vCPUs still exiting?).
dump_vmm() {
  for p in /proc/[0-9]*; do
    grep -q kvmos-vmm $p/cmdline 2>/dev/null || continue
    for t in $p/task/*; do
      echo "THREAD $(cat $t/comm) state=$(cut -d' ' -f3 $t/stat) wchan=$(cat $t/wchan 2>/dev/null)"
    done
  done
  ./kvmos-vmm ctl --api-socket api.sock get | grep -A8 counters
  # The L1's hrtimers, among them the one its KVM arms for the guest's
  # local APIC timer (apic_timer_fn; addresses, named from System.map):
  # missing, far ahead or long past tells where a lost guest timer went.
  grep -E "^now at|^cpu:|^ #[0-9]|^ # expires" /proc/timer_list | head -80
  l1_clock
  sleep 10
  ./kvmos-vmm ctl --api-socket api.sock get | grep -A8 counters
}
# watch_console (in the background): the test drives the guest without
# pauses, so a console that stays still means the guest waits for nothing
# the test does.
# - Every 60 s of silence it types a newline on the guest's console. Until
#   the VMM repaired the TSC an L1's KVM can lose (see the SeaBIOS test), a
#   guest's timer was now and then armed minutes ahead, and the guest slept
#   until some other interrupt came. A key's
#   interrupt wakes such a guest, as pressing Enter would, once it has its
#   serial port open. The test says how often it typed one. A newline is
#   harmless at every point the test waits: GRUB boots its default, a
#   login prompt prints itself again, a shell runs nothing.
# - After 240 s it prints what the VMM is doing, once.
watch_console() {
  trap '' PIPE
  last=-1; still=0
  while sleep 20; do
    size=$(wc -c < out 2>/dev/null)
    if [ "$size" != "$last" ]; then last=$size; still=0; continue; fi
    still=$((still + 20))
    if [ $((still % 60)) -eq 0 ]; then
      echo "GUEST-NUDGED: no console output for $still s; typed a newline"
      echo >&3
    fi
    if [ $still -eq 240 ]; then
      echo "GUEST-SILENT: no console output for 240 s"
      dump_vmm
    fi
  done
}
watch_console &
watcher=$!
# wait_vmm: waits for the VMM to end (after a poweroff). If it is still
# there after 5 minutes, prints what it is doing, then kills it (L1_FINISH
# prints its log), so a hang fails the test with facts instead of running
# into the test's timeout.
wait_vmm() {
  n=0
  while kill -0 $vmm 2>/dev/null && [ $n -lt 300 ]; do sleep 1; n=$((n + 1)); done
  if kill -0 $vmm 2>/dev/null; then
    echo "VMM-HUNG: still running 300 s after poweroff"
    dump_vmm
    kill -9 $vmm
  fi
  wait $vmm
}
"#;

/// The L1 set-up, with `vmm` as the command that starts the VMM.
fn l1_setup(vmm: &str) -> String {
    L1_SETUP.replace("{vmm}", vmm).replace("{l1_tsc}", L1_TSC)
}

/// Powers the guest off, waits for the VMM, prints what it saw.
const L1_FINISH: &str = r#"
echo poweroff >&3
wait_vmm
status=$?
sleep 1
kill $tail $watcher 2>/dev/null
l1_clock
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
    let script = format!("{}{guest_commands}{L1_FINISH}{after}", l1_setup(vmm));
    let mut n = Nested::new(&script).unwrap().cpus(l1_cpus).with_vmm().unwrap().drive(&image);
    if vmm.contains("--firmware uefi") {
        n = n.for_uefi_guests().unwrap();
    }
    for (path, data) in extra {
        n = n.file(path, data, 0o644).unwrap();
    }
    run_watched(n, name)
}

/// Runs a script that uses `watch_console`, and says on the test's log how
/// often the guest had to be woken by a key: the figure to watch if the
/// nested environment gets worse.
fn run_watched(n: Nested, name: &str) -> NestedResult {
    let r = n.run(name, TIMEOUT).unwrap();
    let nudges = r.output.lines().filter(|l| l.starts_with("GUEST-NUDGED")).count();
    if nudges > 0 {
        eprintln!(
            "[{name}] the guest's console was silent for a minute {nudges} time(s); a newline was typed each time"
        );
    }
    r
}

fn firmware_file(name: &str) -> (&'static str, Vec<u8>) {
    let path = kvmos_vmm::arch::firmware::find(name).unwrap_or_else(|| panic!("{name} is installed by the host tools"));
    (Box::leak(name.to_string().into_boxed_str()), std::fs::read(path).unwrap())
}

/// The commands every boot runs once logged in: the lease, the CPUs, and a
/// file on the root file system.
const CHECKS: &str = r#"
login
echo 'echo "LEASE $(ip -4 -o addr show eth0 | grep -o "inet [0-9.]*")"; echo "CPUS $(grep -c ^processor /proc/cpuinfo)"; echo "MODEL$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2)"; echo "CLOCK $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource) $(cat /sys/devices/system/clockevents/clockevent0/current_device) up=$(cut -d" " -f1 /proc/uptime) $(grep LOC: /proc/interrupts | tr -s " " | cut -d" " -f2,3) timer-softirqs=$(grep TIMER: /proc/softirqs | tr -s " " | cut -d" " -f3)"; echo proof-$((6*7)) > /root/proof.txt; sync; echo "WROTE-$?"' >&3
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

/// The L1 still has the TSC as its clocksource at the end (`l1_clock`): its
/// KVM needs a stable TSC to keep a guest's clock and timer right.
fn assert_l1_kept_its_tsc(out: &str) {
    assert!(
        out.lines().any(|l| l.trim_end() == "L1-CLOCK tsc"),
        "the L1 kept the TSC as its clock (booted with tsc=reliable):\n{out}"
    );
}

fn assert_booted_and_powered_off(r: &NestedResult, firmware_banner: &str) {
    let out = &r.output;
    assert!(out.contains(firmware_banner), "the firmware's output:\n{out}");
    assert!(out.contains(debian::KERNEL_MARKER), "GRUB started the kernel with its configuration:\n{out}");
    assert!(out.contains("debian-test login:"), "the login prompt:\n{out}");
    assert!(out.contains("LEASE inet 10.0.3.1"), "a DHCP lease from the L1 side:\n{out}");
    assert!(out.contains("WROTE-0"), "{out}");
    assert!(out.contains("VMM-EXIT 0"), "poweroff ends the VMM with the power-off code:\n{out}");
    assert!(out.contains("ON-DISK proof-42"), "the file is on the disk:\n{out}");
    assert_l1_kept_its_tsc(out);
    assert_eq!(r.status, 0, "{out}");
}

/// Once flaky at poweroff (1 run in 3 to 5 triple-faulted or hung while
/// systemd stopped networking, 2026-12-01 to 12-06); passed 3 of 3 after
/// virtio-net stopped overwriting a waiting received frame with the next
/// transmitted one and MSI-X kept a masked vector's route (2026-12-07).
///
/// Until 2026-12-08 also flaky beside the other nested tests, more often
/// on a loaded machine: a run in four or five had the guest asleep for
/// minutes, its vCPU halted with no exits, its kvm-clock standing still,
/// and the L1's KVM holding its local APIC timer minutes ahead; once
/// woken, its log said "rcu_preempt kthread timer wakeup didn't happen for
/// 31282 jiffies ... timer-softirq=1". Read through the VMM in a caught
/// hang: KVM's view of the guest's TSC was 0, and the TSC deadline the
/// guest had written 281 s ahead of it. The L1 (TCG's CPU has no constant
/// TSC) had refined its TSC calibration by more than 250 ppm after its KVM
/// loaded, and that KVM left the vCPUs' TSC multiplier at zero. kvmos-vmm
/// now finds and repairs that (`kvmos_vmm::arch::tsc`); the L1 also boots
/// with `tsc=reliable` (see `QemuOptions::kernel_arguments`), and every
/// Debian test checks that it kept the TSC (`L1-CLOCK tsc`).
#[test]
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
    // The normalised CPUID: a generic model name, whichever vendor the L1's CPU has.
    assert!(
        r.output.contains("MODEL AMD EPYC") || r.output.contains("MODEL Intel(R) Xeon(R) Processor"),
        "a generic CPU model in /proc/cpuinfo:\n{}",
        r.output
    );
    assert!(r.output.contains("INTX-LEASE inet 10.0.3.1"), "the NIC works with INTx:\n{}", r.output);
    let irqs = r.output.split("IRQS ").last().unwrap_or_default().lines().next().unwrap_or_default();
    assert!(irqs.contains("IO-APIC") && irqs.contains("fasteoi"), "a level-triggered IO-APIC line: {irqs}");
}

/// Runs on the patched L0 QEMU (`kvmos_qemu_test::l0_qemu`): Debian's
/// aborts when OVMF writes CR8 two levels down.
///
/// Was flaky for the L1's TSC, as described at
/// `debian_boots_through_seabios_with_two_vcpus`.
#[test]
fn debian_boots_through_ovmf_and_its_boot_entry_survives_a_restart() {
    // First boot: the fallback loader; the guest adds a boot entry.
    let first = format!(
        "{CHECKS}\
         echo 'efibootmgr -c -d /dev/vda -p 2 -L kvmos-entry -l \"\\\\EFI\\\\debian\\\\grubx64.efi\" > /dev/null; echo \"ENTRY-$?\"' >&3\n\
         wait_for 'ENTRY-'\n"
    );
    let second = r#"
echo "----- second boot -----"
rm -f out
: > out
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
         watch_console &\n\
         watcher=$!\n\
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

/// Two test media for the CD-ROM tests: (volume ID, README.TXT) each.
const MEDIA: [(&str, &str); 2] = [("KVMOSCDA", "medium-A-contents"), ("KVMOSCDB", "medium-B-contents")];

fn data_iso(dir: &std::path::Path, (volume, text): (&str, &str)) -> Vec<u8> {
    let iso = dir.join(format!("{volume}.iso"));
    let files = [("README.TXT", text.as_bytes())];
    kvmos_vmm::tiny_guest::el_torito_iso(&iso, volume, kvmos_vmm::tiny_guest::IsoBoot::None, &files).unwrap();
    std::fs::read(&iso).unwrap()
}

/// Debian's kernel drives the CD-ROM with its own drivers: the PIIX IDE
/// controller binds `ata_piix`, the drive is `sr0` (INQUIRY says KVMOS),
/// the guest mounts the medium and reads a file. The L1 ejects it through
/// the control API (`kvmos-vmm ctl eject`): mounting fails, no medium.
/// It puts another ISO in (`ctl insert`, the file passed to the jailed
/// VMM as a descriptor): the guest reads the new medium's file.
///
/// On the same controller, an IDE hard disk (`--disk F,ide`): Debian's
/// `sd` sees it as sda (IDENTIFY's model), reads a marker from it and
/// writes one with a flush, which the L1 finds in the file afterwards.
///
/// The INTx fallback of virtio-pci: the guest unbinds its virtio-rng,
/// forbids MSI for it (`msi_bus`), binds it again, and reads random bytes:
/// the driver now takes its interrupts on the PCI INTx line, routed by the
/// DSDT's `_PRT` to the IO-APIC, which `/proc/interrupts` counts.
#[test]
fn debian_reads_the_cdrom_and_sees_its_medium_changed() {
    let dir = kvmos_qemu_test::work_dir("pc-cdrom-debian-media").unwrap();
    let (a, b) = (data_iso(&dir, MEDIA[0]), data_iso(&dir, MEDIA[1]));
    let quoted = |marker: &str| format!("\"{}\"\"{}\"", &marker[..3], &marker[3..]);
    // Mounts the medium: prints MOUNT-<step>-<mount's status> and
    // README-<step> <the file>, then the step's marker.
    let mount = |step: &str| {
        format!(
            "echo 'sleep 2; mount -o ro /dev/sr0 /mnt; echo \"MOUNT-{step}-$?\"; echo \"README-{step} $(cat /mnt/README.TXT 2>/dev/null)\"; umount /mnt 2>/dev/null; echo {}' >&3\nwait_for 'STEP-{step}'\n",
            quoted(&format!("STEP-{step}"))
        )
    };
    let checks = format!(
        "login\n\
         echo 'echo \"PIIX $(ls /sys/bus/pci/drivers/ata_piix)\"; echo \"VENDOR $(cat /sys/block/sr0/device/vendor)\"; echo {}' >&3\n\
         wait_for 'DRIVER-DONE'\n\
         echo 'echo \"SDA $(cat /sys/block/sda/device/model)\"; echo \"READ-$(dd if=/dev/sda bs=512 skip=100 count=1 2>/dev/null | head -c 16)\"; echo IDE-WRITTEN-42 | dd of=/dev/sda bs=512 seek=200 conv=fsync 2>/dev/null; echo \"DD-$?\"; echo {}' >&3\n\
         wait_for 'IDE-DONE'\n\
         echo 'd=$(grep -l 0x1044 /sys/bus/pci/devices/*/device); d=${{d%/device}}; echo ${{d##*/}} > /sys/bus/pci/drivers/virtio-pci/unbind; echo 0 > $d/msi_bus; echo ${{d##*/}} > /sys/bus/pci/drivers/virtio-pci/bind; sleep 1; echo \"RNG-$(timeout 30 dd if=/dev/hwrng bs=32 count=4 iflag=fullblock 2>/dev/null | wc -c)\"; echo \"MSI-VECTORS $(ls $d/msi_irqs 2>/dev/null | wc -l)\"; echo \"INTX-LINE $(grep IO-APIC /proc/interrupts | grep virtio | tr -s \" \")\"; echo {}' >&3\n\
         wait_for 'INTX-DONE'\n\
         {}\
         ./kvmos-vmm ctl --api-socket api.sock eject --disk 0 && echo L1-EJECTED\n\
         {}\
         ./kvmos-vmm ctl --api-socket api.sock insert --disk 0 --iso b.iso && echo L1-INSERTED\n\
         {}\
         ./kvmos-vmm ctl --api-socket api.sock stop\n\
         wait $vmm\n\
         kill $tail $watcher 2>/dev/null\n\
         l1_clock\n\
         echo \"L1-READ $(dd if=ide.img bs=512 skip=200 count=1 2>/dev/null | head -c 14)\"\n\
         grep -v 'has no device' vmm.err | tail -20\n",
        quoted("DRIVER-DONE"),
        quoted("IDE-DONE"),
        quoted("INTX-DONE"),
        mount("A"),
        mount("EMPTY"),
        mount("B"),
    );
    let image = debian::image().unwrap();
    let vmm = "./kvmos-vmm --jail-uid 1000 --jail-gid 1000 --firmware bios --firmware-path bios-256k.bin \
               --disk a.iso,cdrom --disk ide.img,ide --boot-order 2";
    let script = format!("{}{checks}", l1_setup(vmm));
    let (bios_name, bios) = firmware_file("bios-256k.bin");
    let n = Nested::new(&script).unwrap().cpus(1).with_vmm().unwrap().drive(&image);
    let n = n.file(bios_name, bios, 0o644).unwrap().file("a.iso", a, 0o644).unwrap().file("b.iso", b, 0o644).unwrap();
    let mut ide = vec![0u8; 8 << 20];
    ide[100 * 512..100 * 512 + 16].copy_from_slice(b"IDE-MARKER-READ!");
    let n = n.file("ide.img", ide, 0o644).unwrap();
    let r = run_watched(n, "pc-cdrom-debian");
    let out = &r.output;
    assert!(out.contains("PIIX 0000:00:01.1"), "ata_piix drives the IDE function:\n{out}");
    assert!(out.contains("VENDOR KVMOS"), "sr0 is our drive:\n{out}");
    assert!(out.contains("MOUNT-A-0") && out.contains(&format!("README-A {}", MEDIA[0].1)), "medium A:\n{out}");
    assert!(out.contains("L1-EJECTED") && out.contains("L1-INSERTED"), "{out}");
    assert!(out.contains("MOUNT-EMPTY-32") && out.contains("no medium found"), "no medium after the eject:\n{out}");
    assert!(out.contains("MOUNT-B-0") && out.contains(&format!("README-B {}", MEDIA[1].1)), "medium B:\n{out}");
    assert!(out.contains("SDA KVMOS HARDDISK"), "sd drives the IDE disk:\n{out}");
    assert!(out.contains("READ-IDE-MARKER-READ!") && out.contains("DD-0"), "read and written in the guest:\n{out}");
    assert!(out.contains("L1-READ IDE-WRITTEN-42"), "the write is in the file:\n{out}");
    assert_l1_kept_its_tsc(out);
    // virtio-rng rebound with MSI off: the driver falls back to the INTx
    // line, and its requests complete through it.
    assert!(out.contains("RNG-128"), "virtio-rng answers on INTx:\n{out}");
    assert!(out.contains("MSI-VECTORS 0"), "no MSI-X vectors after the rebind:\n{out}");
    // The line as the guest printed it ("INTX-LINE 16: 5 IO-APIC 16-fasteoi
    // virtio2"), not the typed command that the console echoes.
    let intx = out.lines().filter_map(|l| l.strip_prefix("INTX-LINE ")).find(|l| l.contains("IO-APIC"));
    let intx = intx.unwrap_or_default();
    let count: u64 = intx.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    assert!(intx.contains("IO-APIC") && intx.contains("virtio") && count > 0, "INTx interrupts counted:\n{out}");
}

/// A UEFI boot loader on a FAT image: GRUB for x86_64-efi (Debian's
/// `grub-efi-amd64-bin`) with an embedded configuration that prints a
/// marker, finds the medium by its file, prints the file and powers off.
fn grub_efi_image(dir: &std::path::Path) -> Vec<u8> {
    let cfg = dir.join("early.cfg");
    std::fs::write(
        &cfg,
        "serial --unit=0 --speed=115200\nterminal_output serial\necho KVMOS-EFI-CDROM-BOOTED\nsearch --no-floppy --file /README.TXT --set=root\ncat /README.TXT\nhalt\n",
    )
    .unwrap();
    let efi = dir.join("BOOTX64.EFI");
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(std::process::Command::new("grub-mkimage")
        .args(["-O", "x86_64-efi", "-p", "/boot/grub", "-c"])
        .arg(&cfg)
        .arg("-o")
        .arg(&efi)
        .args(["iso9660", "fat", "part_msdos", "part_gpt", "search", "search_fs_file", "echo", "cat", "halt"])
        .args(["serial", "terminal"]));
    let fat = dir.join("efi.img");
    run(std::process::Command::new("mkfs.vfat").arg("-C").arg(&fat).arg("4096"));
    run(std::process::Command::new("mmd").arg("-i").arg(&fat).args(["::/EFI", "::/EFI/BOOT"]));
    run(std::process::Command::new("mcopy").arg("-i").arg(&fat).arg(&efi).arg("::/EFI/BOOT/BOOTX64.EFI"));
    std::fs::read(&fat).unwrap()
}

/// OVMF boots from the CD-ROM: an ISO that is not hybrid, whose El Torito
/// entry is a UEFI boot image. GRUB on it reads the medium's file through
/// OVMF's ATAPI driver and powers the VM off.
#[test]
fn ovmf_boots_an_el_torito_iso_from_the_cdrom() {
    let dir = kvmos_qemu_test::work_dir("pc-cdrom-ovmf-media").unwrap();
    let efi = grub_efi_image(&dir);
    let iso = dir.join("efi.iso");
    let files = [("README.TXT", &b"read-from-the-uefi-cdrom\n"[..])];
    kvmos_vmm::tiny_guest::el_torito_iso(&iso, "KVMOSEFI", kvmos_vmm::tiny_guest::IsoBoot::Uefi(&efi), &files).unwrap();
    let script = "cp OVMF_VARS_4M.fd vars.fd\n\
        echo '{\"firmware_log\": \"fw.log\"}' > vm.json\n\
        timeout 900 ./kvmos-vmm --jail-uid 1000 --jail-gid 1000 --firmware uefi --firmware-path OVMF_CODE_4M.fd \
        --uefi-vars vars.fd --disk efi.iso,cdrom --memory-mib 256 --config vm.json --serial stdio > out 2> vmm.err\n\
        echo \"VMM-EXIT $?\"\n\
        strings -n 4 out | tail -40\n\
        strings -n 4 fw.log | grep -e Boot -e CdRom -e Ata | tail -20\n\
        grep -v 'has no device' vmm.err | tail -10\n";
    let (code_name, code) = firmware_file("OVMF_CODE_4M.fd");
    let (_, vars) = firmware_file("OVMF_VARS_4M.fd");
    let n = Nested::new(script).unwrap().cpus(1).with_vmm().unwrap().for_uefi_guests().unwrap();
    let n = n.file(code_name, code, 0o644).unwrap().file("OVMF_VARS_4M.fd", vars, 0o644).unwrap();
    let r = n.file("efi.iso", std::fs::read(&iso).unwrap(), 0o644).unwrap().run("pc-cdrom-ovmf", TIMEOUT).unwrap();
    let out = &r.output;
    assert!(out.contains("KVMOS-EFI-CDROM-BOOTED"), "GRUB started from the CD-ROM:\n{out}");
    assert!(out.contains("read-from-the-uefi-cdrom"), "and read the medium:\n{out}");
    assert!(out.contains("VMM-EXIT 0"), "GRUB's halt powered the VM off:\n{out}");
}
