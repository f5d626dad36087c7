//! `target/kvmos/manifest.json`: what a build produced, with sizes and
//! SHA-256 checksums, for release notes, flashing checks and benchmarks.

use crate::util::{sha256_file, write_atomic};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub version: String,
    /// Git commit of the checkout, when it is a git checkout.
    pub commit: Option<String>,
    pub files: Vec<FileEntry>,
    /// SHA-256 of the uncompressed initramfs, used to skip recompression
    /// when nothing in it changed.
    pub initramfs_cpio_sha256: String,
    pub kernel_cmdline: String,
    /// The PC firmware inside the initramfs: package, version, checksum.
    #[serde(default)]
    pub firmware: Vec<crate::firmware::FirmwareEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

impl FileEntry {
    pub fn of(path: &Path) -> Result<Self> {
        Ok(Self {
            name: path.file_name().context("no file name")?.to_string_lossy().into_owned(),
            bytes: std::fs::metadata(path)?.len(),
            sha256: sha256_file(path)?,
        })
    }
}

impl Manifest {
    pub fn read(path: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(self)?;
        json.push(b'\n');
        write_atomic(path, &json)
    }

    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }
}
