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
