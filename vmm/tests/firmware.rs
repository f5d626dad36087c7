//! The PC machine on this host's /dev/kvm with Debian's SeaBIOS (installed
//! by the project's host tools): the firmware starts, finds the virtio-blk
//! disks on PCI, prints on the serial console, and boots a hand-made boot
//! sector, which reads fw_cfg, CMOS and PCI configuration space and reports
//! what it saw. The boot order picks the disk. OVMF and real operating
//! systems cannot run on this host's KVM; qemu-test boots those nested.

mod support;

use kvmos_vmm::tiny_guest;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const VMM: &str = env!("CARGO_BIN_EXE_kvmos-vmm");

/// Runs kvmos-vmm with the serial console on stdout until it exits (at
/// most 60 s); returns the exit code and the console output.
fn run_vmm(args: &[&str]) -> (i32, Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("console.out");
    let err_path = dir.path().join("vmm.err");
    // Jailed, as the panel runs it: the firmware's whole path under seccomp.
    let mut child = Command::new(VMM)
        .args(args)
        .args(["--serial", "stdio", "--memory-mib", "64"])
        .args(kvmos_vmm::jail::testing::args(kvmos_vmm::jail::testing::next_slot()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = std::fs::read(&out_path).unwrap();
    let err = std::fs::read_to_string(&err_path).unwrap();
    (status.code().unwrap_or(-1), out, err)
}

fn disk(dir: &Path, name: &str, message: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, tiny_guest::boot_disk(message)).unwrap();
    p.display().to_string()
}

/// The bytes after `marker` in the console output.
fn after<'a>(out: &'a [u8], marker: &str, len: usize) -> &'a [u8] {
    let at = out
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .unwrap_or_else(|| panic!("no {marker:?} in the console output: {:?}", String::from_utf8_lossy(out)));
    &out[at + marker.len()..at + marker.len() + len]
}

#[test]
fn seabios_boots_a_boot_sector_that_sees_fw_cfg_cmos_and_pci() {
    let dir = tempfile::tempdir().unwrap();
    let d = disk(dir.path(), "a.img", "hello from the boot sector");
    let (code, out, err) = run_vmm(&["--firmware", "bios", "--disk", &d, "--vcpus", "2"]);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("SeaBIOS (version"), "the firmware's banner: {text}\n{err}");
    assert!(text.contains("Booting from Hard Disk"), "{text}\n{err}");
    assert!(text.contains("hello from the boot sector"), "BIOS teletype output: {text}\n{err}");
    assert_eq!(after(&out, "FW:", 4), b"QEMU");
    assert_eq!(after(&out, "CMOS:", 1), [1], "two CPUs");
    assert_eq!(after(&out, "PCI:", 4), [0x86, 0x80, 0x37, 0x12], "the i440FX host bridge");
    assert_eq!(code, 3, "the boot sector's reset ends the VMM with the reboot code: {err}");
    assert!(err.contains("boot marker"), "{err}");
}

/// The guest sees the normalised CPUID: a generic brand for the host's
/// vendor, not the host's model, and the cores it was given.
#[test]
fn the_guest_sees_a_generic_cpu_brand_and_its_cores() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cpuid.img");
    std::fs::write(&p, tiny_guest::cpuid_disk("reading CPUID")).unwrap();
    let (code, out, err) = run_vmm(&["--firmware", "bios", "--disk", p.to_str().unwrap(), "--vcpus", "2"]);
    assert_eq!(code, 3, "{}\n{err}", String::from_utf8_lossy(&out));
    let leaf0 = std::arch::x86_64::__cpuid(0);
    let vendor: Vec<u8> = [leaf0.ebx, leaf0.edx, leaf0.ecx].iter().flat_map(|r| r.to_le_bytes()).collect();
    let brand = after(&out, "CPU:", 48);
    let text = String::from_utf8_lossy(&brand[..brand.iter().position(|&b| b == 0).unwrap_or(48)]).into_owned();
    match &vendor[..] {
        b"AuthenticAMD" => assert_eq!(text, "AMD EPYC"),
        b"GenuineIntel" => assert!(text.starts_with("Intel(R) Xeon(R) Processor"), "{text}"),
        other => panic!("a host CPU from {:?}", String::from_utf8_lossy(other)),
    }
    assert!(brand[text.len()..].iter().all(|&b| b == 0), "the rest of the brand is zeros: {brand:?}");
    assert_eq!(after(&out, "CORES:", 1), [2], "two cores at leaf 0xB's core level");
}

#[test]
fn the_boot_order_picks_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let a = disk(dir.path(), "a.img", "booted disk A");
    let b = disk(dir.path(), "b.img", "booted disk B");
    let (_, out, err) = run_vmm(&["--firmware", "bios", "--disk", &a, "--disk", &b, "--boot-order", "1,0"]);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("booted disk B") && !text.contains("booted disk A"), "{text}\n{err}");
    let (_, out, err) = run_vmm(&["--firmware", "bios", "--disk", &a, "--disk", &b]);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("booted disk A") && !text.contains("booted disk B"), "{text}\n{err}");
}

