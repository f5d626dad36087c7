//! A tiny guest for tests on hosts that cannot run Linux guests (this
//! machine's kvm_pvm; see DESIGN.md): a 64-bit ELF "kernel" of a few dozen
//! instructions that kvmos-vmm boots like a vmlinux. It
//!
//! 1. arms the ACPI power button (PM1a_EN.PWRBTN_EN);
//! 2. prints [`READY_LINE`] and the prompt [`PROMPT`] on COM1;
//! 3. echoes every byte typed on the console;
//! 4. when the power button is pressed, requests S5 (PM1a_CNT), so the VMM
//!    ends with the power-off code.
//!
//! It polls instead of taking interrupts, so it keeps one host CPU busy
//! while it runs: fine for tests, not for benchmarks.

use std::path::Path;

pub const READY_LINE: &str = "tiny guest ready";
pub const PROMPT: &str = "tiny> ";

/// The machine code, assembled by hand (offsets in the comments).
fn code() -> Vec<u8> {
    let mut c = vec![
        0x66, 0xBA, 0x02, 0x06, //  0: mov dx, 0x602      (PM1a_EN)
        0x66, 0xB8, 0x00, 0x01, //  4: mov ax, 0x100      (PWRBTN_EN)
        0x66, 0xEF, //              8: out dx, ax
        0x48, 0x8D, 0x35, 0x36, 0x00, 0x00, 0x00, // 10: lea rsi, [rip+54] -> msg at 71
        0x66, 0xBA, 0xF8, 0x03, // 17: mov dx, 0x3f8      (COM1 data)
        0xAC, //                   21: lodsb
        0x84, 0xC0, //             22: test al, al
        0x74, 0x03, //             24: jz 29
        0xEE, //                   26: out dx, al
        0xEB, 0xF8, //             27: jmp 21
        0x66, 0xBA, 0x00, 0x06, // 29: mov dx, 0x600      (PM1a_STS)
        0x66, 0xED, //             33: in ax, dx
        0x66, 0xA9, 0x00, 0x01, // 35: test ax, 0x100     (PWRBTN_STS)
        0x75, 0x11, //             39: jnz 58
        0x66, 0xBA, 0xFD, 0x03, // 41: mov dx, 0x3fd      (COM1 LSR)
        0xEC, //                   45: in al, dx
        0xA8, 0x01, //             46: test al, 1         (data ready)
        0x74, 0xEB, //             48: jz 29
        0x66, 0xBA, 0xF8, 0x03, // 50: mov dx, 0x3f8
        0xEC, //                   54: in al, dx
        0xEE, //                   55: out dx, al         (echo)
        0xEB, 0xE3, //             56: jmp 29
        0x66, 0xBA, 0x04, 0x06, // 58: mov dx, 0x604      (PM1a_CNT)
        0x66, 0xB8, 0x00, 0x34, // 62: mov ax, 0x3400     (SLP_TYP=5, SLP_EN)
        0x66, 0xEF, //             66: out dx, ax
        0xF4, //                   68: hlt
        0xEB, 0xFD, //             69: jmp 68
    ];
    debug_assert_eq!(c.len(), 71);
    c.extend_from_slice(format!("{READY_LINE}\r\n{PROMPT}").as_bytes());
    c.push(0);
    c
}

/// A guest that only writes the boot marker and powers off: for measuring
/// how fast VMs are created, booted and torn down.
fn marker_code() -> Vec<u8> {
    vec![
        0x66, 0xBA, 0x40, 0x04, //  0: mov dx, 0x440      (boot marker)
        0xB0, 0x01, //              4: mov al, 1
        0xEE, //                    6: out dx, al
        0x66, 0xBA, 0x04, 0x06, //  7: mov dx, 0x604      (PM1a_CNT)
        0x66, 0xB8, 0x00, 0x34, // 11: mov ax, 0x3400     (SLP_TYP=5, SLP_EN)
        0x66, 0xEF, //             15: out dx, ax
        0xF4, //                   17: hlt
        0xEB, 0xFD, //             18: jmp 17
    ]
}

/// The echoing guest as an ELF64 executable.
pub fn elf() -> Vec<u8> {
    elf_with(code())
}

/// The marker-and-power-off guest as an ELF64 executable.
pub fn marker_elf() -> Vec<u8> {
    elf_with(marker_code())
}

/// Wraps code in an ELF64 executable: one PT_LOAD segment holding the whole
/// file, loaded at the kernel address; the entry is the code after the
/// headers.
fn elf_with(code: Vec<u8>) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    const LOAD: u64 = 0x10_0000; // 1 MiB, where kernels are loaded
    let entry = LOAD + (EHDR + PHDR) as u64;
    let size = (EHDR + PHDR + code.len()) as u64;
    let mut f = Vec::with_capacity(size as usize);
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little endian, version 1, System V
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&entry.to_le_bytes());
    f.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&(EHDR as u16).to_le_bytes());
    f.extend_from_slice(&(PHDR as u16).to_le_bytes());
    f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&7u32.to_le_bytes()); // RWX
    f.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    f.extend_from_slice(&LOAD.to_le_bytes()); // p_vaddr
    f.extend_from_slice(&LOAD.to_le_bytes()); // p_paddr
    f.extend_from_slice(&size.to_le_bytes()); // p_filesz
    f.extend_from_slice(&size.to_le_bytes()); // p_memsz
    f.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    f.extend_from_slice(&code);
    f
}

/// Writes the guest to `path`.
pub fn write(path: &Path) -> std::io::Result<()> {
    std::fs::write(path, elf())
}

/// Installs the tiny guest as a bundled guest of the panel:
/// `<guests_dir>/tiny/` with the kernel, an empty initrd and the
/// `guest.json` descriptor the panel lists.
pub fn bundle(guests_dir: &Path) -> std::io::Result<()> {
    let dir = guests_dir.join("tiny");
    std::fs::create_dir_all(&dir)?;
    write(&dir.join("tiny.elf"))?;
    std::fs::write(dir.join("initrd"), b"none")?;
    let descriptor = serde_json::json!({
        "name": "tiny", "description": "The tiny test guest: echoes the console", "kernel": "tiny.elf",
        "initrd": "initrd", "cmdline": "console=ttyS0", "memory_mib": 32, "vcpus": 1,
    });
    std::fs::write(dir.join("guest.json"), descriptor.to_string())
}

