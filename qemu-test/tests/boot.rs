//! The image boots, both ways an admin can boot it, into kvmos-init as PID 1
//! with /dev/kvm present (QEMU TCG `-cpu max` gives the appliance AMD SVM).

use kvmos_image_builder::qemu::QemuOptions;
use kvmos_qemu_test::{image, work_dir, Appliance, Boot, BOOT_TIMEOUT};

/// The checks every boot must pass, in the order they appear on the console.
fn assert_boots_to_ready(mut vm: Appliance) {
    vm.expect("Run /init as init process", BOOT_TIMEOUT).unwrap();
    vm.expect(": running as PID 1", BOOT_TIMEOUT).unwrap();
    vm.expect("KVM: /dev/kvm is available", BOOT_TIMEOUT).unwrap();
    vm.expect("kvmos-init: ready", BOOT_TIMEOUT).unwrap();
    let out = vm.output();
    assert!(!out.contains("Kernel panic"), "kernel panic on the console:\n{out}");
    assert!(!out.contains("WARNING:"), "init reported a failing step:\n{out}");
}

#[test]
fn direct_kernel_boot_reaches_init_ready_with_kvm() {
    let img = image().unwrap();
    let dir = work_dir("direct").unwrap();
    let opts = QemuOptions::new(Boot::Direct { kernel: img.bz_image.clone(), initrd: img.initramfs.clone() }, &dir);
    assert_boots_to_ready(Appliance::boot("direct", opts).unwrap());
}

#[test]
fn uefi_disk_boot_reaches_init_ready_with_kvm() {
    let img = image().unwrap();
    let dir = work_dir("uefi").unwrap();
    let opts = QemuOptions::new(Boot::Uefi { disk: img.disk_image.clone() }, &dir);
    assert_boots_to_ready(Appliance::boot("uefi", opts).unwrap());
}
