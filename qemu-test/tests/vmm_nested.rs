//! kvmos-vmm booting Linux guests, nested under QEMU TCG (see the nested
//! harness): the guest kernel from kernel-config/guest.config reaches its
//! init with 1 and 2 vCPUs, signals the boot marker, and powers off through
//! ACPI, which ends the VMM with the power-off exit code.

use kvmos_qemu_test::nested::{guest_initramfs, Nested};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(900);

/// An L2 init that reports, marks boot, and powers off.
const L2_INIT: &str = r#"
mount -t proc proc /proc
mount -t devtmpfs devtmpfs /dev
echo "L2-MARKER cpus=$(grep -c ^processor /proc/cpuinfo) kernel=$(uname -r)"
printf x | dd of=/dev/port bs=1 seek=1088 count=1 2>/dev/null
poweroff -f
"#;

fn boot_to_marker(vcpus: u8) {
    let script = format!(
        "./kvmos-vmm --kernel guest-bzImage --initrd l2.cpio.zst --cmdline 'console=ttyS0 reboot=k panic=1 pci=off' \
         --vcpus {vcpus} --memory-mib 128 --serial stdio < /dev/null\n\
         echo \"VMM-EXIT $?\"\n"
    );
    let r = Nested::new(&script)
        .unwrap()
        .with_vmm()
        .unwrap()
        .file("l2.cpio.zst", guest_initramfs(L2_INIT).unwrap(), 0o644)
        .unwrap()
        .run(&format!("vmm-boot-{vcpus}cpu"), TIMEOUT)
        .unwrap();
    assert!(r.output.contains(&format!("L2-MARKER cpus={vcpus}")), "{}", r.output);
    assert!(r.output.contains("guest boot marker"), "the VMM logged the marker:\n{}", r.output);
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
