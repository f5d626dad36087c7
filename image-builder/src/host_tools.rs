//! The host packages each command needs, and installing them.
//!
//! On Debian or Ubuntu as root the missing packages are installed with
//! apt-get, after saying which; anywhere else the exact `apt-get install`
//! line is printed and the command stops. Nothing is installed silently.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// One thing the build or the QEMU runs need from the host.
#[derive(Debug, Clone, Copy)]
pub struct Requirement {
    /// What is checked, shown to the user.
    pub what: &'static str,
    pub check: Check,
    /// The Debian package that provides it.
    pub package: &'static str,
}

#[derive(Debug, Clone, Copy)]
pub enum Check {
    /// An executable on PATH.
    Command(&'static str),
    /// A file that must exist.
    File(&'static str),
    /// A statically linked executable at this path.
    StaticBinary(&'static str),
    /// A C header, relative to /usr/include.
    Header(&'static str),
}

const fn cmd(what: &'static str, package: &'static str) -> Requirement {
    Requirement { what, check: Check::Command(what), package }
}

/// Needed to build the kernels, the demo guest and the image.
pub const BUILD: &[Requirement] = &[
    cmd("make", "make"),
    cmd("gcc", "gcc"),
    cmd("flex", "flex"),
    cmd("bison", "bison"),
    cmd("bc", "bc"),
    cmd("perl", "perl"),
    cmd("xz", "xz-utils"),
    cmd("zstd", "zstd"),
    cmd("mke2fs", "e2fsprogs"),
    cmd("e2fsck", "e2fsprogs"),
    cmd("ldd", "libc-bin"),
    // webadmin's build script vendors xterm.js with `npm ci`.
    cmd("npm", "npm"),
    Requirement { what: "libelf headers (gelf.h)", check: Check::File("/usr/include/gelf.h"), package: "libelf-dev" },
    Requirement {
        what: "OpenSSL headers (openssl/ssl.h)",
        check: Check::File("/usr/include/openssl/ssl.h"),
        package: "libssl-dev",
    },
    Requirement {
        what: "static busybox for the demo guest (/bin/busybox)",
        check: Check::StaticBinary("/bin/busybox"),
        package: "busybox-static",
    },
    // The PC machine's firmware, shipped in the appliance.
    Requirement {
        what: "SeaBIOS (bios-256k.bin)",
        check: Check::File("/usr/share/seabios/bios-256k.bin"),
        package: "seabios",
    },
    Requirement {
        what: "OVMF, UEFI firmware (OVMF_CODE_4M.fd)",
        check: Check::File("/usr/share/OVMF/OVMF_CODE_4M.fd"),
        package: "ovmf",
    },
];

/// The default kernel source; only needed when `--kernel-source` is not given.
pub const LINUX_SOURCE: Requirement = Requirement {
    what: "Linux source (/usr/src/linux-source-6.1.tar.xz)",
    check: Check::File("/usr/src/linux-source-6.1.tar.xz"),
    package: "linux-source-6.1",
};

/// Needed to boot the image (`run` and the tests).
pub const RUN: &[Requirement] = &[
    cmd("qemu-system-x86_64", "qemu-system-x86"),
    Requirement {
        what: "UEFI firmware for QEMU (OVMF_CODE_4M.fd)",
        check: Check::File("/usr/share/OVMF/OVMF_CODE_4M.fd"),
        package: "ovmf",
    },
];

/// Needed by the tests beyond booting: making and checking ext4 data disks,
/// and the browser tests' headless Chromium.
pub const TEST: &[Requirement] = &[
    cmd("mkfs.ext4", "e2fsprogs"),
    cmd("cargo", "cargo (install Rust with rustup)"),
    cmd("chromium", "chromium"),
    cmd("chromedriver", "chromium-driver"),
    // The Debian test image for the PC machine (qemu-test's `debian`).
    cmd("mmdebstrap", "mmdebstrap"),
    cmd("sfdisk", "fdisk"),
    cmd("mkfs.vfat", "dosfstools"),
    cmd("mcopy", "mtools"),
    // qcow2 images for the panel's conversion tests.
    cmd("qemu-img", "qemu-utils"),
    // cloud-init itself checks the seeds the panel makes (its schema, its
    // network-config conversion).
    cmd("cloud-init", "cloud-init"),
    // Logging in to a cloud image's VM as its user, with a key.
    cmd("ssh", "openssh-client"),
    cmd("ssh-keygen", "openssh-client"),
    // Hybrid ISOs for the firmware tests.
    cmd("xorriso", "xorriso"),
    cmd("grub-mkimage", "grub-common"),
    Requirement {
        what: "GRUB for BIOS (boot.img)",
        check: Check::File("/usr/lib/grub/i386-pc/boot.img"),
        package: "grub-pc-bin",
    },
    Requirement {
        what: "GRUB for UEFI (x86_64-efi modules)",
        check: Check::File("/usr/lib/grub/x86_64-efi/linux.mod"),
        package: "grub-efi-amd64-bin",
    },
    // The patched L0 QEMU for nested UEFI guests (qemu-test's `l0_qemu`),
    // built from Debian's source of the installed qemu-system-x86.
    cmd("dpkg-source", "dpkg-dev"),
    cmd("patch", "patch"),
    cmd("meson", "meson"),
    cmd("ninja", "ninja-build"),
    cmd("pkg-config", "pkg-config"),
    header("glib-2.0/glib.h", "libglib2.0-dev"),
    header("pixman-1/pixman.h", "libpixman-1-dev"),
    header("slirp/libslirp.h", "libslirp-dev"),
    header("libfdt.h", "libfdt-dev"),
    header("zlib.h", "zlib1g-dev"),
];

/// A C header under /usr/include, from a -dev package.
const fn header(path: &'static str, package: &'static str) -> Requirement {
    Requirement { what: path, check: Check::Header(path), package }
}

impl Requirement {
    pub fn is_met(&self) -> bool {
        match self.check {
            Check::Command(name) => on_path(name),
            Check::File(path) => Path::new(path).exists(),
            Check::StaticBinary(path) => std::fs::read(path).map(|b| elf_is_static(&b)).unwrap_or(false),
            Check::Header(path) => Path::new("/usr/include").join(path).is_file(),
        }
    }
}

fn on_path(name: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else { return false };
    std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]).any(|d| d.join(name).is_file())
}

/// True for an ELF executable without a program interpreter (PT_INTERP),
/// i.e. one that runs without a dynamic loader.
pub fn elf_is_static(bytes: &[u8]) -> bool {
    fn u16_at(b: &[u8], o: usize) -> Option<u16> {
        Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
    }
    fn u32_at(b: &[u8], o: usize) -> Option<u32> {
        Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
    }
    fn u64_at(b: &[u8], o: usize) -> Option<u64> {
        Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
    }
    const PT_INTERP: u32 = 3;
    let is_elf64_le = bytes.get(..6) == Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]);
    if !is_elf64_le {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(bytes, 0x20), u16_at(bytes, 0x36), u16_at(bytes, 0x38))
    else {
        return false;
    };
    (0..phnum as usize).all(|i| {
        let off = phoff as usize + i * phentsize as usize;
        u32_at(bytes, off).is_some_and(|t| t != PT_INTERP)
    })
}

