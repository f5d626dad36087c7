//! The appliance's Rust programs, built in release mode and linked statically
//! (glibc with `+crt-static`: there is no musl target on these machines), so
//! the initramfs needs no loader and no shared libraries.

use crate::host_tools::elf_is_static;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target the appliance binaries are built for. Naming it explicitly
/// keeps the static rustflags away from build scripts and proc macros, and
/// the outputs apart from the developer's own `target/release`.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The packages whose binary (of the same name) goes into the initramfs.
pub const PROGRAMS: &[&str] = &["kvmos-init", "kvmos-vmm", "kvmos-webadmin"];

#[derive(Debug, Clone)]
pub struct Binaries {
    pub init: PathBuf,
    pub vmm: PathBuf,
    pub webadmin: PathBuf,
}

/// Cargo's target directory for this checkout: `CARGO_TARGET_DIR`, or
/// `target/` in the repository.
pub fn target_dir(repo: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo.join("target"))
}

/// Runs `cargo build --release` for the appliance programs.
pub fn build(repo: &Path) -> Result<Binaries> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo).args(["build", "--release", "--locked", "--target", TARGET]);
    for package in PROGRAMS {
        cmd.args(["-p", package]);
    }
    // RUSTFLAGS would override the per-target flags below; the static link
    // must not depend on what the caller's environment says.
    cmd.env_remove("RUSTFLAGS").env_remove("CARGO_ENCODED_RUSTFLAGS");
    cmd.env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS", "-C target-feature=+crt-static");
    let status = cmd.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("building the appliance binaries failed ({status}); see cargo's output above");
    }
    let dir = target_dir(repo).join(TARGET).join("release");
    let find = |name: &str| -> Result<PathBuf> {
        let p = dir.join(name);
        let bytes = std::fs::read(&p).with_context(|| format!("cargo built no {}", p.display()))?;
        if !elf_is_static(&bytes) {
            bail!("{} is dynamically linked; the initramfs has no loader for it", p.display());
        }
        Ok(p)
    };
    Ok(Binaries { init: find("kvmos-init")?, vmm: find("kvmos-vmm")?, webadmin: find("kvmos-webadmin")? })
}