/// A bootable disk for the PC machine's firmware tests: a 1 MiB raw image
/// whose MBR boot sector, once the BIOS has loaded it at 0x7C00,
///
/// 1. prints `message` and CR LF through the BIOS (INT 10h teletype, which
///    SeaBIOS mirrors on its serial console), then waits 200 ms through INT
///    15h so the BIOS has flushed that console;
/// 2. writes `FW:` and the 4 bytes fw_cfg's signature item reads, `CMOS:`
///    and CMOS byte 0x5F (the CPU count minus one), and `PCI:` and the
///    vendor and device ID of PCI 00:00.0, straight to COM1;
/// 3. writes the boot marker and resets through the i8042, so the VMM
///    ends with the reboot code.
pub fn boot_disk(message: &str) -> Vec<u8> {
    let mut c = start_boot_disk();
    // fw_cfg: select the signature item, read four bytes.
    serial_text(&mut c, "FW:");
    c.extend_from_slice(&[0x31, 0xC0, 0xBA, 0x10, 0x05, 0xEF]); // xor ax, ax; mov dx, 0x510; out dx, ax
    for _ in 0..4 {
        c.extend_from_slice(&[0xBA, 0x11, 0x05, 0xEC]); // mov dx, 0x511; in al, dx
        c.extend_from_slice(SERIAL_AL);
    }
    serial_text(&mut c, "CMOS:");
    c.extend_from_slice(&[0xB0, 0x5F, 0xE6, 0x70, 0xE4, 0x71]); // mov al, 0x5f; out 0x70, al; in al, 0x71
    c.extend_from_slice(SERIAL_AL);
    serial_text(&mut c, "PCI:");
    c.extend_from_slice(&[0x66, 0xB8, 0x00, 0x00, 0x00, 0x80]); // mov eax, 0x80000000
    c.extend_from_slice(&[0xBA, 0xF8, 0x0C, 0x66, 0xEF]); // mov dx, 0xcf8; out dx, eax
    c.extend_from_slice(&[0xBA, 0xFC, 0x0C, 0x66, 0xED]); // mov dx, 0xcfc; in eax, dx
    for i in 0..4 {
        if i > 0 {
            c.extend_from_slice(&[0x66, 0xC1, 0xE8, 0x08]); // shr eax, 8
        }
        c.extend_from_slice(SERIAL_AL);
    }
    serial_text(&mut c, "\r\n");
    finish_boot_disk(c, message)
}

/// A bootable disk whose boot sector writes on COM1 what CPUID tells the
/// guest: `CPU:` and the 48 bytes of the brand string (leaves
/// 0x80000002-0x80000004), then `CORES:` and the logical-processor count
/// of leaf 0xB's core level (one byte); then it ends as [`boot_disk`] does.
pub fn cpuid_disk(message: &str) -> Vec<u8> {
    let mut c = start_boot_disk();
    serial_text(&mut c, "CPU:");
    c.extend_from_slice(&[0x66, 0xBE, 0x02, 0x00, 0x00, 0x80]); // mov esi, 0x80000002
    c.extend_from_slice(&[
        0x66, 0x89, 0xF0, //                   leaf: mov eax, esi
        0x0F, 0xA2, //                               cpuid
        0x66, 0x52, 0x66, 0x51, 0x66, 0x53, 0x66, 0x50, // push edx, ecx, ebx, eax
        0xB1, 0x04, //                               mov cl, 4
        0x66, 0x58, //                         reg:  pop eax
        0xB5, 0x04, //                               mov ch, 4
        0xBA, 0xF8, 0x03, 0xEE, //             byte: mov dx, 0x3f8; out dx, al
        0x66, 0xC1, 0xE8, 0x08, //                   shr eax, 8
        0xFE, 0xCD, //                               dec ch
        0x75, 0xF4, //                               jnz byte
        0xFE, 0xC9, //                               dec cl
        0x75, 0xEC, //                               jnz reg
        0x66, 0x46, //                               inc esi
        0x66, 0x81, 0xFE, 0x05, 0x00, 0x00, 0x80, // cmp esi, 0x80000005
        0x75, 0xD2, //                               jne leaf
    ]);
    serial_text(&mut c, "CORES:");
    c.extend_from_slice(&[0x66, 0xB8, 0x0B, 0x00, 0x00, 0x00]); // mov eax, 0xb
    c.extend_from_slice(&[0x66, 0xB9, 0x01, 0x00, 0x00, 0x00]); // mov ecx, 1
    c.extend_from_slice(&[0x0F, 0xA2, 0x88, 0xD8]); // cpuid; mov al, bl
    c.extend_from_slice(SERIAL_AL);
    serial_text(&mut c, "\r\n");
    finish_boot_disk(c, message)
}

/// What [`cdrom_boot_image`] writes on COM1 before the 9 characters it
/// read from the medium, or when the BIOS could not read it.
pub const CDROM_READ: &str = "VOL:";
pub const CDROM_READ_FAILED: &str = "READ-FAILED";

/// An El Torito no-emulation boot image (one 2 KiB CD sector) that prints
/// `message` through the BIOS, then reads the medium it booted from
/// through INT 13h AH=42h (sector 16, the primary volume descriptor, to
/// 0x8000) and writes [`CDROM_READ`] and the first 9 characters of the
/// volume ID on COM1 ([`CDROM_READ_FAILED`] if the read fails), then ends
/// as [`boot_disk`] does. SeaBIOS loads it at 07C0:0000 with the drive
/// number in DL.
pub fn cdrom_boot_image(message: &str) -> Vec<u8> {
    cdrom_image(message, false)
}

/// A bootable disk that reads the first sector of the second BIOS disk
/// (drive 0x81) and writes [`CDROM_READ`] and the 11 bytes of its FAT
/// volume label (offset 0x2B) on COM1, again every 300 ms: a test sees the
/// label of the disk the VM got second (and the VM keeps running).
pub fn disk_label_reader(message: &str) -> Vec<u8> {
    reader_disk(message, Read { drive: Some(0x81), lba: 0, at: 0x2B, len: 11 }, true)
}

/// What a reading test guest reads: a sector of a BIOS drive (the boot
/// drive when `drive` is None), and `len` bytes at `at` in it.
struct Read {
    drive: Option<u8>,
    lba: u32,
    at: u16,
    len: u8,
}

/// [`cdrom_boot_image`] that never ends: it reads and reports the medium
/// again every 300 ms, so a test sees it ejected and changed.
pub fn cdrom_watch_image(message: &str) -> Vec<u8> {
    cdrom_image(message, true)
}

/// The CD-ROM guests: one 2 KiB sector, reading the volume ID (9
/// characters at 0x28 of sector 16, the primary volume descriptor).
fn cdrom_image(message: &str, watch: bool) -> Vec<u8> {
    let mut image = reader_disk(message, Read { drive: None, lba: 16, at: 0x28, len: 9 }, watch);
    image.truncate(2048);
    image
}