/// A hostile guest: the boot sector writes thousands of pseudo-random
/// values to fw_cfg, CMOS and PCI configuration space (moving BARs and
/// PMBASE, flipping MSI-X and chipset registers). The VMM keeps running,
/// the guest gets to its end, and the VM ends the way the guest asked.
#[test]
fn garbage_in_fw_cfg_cmos_and_pci_config_does_not_bring_the_vmm_down() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("garbage.img");
    std::fs::write(&p, tiny_guest::garbage_disk("garbage sector")).unwrap();
    let p = p.display().to_string();
    let (code, out, err) = run_vmm(&["--firmware", "bios", "--disk", &p]);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("garbage sector"), "{text}\n{err}");
    assert!(text.contains(tiny_guest::SURVIVED), "the guest finished its loop: {text}\n{err}");
    assert_eq!(code, 3, "ended by the guest's reset, not by an error: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// An IDE hard disk (`--disk F,ide`), for guests without virtio drivers:
/// SeaBIOS finds it on the PIIX IDE controller (IDENTIFY DEVICE), boots
/// from it (PIO reads), and the boot order can put it before a virtio
/// disk; a boot sector on a virtio disk reads an IDE disk's first sector
/// through the BIOS as the second hard disk.
#[test]
fn seabios_boots_and_reads_ide_hard_disks() {
    let dir = tempfile::tempdir().unwrap();
    let ide_disk = |name: &str, mut bytes: Vec<u8>| {
        bytes.resize(4 << 20, 0);
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        format!("{},ide", p.display())
    };
    let ide = ide_disk("ide.img", tiny_guest::boot_disk("booted from the IDE disk"));
    let (code, out, err) = run_vmm(&["--firmware", "bios", "--disk", &ide]);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("Booting from Hard Disk"), "{text}\n{err}");
    assert!(text.contains("booted from the IDE disk"), "{text}\n{err}");
    assert_eq!(code, 3, "{err}");

    let virtio = disk(dir.path(), "virtio.img", "booted from virtio");
    let (_, out, err) = run_vmm(&["--firmware", "bios", "--disk", &virtio, "--disk", &ide, "--boot-order", "1,0"]);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("booted from the IDE disk") && !text.contains("booted from virtio"), "{text}\n{err}");

    // A FAT-style volume label at 0x2B of the IDE disk's first sector.
    let mut labelled = vec![0u8; 512];
    labelled[0x2b..0x36].copy_from_slice(b"IDE-LABEL01");
    let second = ide_disk("labelled.img", labelled);
    let reader = dir.path().join("reader.img");
    std::fs::write(&reader, tiny_guest::disk_label_reader("reading the IDE disk")).unwrap();
    let vm = support::Vm::start_disks(&[&reader.display().to_string(), &second], kvmos_vmm::jail::testing::next_slot());
    vm.wait_console(&format!("{}IDE-LABEL01", tiny_guest::CDROM_READ), 1);
}

/// A hybrid ISO (an ISO 9660 image whose system area holds an MBR boot
/// sector, as most Linux installers are made) attached read-only as a disk
/// boots through SeaBIOS. The ISO is made here with xorriso.
#[test]
fn a_hybrid_iso_attached_read_only_boots() {
    let dir = tempfile::tempdir().unwrap();
    let mbr = dir.path().join("mbr.bin");
    std::fs::write(&mbr, &tiny_guest::boot_disk("booted from the hybrid ISO")[..512]).unwrap();
    let content = dir.path().join("content");
    std::fs::create_dir(&content).unwrap();
    std::fs::write(content.join("README.TXT"), "kvmos test medium\n").unwrap();
    // A medium of a few MiB, as real ones are: BIOS disk geometry needs at
    // least one whole cylinder (1008 sectors) to read a tiny disk by CHS.
    std::fs::write(content.join("FILLER.BIN"), vec![0u8; 2 << 20]).unwrap();
    let iso = dir.path().join("hybrid.iso");
    let out = std::process::Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-V", "KVMOSTEST", "-G"])
        .arg(&mbr)
        .arg("-o")
        .arg(&iso)
        .arg(&content)
        .output()
        .expect("xorriso is installed by the host tools");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&iso).unwrap();
    assert_eq!(&bytes[0x8001..0x8006], b"CD001", "an ISO 9660 image");
    let disk = format!("{},ro", iso.display());
    let (code, out, err) = run_vmm(&["--firmware", "bios", "--disk", &disk]);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("booted from the hybrid ISO"), "{text}\n{err}");
    assert_eq!(code, 3, "{err}");
    assert_eq!(std::fs::read(&iso).unwrap(), bytes, "a read-only medium is never written");
}

