//! The PC machine's firmware that the appliance ships: Debian's SeaBIOS
//! (LGPL-3) and OVMF (BSD-2-Clause-Patent), taken from the build host's
//! packages and recorded in the manifest with their package versions and
//! checksums. kvmos-vmm finds them in [`DIR`] inside the appliance.

use crate::util::sha256_hex;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::Command;

/// Where the appliance keeps them (kvmos-vmm looks here first).
pub const DIR: &str = "/usr/share/kvmos/firmware";

/// Each file: its name in [`DIR`], where the package installs it, the package.
pub const FILES: [(&str, &str, &str); 4] = [
    ("bios-256k.bin", "/usr/share/seabios/bios-256k.bin", "seabios"),
    // The standard VGA's option ROM, which SeaBIOS runs for a screen.
    ("vgabios-stdvga.bin", "/usr/share/seabios/vgabios-stdvga.bin", "seabios"),
    ("OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf"),
    ("OVMF_VARS_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd", "ovmf"),
];

/// One firmware file as the manifest records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FirmwareEntry {
    pub file: String,
    pub package: String,
    pub version: String,
    pub bytes: u64,
    pub sha256: String,
}

/// A firmware file's bytes and its manifest entry.
pub struct Firmware {
    pub entry: FirmwareEntry,
    pub data: Vec<u8>,
}

fn package_version(package: &str) -> Result<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .output()
        .with_context(|| format!("cannot ask dpkg for the version of {package}"))?;
    anyhow::ensure!(out.status.success(), "the package {package} is not installed (apt-get install {package})");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Reads every firmware file from the installed packages.
pub fn collect() -> Result<Vec<Firmware>> {
    FILES
        .iter()
        .map(|&(file, source, package)| {
            let data = std::fs::read(Path::new(source))
                .with_context(|| format!("cannot read {source}; install the {package} package"))?;
            let entry = FirmwareEntry {
                file: file.into(),
                package: package.into(),
                version: package_version(package)?,
                bytes: data.len() as u64,
                sha256: sha256_hex(&[&data]),
            };
            Ok(Firmware { entry, data })
        })
        .collect()
}