fn reader_disk(message: &str, read: Read, watch: bool) -> Vec<u8> {
    const DRIVE_AT: u16 = 0x1F0;
    const PACKET_AT: u16 = 0x1E0;
    let mut c = vec![0x31, 0xC0, 0x8E, 0xD8]; // xor ax, ax; mov ds, ax
    match read.drive {
        None => c.extend_from_slice(&[0x88, 0x16]),    // mov [drive], dl
        Some(_) => c.extend_from_slice(&[0xC6, 0x06]), // mov byte [drive], imm8
    }
    c.extend_from_slice(&(0x7C00 + DRIVE_AT).to_le_bytes());
    c.extend(read.drive);
    c.extend(start_boot_disk());
    let read_at = c.len();
    // The BIOS sets the packet's count to what it read: one sector again.
    c.extend_from_slice(&[0xC6, 0x06]); // mov byte [packet + 2], 1
    c.extend_from_slice(&(0x7C00 + PACKET_AT + 2).to_le_bytes());
    c.push(0x01);
    c.push(0xBE); // mov si, packet
    c.extend_from_slice(&(0x7C00 + PACKET_AT).to_le_bytes());
    c.extend_from_slice(&[0x8A, 0x16]); // mov dl, [drive]
    c.extend_from_slice(&(0x7C00 + DRIVE_AT).to_le_bytes());
    c.extend_from_slice(&[0xB4, 0x42, 0xFB, 0xCD, 0x13, 0xFA]); // mov ah, 0x42; sti; int 0x13; cli
    let mut ok = Vec::new();
    serial_text(&mut ok, CDROM_READ);
    ok.push(0xBE); // mov si, 0x8000 + at
    ok.extend_from_slice(&(0x8000 + read.at).to_le_bytes());
    ok.extend_from_slice(&[0xB9, read.len, 0x00]); // mov cx, len
    ok.push(0xAC); // lodsb
    ok.extend_from_slice(SERIAL_AL);
    ok.extend_from_slice(&[0xE2, 0xF9]); // loop back to lodsb
    let mut failed = Vec::new();
    serial_text(&mut failed, CDROM_READ_FAILED);
    ok.extend_from_slice(&[0xEB, failed.len() as u8]); // jmp over the failure
    c.extend_from_slice(&[0x72, ok.len() as u8]); // jc failed
    c.extend(ok);
    c.extend(failed);
    serial_text(&mut c, "\r\n");
    if watch {
        // Wait 300 ms (INT 15h AH=86h, CX:DX µs), then read again.
        c.extend_from_slice(&[0xFB, 0xB4, 0x86, 0xB9, 0x04, 0x00, 0xBA, 0xE0, 0x93, 0xCD, 0x15, 0xFA]);
        let back = read_at as i32 - (c.len() as i32 + 3);
        c.push(0xE9); // jmp near
        c.extend_from_slice(&(back as i16).to_le_bytes());
    }
    let mut image = finish_boot_disk(c, message);
    // The disk address packet: 16 bytes, one sector, to 0000:8000, the LBA.
    let mut packet = vec![0x10, 0, 1, 0, 0x00, 0x80, 0x00, 0x00];
    packet.extend_from_slice(&u64::from(read.lba).to_le_bytes());
    image[usize::from(PACKET_AT)..usize::from(PACKET_AT) + 16].copy_from_slice(&packet);
    image
}

/// What an [`el_torito_iso`] boots.
pub enum IsoBoot<'a> {
    /// A no-emulation boot image for BIOS (4 sectors are loaded).
    Bios(&'a [u8]),
    /// A FAT image holding `\EFI\BOOT\BOOTX64.EFI`, for UEFI.
    Uefi(&'a [u8]),
    /// Nothing: a data medium.
    None,
}

/// Writes an ISO 9660 image to `iso` with xorriso (Debian's `xorriso`,
/// installed by the host tools), as Windows installers and many rescue
/// media are made: El Torito only, nothing in the system area (not
/// hybrid, so no disk boot), volume ID `volume`, holding `files` (names in
/// the root) and the boot image.
pub fn el_torito_iso(iso: &Path, volume: &str, boot: IsoBoot, files: &[(&str, &[u8])]) -> std::io::Result<()> {
    let content = iso.with_extension("content");
    std::fs::create_dir_all(&content)?;
    for (name, data) in files {
        std::fs::write(content.join(name), data)?;
    }
    let mut cmd = std::process::Command::new("xorriso");
    cmd.args(["-as", "mkisofs", "-quiet", "-V", volume]);
    match boot {
        IsoBoot::Bios(image) => {
            std::fs::write(content.join("boot.img"), image)?;
            cmd.args(["-b", "boot.img", "-no-emul-boot", "-boot-load-size", "4"]);
        }
        IsoBoot::Uefi(image) => {
            std::fs::write(content.join("efi.img"), image)?;
            cmd.args(["-e", "efi.img", "-no-emul-boot"]);
        }
        IsoBoot::None => {}
    }
    let out = cmd.arg("-o").arg(iso).arg(&content).output()?;
    std::fs::remove_dir_all(&content)?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!("xorriso: {}", String::from_utf8_lossy(&out.stderr))));
    }
    let mut head = vec![0u8; 0x8006];
    std::io::Read::read_exact(&mut std::fs::File::open(iso)?, &mut head)?;
    if &head[0x8001..0x8006] != b"CD001" || head[..0x8000].iter().any(|&b| b != 0) {
        return Err(std::io::Error::other("xorriso made something other than a plain ISO 9660 image"));
    }
    Ok(())
}

/// A bootable disk for the display tests: a boot sector that SeaBIOS loads
/// after its VGA BIOS has set text mode 3. Written in GNU as, assembled
/// once (`as --32`, `ld -Ttext 0x7c00 --oformat binary`) and kept here
/// with its disassembly. It switches to 32-bit protected mode with
/// interrupts off, then
///
/// 1. writes [`DISPLAY_TEXT`] in white on blue at row 10 of the text
///    buffer (0xB8000), and `TEXT` on COM1;
/// 2. reads the i8042 by polling (mouse bytes skipped) and writes every
///    keyboard byte on COM1 as `K` and two hex digits and a newline, until
///    Enter's make code 0x1C;
/// 3. reads the VGA's BAR 0 (00:02.0), sets 640×480×32 through the Bochs
///    DISPI ports, fills the top half of the framebuffer orange (0xFF8000)
///    and the bottom half blue (0x0000FF), and writes `VBE`;
/// 4. waits for the next key press, fills the screen green (0x00FF00),
///    writes `FILL`, and halts with interrupts off.
pub fn display_disk() -> Vec<u8> {
    display_disk_sized(640, 480)
}

/// [`display_disk`] with another VBE mode (`width` a multiple of 8, an even
/// `height`): the benchmarks draw 1024×768. The mode's numbers are patched
/// into the code's immediates.
pub fn display_disk_sized(width: u16, height: u16) -> Vec<u8> {
    let mut disk = display_disk_code();
    let half = u32::from(width) * u32::from(height) / 2;
    patch(&mut disk, &[0x66, 0xB9, 0x80, 0x02], &[&[0x66, 0xB9], &width.to_le_bytes()[..]].concat(), 1);
    patch(&mut disk, &[0x66, 0xB9, 0xE0, 0x01], &[&[0x66, 0xB9], &height.to_le_bytes()[..]].concat(), 1);
    patch(&mut disk, &[0xB9, 0x00, 0x58, 0x02, 0x00], &[&[0xB9], &half.to_le_bytes()[..]].concat(), 2);
    patch(&mut disk, &[0xB9, 0x00, 0xB0, 0x04, 0x00], &[&[0xB9], &(2 * half).to_le_bytes()[..]].concat(), 1);
    disk
}

