//! kvmos-image-builder turns the repository into a bootable kvmos appliance.
//!
//! [`pipeline::build`] is the whole build, top to bottom: check the host tools,
//! build both kernels from `kernel-config/` ([`kernel`], checked by
//! [`kconfig`]), build the static Rust binaries ([`binaries`]), assemble the
//! demo guest ([`guest`]), take the PC firmware from the host's packages
//! ([`firmware`]), write the reproducible initramfs ([`initramfs`]),
//! relink the host kernel with it for UEFI, and lay out the flashable GPT disk
//! image ([`disk`]). [`qemu`] boots the result; the `kvmos-image` binary and
//! the qemu-test crate both use it, so developers and tests boot the appliance
//! the same way.
//!
//! Every output is written next to its final path and renamed into place
//! ([`util::AtomicFile`]), so a failed or interrupted build never leaves a
//! half-written file where a good one was.

pub mod binaries;
pub mod disk;
pub mod firmware;
pub mod fuzz;
pub mod guest;
pub mod host_programs;
pub mod host_tools;
pub mod initramfs;
pub mod kconfig;
pub mod kernel;
pub mod manifest;
pub mod pipeline;
pub mod qemu;
pub mod util;

use std::path::{Path, PathBuf};

/// Where things are: the repository, the outputs and the kernel cache.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The repository root (holds Cargo.toml and kernel-config/).
    pub repo: PathBuf,
    /// `target/kvmos/`: the outputs an admin or a test uses.
    pub out_dir: PathBuf,
    /// The kernel and source cache, shared by all checkouts of this user.
    pub cache_dir: PathBuf,
}

impl Layout {
    /// The layout of the checkout this crate was built from. The cache lives
    /// in `$KVMOS_CACHE_DIR`, else `$XDG_CACHE_HOME/kvmos`, else
    /// `~/.cache/kvmos`: kernels are keyed by content, so every checkout can
    /// share them, and a `cargo clean` does not cost a 15-minute rebuild.
    pub fn from_repo(repo: &Path) -> Self {
        let cache_dir = std::env::var_os("KVMOS_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("kvmos")))
            .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/kvmos")))
            .unwrap_or_else(|| repo.join("target/kvmos-cache"));
        Self { repo: repo.to_path_buf(), out_dir: repo.join("target/kvmos"), cache_dir }
    }

    /// The checkout holding this crate (its parent folder).
    pub fn this_checkout() -> Self {
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        Self::from_repo(manifest_dir.parent().unwrap_or(manifest_dir))
    }

    pub fn bz_image(&self) -> PathBuf {
        self.out_dir.join("bzImage")
    }
    pub fn initramfs(&self) -> PathBuf {
        self.out_dir.join("initramfs.cpio.zst")
    }
    pub fn disk_image(&self) -> PathBuf {
        self.out_dir.join("kvmos.img")
    }
    /// The host kernel's symbol table (for tests that report where a
    /// stuck kernel was; not part of the image).
    pub fn system_map(&self) -> PathBuf {
        self.out_dir.join("System.map")
    }
    pub fn manifest(&self) -> PathBuf {
        self.out_dir.join("manifest.json")
    }
}

/// The version written into the image (`/usr/share/kvmos/version`) and shown
/// in the console banner.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