/// A test medium that is not hybrid, booting `boot_image` (BIOS, no
/// emulation), with the volume ID `volume`.
fn iso(dir: &Path, boot_image: &[u8], volume: &str) -> std::path::PathBuf {
    let iso = dir.join(format!("{volume}.iso"));
    let files = [("README.TXT", &b"kvmos test medium\n"[..])];
    tiny_guest::el_torito_iso(&iso, volume, tiny_guest::IsoBoot::Bios(boot_image), &files).unwrap();
    iso
}

/// The CD-ROM drive: SeaBIOS finds it on the PIIX IDE controller, boots
/// the El Torito image of an ISO that is not hybrid, and the boot image
/// reads the medium through the BIOS (ATAPI READ underneath).
#[test]
fn seabios_boots_an_el_torito_iso_from_the_cdrom_and_the_guest_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let iso = iso(dir.path(), &tiny_guest::cdrom_boot_image("booted from the CD-ROM"), "KVMOSTEST");
    let bytes = std::fs::read(&iso).unwrap();
    let cd = format!("{},cdrom", iso.display());
    let (code, out, err) = run_vmm(&["--firmware", "bios", "--disk", &cd]);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("DVD/CD"), "SeaBIOS lists the drive: {text}\n{err}");
    assert!(text.contains("booted from the CD-ROM"), "{text}\n{err}");
    assert!(!text.contains(tiny_guest::CDROM_READ_FAILED), "{text}\n{err}");
    assert_eq!(after(&out, tiny_guest::CDROM_READ, 9), b"KVMOSTEST", "the volume ID, read through INT 13h");
    assert_eq!(code, 3, "{err}");
    assert_eq!(std::fs::read(&iso).unwrap(), bytes, "the medium is never written");
}

/// The boot order names the CD-ROM among the disks: a disk and a CD-ROM,
/// each bootable, boot in the order given.
#[test]
fn the_boot_order_picks_the_cdrom_or_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let iso = iso(dir.path(), &tiny_guest::cdrom_boot_image("booted the CD-ROM"), "KVMOSTEST");
    let cd = format!("{},cdrom", iso.display());
    let d = disk(dir.path(), "a.img", "booted the disk");
    let (_, out, err) = run_vmm(&["--firmware", "bios", "--disk", &d, "--disk", &cd, "--boot-order", "1,0"]);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("booted the CD-ROM") && !text.contains("booted the disk"), "{text}\n{err}");
    let (_, out, err) = run_vmm(&["--firmware", "bios", "--disk", &d, "--disk", &cd]);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("booted the disk") && !text.contains("booted the CD-ROM"), "{text}\n{err}");
}

/// The CD-ROM's medium changes while the guest runs, through the control
/// API: the guest (reading the medium through the BIOS every 300 ms) sees
/// it go when ejected, and the new one when a second ISO is put in, passed
/// as a file descriptor, since the jailed VMM opens no files. `GET /vm`
/// shows the drive's medium.
#[test]
fn the_cdrom_medium_is_ejected_and_changed_while_the_guest_runs() {
    let dir = tempfile::tempdir().unwrap();
    let first = iso(dir.path(), &tiny_guest::cdrom_watch_image("watching the CD-ROM"), "KVMOSTEST");
    let second = iso(dir.path(), &tiny_guest::cdrom_watch_image("second medium"), "SECONDISO");
    let vm = support::Vm::start_disk(&format!("{},cdrom", first.display()), kvmos_vmm::jail::testing::next_slot());
    let read = |vol: &str| format!("{}{vol}", tiny_guest::CDROM_READ);
    vm.wait_console(&read("KVMOSTEST"), 2);
    let (status, body) = vm.api("GET", "/vm", None);
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["cdroms"][0]["disk"], 0);
    assert_eq!(info["cdroms"][0]["medium"], first.display().to_string());

    let client = kvmos_contract::control::Client::new(vm.path("api.sock"));
    client.change_medium(0, None).unwrap();
    vm.wait_console(tiny_guest::CDROM_READ_FAILED, 2);
    let (_, body) = vm.api("GET", "/vm", None);
    assert!(body.contains(r#""medium":null"#), "{body}");

    let file = std::fs::File::open(&second).unwrap();
    client.change_medium(0, Some(("second.iso", &file))).unwrap();
    vm.wait_console(&read("SECONDISO"), 1);
    let (_, body) = vm.api("GET", "/vm", None);
    assert!(body.contains(r#""medium":"second.iso""#), "{body}");

    // Without a descriptor there is nothing to put in; a disk that is not
    // a CD-ROM has no medium to change.
    let e = client.change_medium(3, None).unwrap_err().to_string();
    assert!(e.contains("404") && e.contains("not a CD-ROM"), "{e}");
    let (status, body) = vm.api("PUT", "/disks/0/medium", Some(r#"{"medium":"x.iso"}"#));
    assert_eq!(status, 400);
    assert!(body.contains("file descriptor"), "{body}");
    assert_eq!(vm.api("PUT", "/actions", Some(r#"{"action":"stop"}"#)).0, 204);
}