/// Replaces the `count` occurrences of `from` in the boot sector's code.
fn patch(disk: &mut [u8], from: &[u8], to: &[u8], count: usize) {
    let at: Vec<usize> = (0..0x152 - from.len()).filter(|&i| &disk[i..i + from.len()] == from).collect();
    assert_eq!(at.len(), count, "the immediate {from:x?} in the display guest");
    for i in at {
        disk[i..i + to.len()].copy_from_slice(to);
    }
}

fn display_disk_code() -> Vec<u8> {
    #[rustfmt::skip]
    let mut c: Vec<u8> = vec![
        0xFA, // 000: cli
        0x31, 0xC0, // 001: xor %ax,%ax
        0x8E, 0xD8, // 003: mov %ax,%ds
        0x66, 0x0F, 0x01, 0x16, 0x88, 0x7D, // 005: lgdtl 0x7d88
        0x0F, 0x20, 0xC0, // 00b: mov %cr0,%eax
        0x0C, 0x01, // 00e: or $0x1,%al
        0x0F, 0x22, 0xC0, // 010: mov %eax,%cr0
        0x66, 0xEA, 0x1B, 0x7C, 0x00, 0x00, 0x08, 0x00, // 013: ljmpl $0x8,$0x7c1b
        // pm:
        0x66, 0xB8, 0x10, 0x00, // 01b: mov $0x10,%ax
        0x8E, 0xD8, // 01f: mov %eax,%ds
        0x8E, 0xC0, // 021: mov %eax,%es
        0x8E, 0xD0, // 023: mov %eax,%ss
        0xBC, 0x00, 0x70, 0x00, 0x00, // 025: mov $0x7000,%esp
        0xBF, 0x40, 0x86, 0x0B, 0x00, // 02a: mov $0xb8640,%edi
        0xBE, 0x52, 0x7D, 0x00, 0x00, // 02f: mov $0x7d52,%esi
        0xAC, // 034: lods %ds:(%esi),%al
        0x84, 0xC0, // 035: test %al,%al
        0x74, 0x0A, // 037: je 7c43 (pm+0x28)
        0xB4, 0x1F, // 039: mov $0x1f,%ah
        0x66, 0x89, 0x07, // 03b: mov %ax,(%edi)
        0x83, 0xC7, 0x02, // 03e: add $0x2,%edi
        0xEB, 0xF1, // 041: jmp 7c34 (pm+0x19)
        0xBE, 0x5D, 0x7D, 0x00, 0x00, // 043: mov $0x7d5d,%esi
        0xE8, 0xE2, 0x00, 0x00, 0x00, // 048: call 7d2f (puts)
        0xE8, 0xC7, 0x00, 0x00, 0x00, // 04d: call 7d19 (getkey)
        0x50, // 052: push %eax
        0xB0, 0x4B, // 053: mov $0x4b,%al
        0xE8, 0xCF, 0x00, 0x00, 0x00, // 055: call 7d29 (putc)
        0x58, // 05a: pop %eax
        0x50, // 05b: push %eax
        0xE8, 0xDB, 0x00, 0x00, 0x00, // 05c: call 7d3c (puthex)
        0xB0, 0x0A, // 061: mov $0xa,%al
        0xE8, 0xC1, 0x00, 0x00, 0x00, // 063: call 7d29 (putc)
        0x58, // 068: pop %eax
        0x3C, 0x1C, // 069: cmp $0x1c,%al
        0x75, 0xE0, // 06b: jne 7c4d (pm+0x32)
        0xB8, 0x10, 0x10, 0x00, 0x80, // 06d: mov $0x80001010,%eax
        0x66, 0xBA, 0xF8, 0x0C, // 072: mov $0xcf8,%dx
        0xEF, // 076: out %eax,(%dx)
        0x66, 0xBA, 0xFC, 0x0C, // 077: mov $0xcfc,%dx
        0xED, // 07b: in (%dx),%eax
        0x83, 0xE0, 0xF0, // 07c: and $0xfffffff0,%eax
        0x89, 0xC3, // 07f: mov %eax,%ebx
        0x66, 0xB8, 0x04, 0x00, // 081: mov $0x4,%ax
        0x66, 0x31, 0xC9, // 085: xor %cx,%cx
        0xE8, 0x7C, 0x00, 0x00, 0x00, // 088: call 7d09 (dispi)
        0x66, 0xB8, 0x01, 0x00, // 08d: mov $0x1,%ax
        0x66, 0xB9, 0x80, 0x02, // 091: mov $0x280,%cx
        0xE8, 0x6F, 0x00, 0x00, 0x00, // 095: call 7d09 (dispi)
        0x66, 0xB8, 0x02, 0x00, // 09a: mov $0x2,%ax
        0x66, 0xB9, 0xE0, 0x01, // 09e: mov $0x1e0,%cx
        0xE8, 0x62, 0x00, 0x00, 0x00, // 0a2: call 7d09 (dispi)
        0x66, 0xB8, 0x03, 0x00, // 0a7: mov $0x3,%ax
        0x66, 0xB9, 0x20, 0x00, // 0ab: mov $0x20,%cx
        0xE8, 0x55, 0x00, 0x00, 0x00, // 0af: call 7d09 (dispi)
        0x66, 0xB8, 0x04, 0x00, // 0b4: mov $0x4,%ax
        0x66, 0xB9, 0x41, 0x00, // 0b8: mov $0x41,%cx
        0xE8, 0x48, 0x00, 0x00, 0x00, // 0bc: call 7d09 (dispi)
        0x89, 0xDF, // 0c1: mov %ebx,%edi
        0xB9, 0x00, 0x58, 0x02, 0x00, // 0c3: mov $0x25800,%ecx
        0xB8, 0x00, 0x80, 0xFF, 0x00, // 0c8: mov $0xff8000,%eax
        0xF3, 0xAB, // 0cd: rep stos %eax,%es:(%edi)
        0xB9, 0x00, 0x58, 0x02, 0x00, // 0cf: mov $0x25800,%ecx
        0xB8, 0xFF, 0x00, 0x00, 0x00, // 0d4: mov $0xff,%eax
        0xF3, 0xAB, // 0d9: rep stos %eax,%es:(%edi)
        0xBE, 0x63, 0x7D, 0x00, 0x00, // 0db: mov $0x7d63,%esi
        0xE8, 0x4A, 0x00, 0x00, 0x00, // 0e0: call 7d2f (puts)
        0xE8, 0x2F, 0x00, 0x00, 0x00, // 0e5: call 7d19 (getkey)
        0xA8, 0x80, // 0ea: test $0x80,%al
        0x75, 0xF7, // 0ec: jne 7ce5 (pm+0xca)
        0x89, 0xDF, // 0ee: mov %ebx,%edi
        0xB9, 0x00, 0xB0, 0x04, 0x00, // 0f0: mov $0x4b000,%ecx
        0xB8, 0x00, 0xFF, 0x00, 0x00, // 0f5: mov $0xff00,%eax
        0xF3, 0xAB, // 0fa: rep stos %eax,%es:(%edi)
        0xBE, 0x68, 0x7D, 0x00, 0x00, // 0fc: mov $0x7d68,%esi
        0xE8, 0x29, 0x00, 0x00, 0x00, // 101: call 7d2f (puts)
        0xF4, // 106: hlt
        0xEB, 0xFD, // 107: jmp 7d06 (pm+0xeb)
        // dispi:
        0x66, 0xBA, 0xCE, 0x01, // 109: mov $0x1ce,%dx
        0x66, 0xEF, // 10d: out %ax,(%dx)
        0x66, 0xBA, 0xCF, 0x01, // 10f: mov $0x1cf,%dx
        0x66, 0x89, 0xC8, // 113: mov %cx,%ax
        0x66, 0xEF, // 116: out %ax,(%dx)
        0xC3, // 118: ret
        // getkey:
        0xE4, 0x64, // 119: in $0x64,%al
        0xA8, 0x01, // 11b: test $0x1,%al
        0x74, 0xFA, // 11d: je 7d19 (getkey)
        0x88, 0xC4, // 11f: mov %al,%ah
        0xE4, 0x60, // 121: in $0x60,%al
        0xF6, 0xC4, 0x20, // 123: test $0x20,%ah
        0x75, 0xF1, // 126: jne 7d19 (getkey)
        0xC3, // 128: ret
        // putc:
        0x66, 0xBA, 0xF8, 0x03, // 129: mov $0x3f8,%dx
        0xEE, // 12d: out %al,(%dx)
        0xC3, // 12e: ret
        // puts:
        0xAC, // 12f: lods %ds:(%esi),%al
        0x84, 0xC0, // 130: test %al,%al
        0x74, 0x07, // 132: je 7d3b (puts+0xc)
        0xE8, 0xF0, 0xFF, 0xFF, 0xFF, // 134: call 7d29 (putc)
        0xEB, 0xF4, // 139: jmp 7d2f (puts)
        0xC3, // 13b: ret
        // puthex:
        0x50, // 13c: push %eax
        0xC0, 0xE8, 0x04, // 13d: shr $0x4,%al
        0xE8, 0x01, 0x00, 0x00, 0x00, // 140: call 7d46 (nibble)
        0x58, // 145: pop %eax
        // nibble:
        0x24, 0x0F, // 146: and $0xf,%al
        0x04, 0x30, // 148: add $0x30,%al
        0x3C, 0x39, // 14a: cmp $0x39,%al
        0x76, 0x02, // 14c: jbe 7d50 (nibble+0xa)
        0x04, 0x07, // 14e: add $0x7,%al
        0xEB, 0xD7, // 150: jmp 7d29 (putc)
    ];
    const STRINGS_AT: usize = 0x152;
    const GDT_AT: usize = 0x170;
    assert_eq!(c.len(), STRINGS_AT, "the code's string addresses");
    for s in [DISPLAY_TEXT, "TEXT\n", "VBE\n", "FILL\n"] {
        c.extend_from_slice(s.as_bytes());
        c.push(0);
    }
    c.resize(GDT_AT, 0);
    // Null, flat 4 GiB code, flat 4 GiB data; then the GDT register
    // (limit 23, base 0x7D70) that `lgdtl 0x7d88` loads.
    for d in [0u64, 0x00CF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF] {
        c.extend_from_slice(&d.to_le_bytes());
    }
    c.extend_from_slice(&23u16.to_le_bytes());
    c.extend_from_slice(&(0x7C00 + GDT_AT as u32).to_le_bytes());
    let mut disk = vec![0u8; 1 << 20];
    disk[..c.len()].copy_from_slice(&c);
    disk[510] = 0x55;
    disk[511] = 0xAA;
    disk
}