/// Makes sure every requirement is met, installing what is missing when that
/// is possible here, and otherwise stopping with the command to run.
pub fn ensure(reqs: &[Requirement]) -> Result<()> {
    let missing: Vec<&Requirement> = reqs.iter().filter(|r| !r.is_met()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<&str> = missing.iter().map(|r| r.package).collect();
    packages.sort();
    packages.dedup();
    let list = missing.iter().map(|r| format!("  - {} (package {})", r.what, r.package)).collect::<Vec<_>>().join("\n");
    let line = format!("apt-get install -y --no-install-recommends {}", packages.join(" "));
    let can_install =
        rustix::process::geteuid().is_root() && on_path("apt-get") && !packages.iter().any(|p| p.contains(' '));
    if !can_install {
        bail!("these host tools are missing:\n{list}\nInstall them with:\n  sudo {line}\nthen run the command again.");
    }
    eprintln!("==> installing missing host packages:\n{list}\n    running: apt-get update && {line}");
    let status = Command::new("apt-get")
        .args(["update", "-qq"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get update")?;
    if !status.success() {
        bail!("apt-get update failed ({status}); fix the package sources and run: {line}");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get install")?;
    if !status.success() {
        bail!("`{line}` failed ({status}); install the packages by hand and run again");
    }
    let still: Vec<&str> = missing.iter().filter(|r| !r.is_met()).map(|r| r.what).collect();
    if !still.is_empty() {
        bail!("after installing, still missing: {}", still.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_static_from_dynamic_executables() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // Test binaries are linked dynamically.
        assert!(!elf_is_static(&me));
        assert!(!elf_is_static(b"#!/bin/sh\n"));
        // A minimal ELF64 header with no program headers has no interpreter.
        let mut hdr = vec![0u8; 64];
        hdr[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        assert!(elf_is_static(&hdr));
    }
}

#[cfg(test)]
mod requirement_tests {
    use super::*;

    #[test]
    fn missing_tools_are_detected() {
        let missing = Requirement { what: "x", check: Check::Command("kvmos-no-such-tool"), package: "x" };
        assert!(!missing.is_met());
        assert!(Requirement { what: "sh", check: Check::Command("sh"), package: "dash" }.is_met());
        assert!(!Requirement { what: "f", check: Check::File("/nonexistent/file"), package: "f" }.is_met());
    }
}