/// A bootable disk for the KVM switch's tests and benchmarks: a real-mode
/// boot sector (source: `vmm/tiny_guest/switch.S`, assembled with GNU as
/// and kept here with its disassembly; a unit test checks the two agree)
/// that takes the keyboard's IRQ 1 itself and halts between interrupts, so
/// sixteen of them cost the host nothing while idle. SeaBIOS's VGA BIOS has
/// set text mode 3. It
///
/// 1. clears the screen, writes [`SWITCH_TITLE`] and `label` in white on
///    blue on row 0, and `READY <label>` on COM1;
/// 2. for every byte the i8042 gives on IRQ 1 (make and break codes,
///    modifiers too), writes `K` and two hex digits and a newline on COM1,
///    and the two digits on the screen from row 2 on;
/// 3. with `animate`, counts the timer's ticks (18.2 Hz) in hex on row 24,
///    so its screen never stops changing; F12 turns the counter on and off.
pub fn switch_disk(label: &str, animate: bool) -> Vec<u8> {
    assert!(label.len() < 24 && label.is_ascii(), "a short ASCII label");
    let mut c = switch_disk_code();
    c[SWITCH_LABEL_AT..SWITCH_LABEL_AT + label.len()].copy_from_slice(label.as_bytes());
    c[SWITCH_ANIMATE_AT] = u8::from(animate);
    let mut disk = vec![0u8; 1 << 20];
    disk[..c.len()].copy_from_slice(&c);
    disk[510] = 0x55;
    disk[511] = 0xAA;
    disk
}

/// What [`switch_disk`] writes before its label on row 0.
pub const SWITCH_TITLE: &str = " kvmos switch guest ";
const SWITCH_LABEL_AT: usize = 0x1A0;
const SWITCH_ANIMATE_AT: usize = 0x1B8;

/// The switch guest's boot sector up to its label (zeroes from the end of
/// its strings).
fn switch_disk_code() -> Vec<u8> {
    #[rustfmt::skip]
    let mut c: Vec<u8> = vec![
        0xFA, // 000: cli
        0x31, 0xC0, // 001: xor %ax,%ax
        0x8E, 0xD8, // 003: mov %ax,%ds
        0x8E, 0xD0, // 005: mov %ax,%ss
        0xBC, 0x00, 0x7C, // 007: mov $0x7c00,%sp
        0xC7, 0x06, 0x24, 0x00, 0x17, 0x7D, // 00a: movw $0x7d17,0x24
        0xC7, 0x06, 0x26, 0x00, 0x00, 0x00, // 010: movw $0x0,0x26
        0xC7, 0x06, 0x40, 0x7E, 0x00, 0x00, // 016: movw $0x0,0x7e40
        0xC7, 0x06, 0x42, 0x7E, 0x00, 0x00, // 01c: movw $0x0,0x7e42
        0xC7, 0x06, 0x44, 0x7E, 0x00, 0x00, // 022: movw $0x0,0x7e44
        0xC7, 0x06, 0x46, 0x7E, 0x40, 0x01, // 028: movw $0x140,0x7e46
        0xB8, 0x00, 0xB8, // 02e: mov $0xb800,%ax
        0x8E, 0xC0, // 031: mov %ax,%es
        0x31, 0xFF, // 033: xor %di,%di
        0xB9, 0xD0, 0x07, // 035: mov $0x7d0,%cx
        0xB8, 0x20, 0x07, // 038: mov $0x720,%ax
        0xF3, 0xAB, // 03b: rep stos %ax,%es:(%di)
        0x31, 0xFF, // 03d: xor %di,%di
        0xBE, 0x3E, 0x7D, // 03f: mov $0x7d3e,%si
        0xE8, 0xC7, 0x00, // 042: call 0x10c
        0xBE, 0xA0, 0x7D, // 045: mov $0x7da0,%si
        0xE8, 0xC1, 0x00, // 048: call 0x10c
        0xBE, 0x53, 0x7D, // 04b: mov $0x7d53,%si
        0xE8, 0xB0, 0x00, // 04e: call 0x101
        0xBE, 0xA0, 0x7D, // 051: mov $0x7da0,%si
        0xE8, 0xAA, 0x00, // 054: call 0x101
        0xB0, 0x0A, // 057: mov $0xa,%al
        0xE8, 0xA0, 0x00, // 059: call 0xfc
        0xFB, // 05c: sti
        // main:
        0xF4, // 05d: hlt
        // drain:
        0xFA, // 05e: cli
        0x8B, 0x1E, 0x40, 0x7E, // 05f: mov 0x7e40,%bx
        0x3B, 0x1E, 0x42, 0x7E, // 063: cmp 0x7e42,%bx
        0x74, 0x12, // 067: je 0x7b
        0x8A, 0x87, 0x00, 0x7E, // 069: mov 0x7e00(%bx),%al
        0x43, // 06d: inc %bx
        0x83, 0xE3, 0x3F, // 06e: and $0x3f,%bx
        0x89, 0x1E, 0x40, 0x7E, // 071: mov %bx,0x7e40
        0xFB, // 075: sti
        0xE8, 0x1F, 0x00, // 076: call 0x98
        0xEB, 0xE3, // 079: jmp 0x5e
        // drained:
        0xFB, // 07b: sti
        0x80, 0x3E, 0xB8, 0x7D, 0x00, // 07c: cmpb $0x0,0x7db8
        0x74, 0xDA, // 081: je 0x5d
        0xFF, 0x06, 0x44, 0x7E, // 083: incw 0x7e44
        0xBF, 0x00, 0x0F, // 087: mov $0xf00,%di
        0xA0, 0x45, 0x7E, // 08a: mov 0x7e45,%al
        0xE8, 0x4F, 0x00, // 08d: call 0xdf
        0xA0, 0x44, 0x7E, // 090: mov 0x7e44,%al
        0xE8, 0x49, 0x00, // 093: call 0xdf
        0xEB, 0xC5, // 096: jmp 0x5d
        // show_key:
        0x50, // 098: push %ax
        0xB0, 0x4B, // 099: mov $0x4b,%al
        0xE8, 0x5E, 0x00, // 09b: call 0xfc
        0x58, // 09e: pop %ax
        0x50, // 09f: push %ax
        0xE8, 0x2C, 0x00, // 0a0: call 0xcf
        0xB0, 0x0A, // 0a3: mov $0xa,%al
        0xE8, 0x54, 0x00, // 0a5: call 0xfc
        0x8B, 0x3E, 0x46, 0x7E, // 0a8: mov 0x7e46,%di
        0x81, 0xFF, 0x00, 0x0F, // 0ac: cmp $0xf00,%di
        0x72, 0x03, // 0b0: jb 0xb5
        0xBF, 0x40, 0x01, // 0b2: mov $0x140,%di
        0x58, // 0b5: pop %ax
        0x3C, 0x58, // 0b6: cmp $0x58,%al
        0x75, 0x05, // 0b8: jne 0xbf
        0x80, 0x36, 0xB8, 0x7D, 0x01, // 0ba: xorb $0x1,0x7db8
        0xE8, 0x1D, 0x00, // 0bf: call 0xdf
        0x26, 0xC7, 0x05, 0x20, 0x0F, // 0c2: movw $0xf20,%es:(%di)
        0x83, 0xC7, 0x02, // 0c7: add $0x2,%di
        0x89, 0x3E, 0x46, 0x7E, // 0ca: mov %di,0x7e46
        0xC3, // 0ce: ret
        // hex_serial:
        0x50, // 0cf: push %ax
        0xC0, 0xE8, 0x04, // 0d0: shr $0x4,%al
        0xE8, 0x1B, 0x00, // 0d3: call 0xf1
        0xE8, 0x23, 0x00, // 0d6: call 0xfc
        0x58, // 0d9: pop %ax
        0xE8, 0x14, 0x00, // 0da: call 0xf1
        0xEB, 0x1D, // 0dd: jmp 0xfc
        // hex_screen:
        0x50, // 0df: push %ax
        0xC0, 0xE8, 0x04, // 0e0: shr $0x4,%al
        0xE8, 0x0B, 0x00, // 0e3: call 0xf1
        0xB4, 0x0F, // 0e6: mov $0xf,%ah
        0xAB, // 0e8: stos %ax,%es:(%di)
        0x58, // 0e9: pop %ax
        0xE8, 0x04, 0x00, // 0ea: call 0xf1
        0xB4, 0x0F, // 0ed: mov $0xf,%ah
        0xAB, // 0ef: stos %ax,%es:(%di)
        0xC3, // 0f0: ret
        // nibble:
        0x24, 0x0F, // 0f1: and $0xf,%al
        0x04, 0x30, // 0f3: add $0x30,%al
        0x3C, 0x39, // 0f5: cmp $0x39,%al
        0x76, 0x02, // 0f7: jbe 0xfb
        0x04, 0x07, // 0f9: add $0x7,%al
        0xC3, // 0fb: ret
        // serial_ch:
        0xBA, 0xF8, 0x03, // 0fc: mov $0x3f8,%dx
        0xEE, // 0ff: out %al,(%dx)
        0xC3, // 100: ret
        // serial_str:
        0xAC, // 101: lods %ds:(%si),%al
        0x84, 0xC0, // 102: test %al,%al
        0x74, 0x05, // 104: je 0x10b
        0xE8, 0xF3, 0xFF, // 106: call 0xfc
        0xEB, 0xF6, // 109: jmp 0x101
        0xC3, // 10b: ret
        // screen_str:
        0xAC, // 10c: lods %ds:(%si),%al
        0x84, 0xC0, // 10d: test %al,%al
        0x74, 0x05, // 10f: je 0x116
        0xB4, 0x1F, // 111: mov $0x1f,%ah
        0xAB, // 113: stos %ax,%es:(%di)
        0xEB, 0xF6, // 114: jmp 0x10c
        0xC3, // 116: ret
        // irq1:
        0x50, // 117: push %ax
        0x53, // 118: push %bx
        0x1E, // 119: push %ds
        0x31, 0xC0, // 11a: xor %ax,%ax
        0x8E, 0xD8, // 11c: mov %ax,%ds
        0xE4, 0x64, // 11e: in $0x64,%al
        0xA8, 0x01, // 120: test $0x1,%al
        0x74, 0x12, // 122: je 0x136
        0xE4, 0x60, // 124: in $0x60,%al
        0x8B, 0x1E, 0x42, 0x7E, // 126: mov 0x7e42,%bx
        0x88, 0x87, 0x00, 0x7E, // 12a: mov %al,0x7e00(%bx)
        0x43, // 12e: inc %bx
        0x83, 0xE3, 0x3F, // 12f: and $0x3f,%bx
        0x89, 0x1E, 0x42, 0x7E, // 132: mov %bx,0x7e42
        0xB0, 0x20, // 136: mov $0x20,%al
        0xE6, 0x20, // 138: out %al,$0x20
        0x1F, // 13a: pop %ds
        0x5B, // 13b: pop %bx
        0x58, // 13c: pop %ax
        0xCF, // 13d: iret
    ];
    for s in [SWITCH_TITLE, "READY "] {
        c.extend_from_slice(s.as_bytes());
        c.push(0);
    }
    assert!(c.len() <= SWITCH_LABEL_AT, "the code and strings overlap the label");
    c.resize(SWITCH_ANIMATE_AT + 1, 0);
    c
}

/// What [`display_disk`] writes in the text buffer.
pub const DISPLAY_TEXT: &str = "KVMOS TEXT";

/// The end every test boot sector shares: write the boot marker, reset
/// through the i8042; then the message at its place, and the MBR
/// signature, in a 1 MiB disk.
fn finish_boot_disk(mut c: Vec<u8>, message: &str) -> Vec<u8> {
    const MESSAGE_AT: usize = 0x180;
    c.extend_from_slice(&[0xBA, 0x40, 0x04, 0xB0, 0x01, 0xEE]); // boot marker: mov dx, 0x440; mov al, 1; out dx, al
    c.extend_from_slice(&[0xB0, 0xFE, 0xE6, 0x64, 0xF4, 0xEB, 0xFE]); // reset via the i8042; hlt; jmp $
    assert!(c.len() <= MESSAGE_AT, "boot code overlaps the message");
    let text = format!("{message}\r\n\0");
    assert!(MESSAGE_AT + text.len() <= 446, "message too long for the boot sector");
    let mut disk = vec![0u8; 1 << 20];
    disk[..c.len()].copy_from_slice(&c);
    disk[MESSAGE_AT..MESSAGE_AT + text.len()].copy_from_slice(text.as_bytes());
    disk[510] = 0x55;
    disk[511] = 0xAA;
    disk
}

/// The start every test boot sector shares: segments and stack, `message`
/// printed through INT 10h, and a 200 ms wait through INT 15h so that the
/// BIOS flushes its serial console.
fn start_boot_disk() -> Vec<u8> {
    vec![
        0xFA, //                   00: cli
        0x31, 0xC0, //             01: xor ax, ax
        0x8E, 0xD8, //             03: mov ds, ax
        0x8E, 0xD0, //             05: mov ss, ax
        0xBC, 0x00, 0x7C, //       07: mov sp, 0x7c00
        0xBE, 0x80, 0x7D, //       0a: mov si, 0x7c00 + 0x180 (the message)
        0xAC, //                   0d: lodsb
        0x84, 0xC0, //             0e: test al, al
        0x74, 0x09, //             10: jz 1b
        0xB4, 0x0E, //             12: mov ah, 0x0e
        0xBB, 0x07, 0x00, //       14: mov bx, 7
        0xCD, 0x10, //             17: int 0x10
        0xEB, 0xF2, //             19: jmp 0d
        0xFB, //                   1b: sti
        0xB4, 0x86, //             1c: mov ah, 0x86      (wait CX:DX µs)
        0xB9, 0x03, 0x00, //       1e: mov cx, 3
        0xBA, 0x40, 0x0D, //       21: mov dx, 0x0d40    (0x30d40 = 200,000)
        0xCD, 0x15, //             24: int 0x15
        0xFA, //                   26: cli
    ]
}

fn serial_text(c: &mut Vec<u8>, text: &str) {
    for b in text.bytes() {
        c.extend_from_slice(&[0xB0, b]); // mov al, b
        c.extend_from_slice(SERIAL_AL);
    }
}

/// `mov dx, 0x3f8; out dx, al`
const SERIAL_AL: &[u8] = &[0xBA, 0xF8, 0x03, 0xEE];

/// Where the 32-bit guests below keep their GDT (null, flat code 0x08,
/// flat data 0x10) and its descriptor, in the boot sector.
const GDT: usize = 0x158;
const GDTR: usize = 0x170;

/// The address of `offset` in the boot sector, once loaded at 0x7C00.
fn sector_address(offset: usize) -> [u8; 2] {
    (0x7C00 + offset as u16).to_le_bytes()
}

/// Appends the switch to 32-bit protected mode with the flat GDT (see
/// [`with_flat_gdt`]); the code after it runs in 32-bit mode.
fn enter_protected_mode(c: &mut Vec<u8>) {
    c.extend_from_slice(&[0x0F, 0x01, 0x16]); // lgdt [GDTR]
    c.extend_from_slice(&sector_address(GDTR));
    c.extend_from_slice(&[0x0F, 0x20, 0xC0, 0x0C, 0x01, 0x0F, 0x22, 0xC0]); // mov eax, cr0; or al, 1; mov cr0, eax
    let pm = 0x7C00 + c.len() as u32 + 8;
    c.extend_from_slice(&[0x66, 0xEA]); // jmp dword 0x08:pm
    c.extend_from_slice(&pm.to_le_bytes());
    c.extend_from_slice(&[0x08, 0x00]);
}

/// Writes the flat GDT and its descriptor into the boot sector.
fn with_flat_gdt(mut disk: Vec<u8>) -> Vec<u8> {
    assert!(disk[GDT..GDTR + 6].iter().all(|&b| b == 0), "boot code runs into the GDT");
    let gdt: [u8; 24] = [
        0, 0, 0, 0, 0, 0, 0, 0, //
        0xFF, 0xFF, 0, 0, 0, 0x9A, 0xCF, 0, //
        0xFF, 0xFF, 0, 0, 0, 0x92, 0xCF, 0,
    ];
    disk[GDT..GDT + 24].copy_from_slice(&gdt);
    disk[GDTR..GDTR + 2].copy_from_slice(&23u16.to_le_bytes());
    disk[GDTR + 2..GDTR + 6].copy_from_slice(&(0x7C00 + GDT as u32).to_le_bytes());
    disk
}

/// A boot sector that prints `message`, then makes its CPU shut down: it
/// enters 32-bit protected mode with an empty interrupt table (limit 0)
/// and executes `ud2`, so neither the #UD, nor the #GP for its missing
/// gate, nor the double fault finds a handler (a triple fault).
pub fn fault_disk(message: &str) -> Vec<u8> {
    const EMPTY_IDTR: usize = 0x176; // six zero bytes
    let mut c = start_boot_disk();
    c.extend_from_slice(&[0x0F, 0x01, 0x1E]); // lidt [EMPTY_IDTR]
    c.extend_from_slice(&sector_address(EMPTY_IDTR));
    enter_protected_mode(&mut c);
    c.extend_from_slice(&[0x0F, 0x0B]); // pm: ud2
    with_flat_gdt(finish_boot_disk(c, message))
}

/// What [`memory_hog_disk`] prints when it waits for its byte, and once
/// it has touched its memory.
pub const HOG_WAITING: &str = "HOG-WAITING";
pub const HOG_DONE: &str = "HOG-DONE";

/// A boot sector for memory-limit tests: it prints `message`, then (with
/// interrupts off, so the BIOS's serial console takes no input any more)
/// [`HOG_WAITING`], waits for a byte on COM1, enters 32-bit protected mode
/// and writes one word into every 4 KiB page from 1 MiB up to `mib` MiB,
/// so the VMM's process really holds that much memory; then it prints
/// [`HOG_DONE`] on COM1 and halts.
pub fn memory_hog_disk(message: &str, mib: u32) -> Vec<u8> {
    let mut c = start_boot_disk();
    serial_text(&mut c, &format!("{HOG_WAITING}\r\n"));
    // Until COM1 has a byte: in al, 0x3fd (LSR); test al, 1; jz back.
    c.extend_from_slice(&[0xBA, 0xFD, 0x03, 0xEC, 0xA8, 0x01, 0x74, 0xFB]);
    enter_protected_mode(&mut c);
    // pm (32-bit): ds = es = 0x10; edi = 1 MiB.
    c.extend_from_slice(&[0x66, 0xB8, 0x10, 0x00, 0x8E, 0xD8, 0x8E, 0xC0]);
    c.extend_from_slice(&[0xBF, 0x00, 0x00, 0x10, 0x00]);
    let top = c.len();
    c.extend_from_slice(&[0x89, 0x3F]); // mov [edi], edi
    c.extend_from_slice(&[0x81, 0xC7, 0x00, 0x10, 0x00, 0x00]); // add edi, 4096
    c.extend_from_slice(&[0x81, 0xFF]); // cmp edi, mib << 20
    c.extend_from_slice(&(mib << 20).to_le_bytes());
    let back = top as i32 - (c.len() as i32 + 2);
    c.extend_from_slice(&[0x72, back as i8 as u8]); // jb top
    for b in format!("{HOG_DONE}\n").bytes() {
        c.extend_from_slice(&[0x66, 0xBA, 0xF8, 0x03, 0xB0, b, 0xEE]); // mov dx, 0x3f8; mov al, b; out dx, al
    }
    c.extend_from_slice(&[0xF4, 0xEB, 0xFD]); // hlt; jmp $-1
    with_flat_gdt(finish_boot_disk(c, message))
}

/// What [`garbage_disk`] prints when its loop is done.
pub const SURVIVED: &str = "GARBAGE-SURVIVED";

/// A boot sector for hostile-guest tests: after printing `message`, it
/// writes 3000 rounds of pseudo-random values (xorshift16) to fw_cfg's
/// selector and data ports, the CMOS index and data ports, and PCI's
/// CONFIG_ADDRESS and CONFIG_DATA (so BARs, PMBASE, MSI-X control and
/// chipset registers all take garbage), then prints [`SURVIVED`] and
/// resets like [`boot_disk`].
pub fn garbage_disk(message: &str) -> Vec<u8> {
    let mut c = start_boot_disk();
    c.extend_from_slice(&[0xBB, 0xE1, 0xAC]); // mov bx, 0xace1   (the xorshift state)
    c.extend_from_slice(&[0xB9, 0xB8, 0x0B]); // mov cx, 3000
    let body: &[u8] = &[
        0x89, 0xD8, 0xC1, 0xE0, 0x07, 0x31, 0xC3, // mov ax, bx; shl ax, 7; xor bx, ax
        0x89, 0xD8, 0xC1, 0xE8, 0x09, 0x31, 0xC3, // mov ax, bx; shr ax, 9; xor bx, ax
        0x89, 0xD8, 0xC1, 0xE0, 0x08, 0x31, 0xC3, // mov ax, bx; shl ax, 8; xor bx, ax
        0x89, 0xD8, 0xBA, 0x10, 0x05, 0xEF, // mov ax, bx; mov dx, 0x510; out dx, ax  (fw_cfg selector)
        0xBA, 0x11, 0x05, 0xEC, 0xEE, // mov dx, 0x511; in al, dx; out dx, al       (fw_cfg data)
        0x88, 0xD8, 0xE6, 0x70, 0x88, 0xF8, 0xE6,
        0x71, // mov al, bl; out 0x70, al; mov al, bh; out 0x71, al (CMOS)
        0x66, 0x0F, 0xB7, 0xC3, // movzx eax, bx
        0x66, 0x25, 0xFC, 0xFF, 0x00, 0x00, // and eax, 0xfffc
        0x66, 0x0D, 0x00, 0x00, 0x00, 0x80, // or eax, 0x80000000  (bus 0, any device, register)
        0xBA, 0xF8, 0x0C, 0x66, 0xEF, // mov dx, 0xcf8; out dx, eax
        0x66, 0x0F, 0xB7, 0xC3, // movzx eax, bx
        0x66, 0x69, 0xC0, 0x01, 0x00, 0x01, 0x00, // imul eax, eax, 0x10001
        0xBA, 0xFC, 0x0C, 0x66, 0xEF, // mov dx, 0xcfc; out dx, eax
    ];
    c.extend_from_slice(body);
    let back = -((body.len() + 3) as i16);
    c.extend_from_slice(&[0x49, 0x75, back as u8]); // dec cx; jnz body
    serial_text(&mut c, SURVIVED);
    serial_text(&mut c, "\r\n");
    finish_boot_disk(c, message)
}

/// Deterministic bytes that look random (xorshift32, high bits, 7-bit so
/// that no far-jump opcode 0xEA appears): test input for "a file that is
/// not a firmware or a kernel".
pub fn noise(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8 & 0x7f
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// The switch guest's bytes are its source, assembled: GNU as and ld
    /// (binutils, which the C compiler the build needs brings along) make
    /// them again from `vmm/tiny_guest/switch.S`.
    #[test]
    fn the_switch_guest_is_its_source_assembled() {
        let dir = tempfile::tempdir().unwrap();
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tiny_guest/switch.S");
        let (obj, bin) = (dir.path().join("switch.o"), dir.path().join("switch.bin"));
        let ok = Command::new("as").args(["--32", "-o"]).arg(&obj).arg(src).status().unwrap();
        assert!(ok.success(), "as failed");
        let ok = Command::new("ld")
            .args(["-m", "elf_i386", "-Ttext", "0x7c00", "--oformat", "binary", "-o"])
            .arg(&bin)
            .arg(&obj)
            .status()
            .unwrap();
        assert!(ok.success(), "ld failed");
        let assembled = std::fs::read(&bin).unwrap();
        let ours = switch_disk_code();
        assert_eq!(&ours[..assembled.len()], &assembled[..], "switch.S and the bytes in tiny_guest.rs differ");
        let disk = switch_disk("vm-7", true);
        assert_eq!(&disk[SWITCH_LABEL_AT..SWITCH_LABEL_AT + 5], b"vm-7\0");
        assert_eq!(disk[SWITCH_ANIMATE_AT], 1);
        assert_eq!(&disk[510..512], &[0x55, 0xAA]);
    }
}
