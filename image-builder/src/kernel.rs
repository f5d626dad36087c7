//! Building a kernel from a source tarball (or tree) and a config fragment,
//! with a cache keyed by both.
//!
//! Cache layout (under [`crate::Layout::cache_dir`]):
//! ```text
//! src/<source id>/<tree>/          the extracted source, shared by all configs
//! kernel/<name>-<key>/build/       the O= build tree
//! kernel/<name>-<key>/bzImage      the finished kernel, present only when complete
//! kernel/<name>-<key>/embedded-<initramfs hash>.efi
//!                                  the same kernel relinked with a built-in
//!                                  initramfs, for UEFI boot without a loader
//! ```
//! The key covers the fragment's bytes, the base config, the source identity
//! and [`CACHE_VERSION`], so any change to those rebuilds and nothing else does.

use crate::kconfig::{self, KconfigIndex};
use crate::util::{self, copy_atomic, human_duration, run, sha256_file, sha256_hex, write_atomic, LockFile};
use anyhow::{bail, Context, Result};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Bump to invalidate every cached kernel when the build procedure changes.
const CACHE_VERSION: &str = "kvmos-kernel-cache-1";
/// The config every fragment is merged onto (see kernel-config/*.config).
const BASE_CONFIG: &str = "tinyconfig";

/// Where the kernel source comes from, with a stable identity of its content
/// (computed once: hashing the 130 MiB tarball is not free).
#[derive(Debug, Clone)]
pub struct Source {
    kind: SourceKind,
    id: String,
}

#[derive(Debug, Clone)]
enum SourceKind {
    Tarball(PathBuf),
    Tree(PathBuf),
}

impl Source {
    pub fn from_path(path: &Path) -> Result<Self> {
        let kind = if path.is_dir() {
            if !path.join("Makefile").is_file() || !path.join("Kconfig").is_file() {
                bail!("{} is a folder but not a Linux source tree (no Makefile and Kconfig)", path.display());
            }
            SourceKind::Tree(path.to_path_buf())
        } else if path.is_file() {
            SourceKind::Tarball(path.to_path_buf())
        } else {
            bail!(
                "the Linux source {} does not exist: install Debian's package linux-source-6.1 \
                 (apt-get install linux-source-6.1) or pass --kernel-source with a tarball or tree",
                path.display()
            )
        };
        let id = match &kind {
            SourceKind::Tarball(p) => sha256_file(p)?[..16].to_string(),
            SourceKind::Tree(p) => {
                // Hashing a whole tree is slower than extracting one; the
                // version and the top Makefile's mtime identify a tree well
                // enough for a developer's own checkout.
                let version = run(Command::new("make").arg("-s").arg("-C").arg(p).arg("kernelversion"))?;
                let mtime = fs::metadata(p.join("Makefile"))?.modified()?;
                let canon = fs::canonicalize(p)?;
                sha256_hex(&[
                    version.trim().as_bytes(),
                    canon.to_string_lossy().as_bytes(),
                    format!("{mtime:?}").as_bytes(),
                ])[..16]
                    .to_string()
            }
        };
        Ok(Self { kind, id })
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A kernel to build: a name (for paths and messages) and its fragment.
pub struct KernelSpec<'a> {
    pub name: &'a str,
    pub fragment_path: &'a Path,
}

/// A built kernel in the cache.
#[derive(Debug, Clone)]
pub struct BuiltKernel {
    pub name: String,
    pub bz_image: PathBuf,
    /// The tree it was built in, reused to relink with an embedded initramfs.
    entry_dir: PathBuf,
    src_dir: PathBuf,
}

impl BuiltKernel {
    /// The uncompressed ELF kernel of the same build (bootable through PVH
    /// when the config has CONFIG_PVH).
    pub fn vmlinux(&self) -> PathBuf {
        self.entry_dir.join("build/vmlinux")
    }

    /// The symbol table of this bzImage, to name the functions at the
    /// addresses a stuck kernel was at: kept beside it when it was built
    /// (the build tree's own is rewritten by the UEFI relink); entries
    /// cached before that have only the build tree's.
    pub fn system_map(&self) -> PathBuf {
        let kept = self.entry_dir.join("System.map");
        if kept.is_file() {
            kept
        } else {
            self.entry_dir.join("build/System.map")
        }
    }
}

/// Makes sure the source is extracted in the cache; returns the tree's path.
pub fn prepare_source(source: &Source, cache_dir: &Path) -> Result<PathBuf> {
    let tarball = match &source.kind {
        SourceKind::Tree(p) => return Ok(p.clone()),
        SourceKind::Tarball(p) => p,
    };
    let id = source.id();
    let dest = cache_dir.join("src").join(id);
    if let Some(tree) = find_tree(&dest)? {
        return Ok(tree);
    }
    eprintln!("    extracting {} (once per source version)", tarball.display());
    let tmp = cache_dir.join("src").join(format!(".{id}.partial"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(util::disk_error)?;
    run(Command::new("tar").arg("-xf").arg(tarball).arg("-C").arg(&tmp))
        .context("cannot extract the kernel source (is the disk full, or the tarball damaged?)")?;
    if find_tree(&tmp)?.is_none() {
        bail!("{} does not contain a Linux source tree", tarball.display());
    }
    let _ = fs::remove_dir_all(&dest);
    fs::rename(&tmp, &dest)?;
    find_tree(&dest)?.context("extracted source vanished")
}

/// The Linux tree inside an extraction folder: the folder itself or its one
/// subfolder holding a Makefile and Kconfig.
fn find_tree(dir: &Path) -> Result<Option<PathBuf>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    if dir.join("Kconfig").is_file() {
        return Ok(Some(dir.to_path_buf()));
    }
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.join("Kconfig").is_file() && p.join("Makefile").is_file() {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// Builds (or finds in the cache) one kernel.
pub fn build(spec: &KernelSpec, source: &Source, cache_dir: &Path) -> Result<BuiltKernel> {
    let _lock = LockFile::acquire(&cache_dir.join("kernel.lock"))?;
    let fragment_text = fs::read_to_string(spec.fragment_path)
        .with_context(|| format!("cannot read kernel config fragment {}", spec.fragment_path.display()))?;
    let fragment_name = spec.fragment_path.display().to_string();
    let settings = kconfig::parse_fragment(&fragment_name, &fragment_text)?;
    let key = sha256_hex(&[
        CACHE_VERSION.as_bytes(),
        BASE_CONFIG.as_bytes(),
        fragment_text.as_bytes(),
        source.id().as_bytes(),
    ])[..16]
        .to_string();
    let entry_dir = cache_dir.join("kernel").join(format!("{}-{key}", spec.name));
    let bz_image = entry_dir.join("bzImage");
    let src_dir = prepare_source(source, cache_dir)?;
    let built =
        BuiltKernel { name: spec.name.to_string(), bz_image: bz_image.clone(), entry_dir: entry_dir.clone(), src_dir };
    if bz_image.is_file() {
        eprintln!("    {} kernel: cached ({})", spec.name, bz_image.display());
        return Ok(built);
    }
    let build_dir = entry_dir.join("build");
    fs::create_dir_all(&build_dir).map_err(util::disk_error)?;

    configure(&built.src_dir, &build_dir, &fragment_name, &settings)?;
    let log = entry_dir.join("build.log");
    eprintln!("    building the {} kernel with {} jobs (log: {})", spec.name, jobs(), log.display());
    let started = Instant::now();
    make(&built.src_dir, &build_dir, &["bzImage"], &log)?;
    eprintln!("    {} kernel built in {}", spec.name, human_duration(started.elapsed()));
    copy_atomic(&build_dir.join("System.map"), &entry_dir.join("System.map"))?;
    copy_atomic(&build_dir.join("arch/x86/boot/bzImage"), &bz_image)?;
    copy_atomic(&build_dir.join(".config"), &entry_dir.join("config"))?;
    Ok(built)
}

/// tinyconfig, merge the fragment, olddefconfig, then check nothing dropped.
fn configure(src: &Path, build_dir: &Path, fragment_name: &str, settings: &[kconfig::Setting]) -> Result<()> {
    let log = build_dir.join("../configure.log");
    make(src, build_dir, &[BASE_CONFIG], &log)?;
    let dot = build_dir.join(".config");
    let base = fs::read_to_string(&dot)?;
    write_atomic(&dot, kconfig::merge(&base, fragment_name, settings).as_bytes())?;
    make(src, build_dir, &["olddefconfig"], &log)?;
    let final_config = fs::read_to_string(&dot)?;
    let index = KconfigIndex::scan(src)?;
    let dropped = kconfig::verify(settings, &final_config, &index);
    if !dropped.is_empty() {
        let lines = dropped.iter().map(|d| format!("  {fragment_name} {d}")).collect::<Vec<_>>().join("\n");
        bail!(
            "the kernel config fragment asks for options this kernel did not keep:\n{lines}\n\
             Fix the fragment (add the missing dependencies, or remove the option) and run again."
        );
    }
    Ok(())
}

fn jobs() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Runs `make -C src O=build_dir targets` with output to `log`, printing a
/// progress line every 30 s so a long build never looks hung.
fn make(src: &Path, build_dir: &Path, targets: &[&str], log: &Path) -> Result<()> {
    let mut log_file = File::options().create(true).append(true).open(log).map_err(util::disk_error)?;
    let start_len = log_file.seek(SeekFrom::End(0))?;
    let mut child = Command::new("make")
        .arg("-C")
        .arg(src)
        .arg(format!("O={}", build_dir.display()))
        .arg(format!("-j{}", jobs()))
        .args(targets)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .context("cannot run make")?;
    let started = Instant::now();
    let mut last_report = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
        if last_report.elapsed() >= Duration::from_secs(30) {
            last_report = Instant::now();
            let last = last_line(log).unwrap_or_default();
            eprintln!("      … {} elapsed, at: {}", human_duration(started.elapsed()), last.trim());
        }
    };
    if !status.success() {
        let tail = tail_since(log, start_len, 40).unwrap_or_default();
        if tail.contains("No space left on device") {
            bail!("the disk is full while building the kernel: free some space and run again (log: {})", log.display());
        }
        bail!("make {} failed ({status}); the end of {}:\n{tail}", targets.join(" "), log.display());
    }
    Ok(())
}

fn last_line(path: &Path) -> Option<String> {
    let f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let mut r = BufReader::new(f);
    r.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    r.lines().map_while(Result::ok).filter(|l| !l.trim().is_empty()).last()
}

fn tail_since(path: &Path, from: u64, lines: usize) -> Option<String> {
    let mut f = File::open(path).ok()?;
    f.seek(SeekFrom::Start(from)).ok()?;
    let all: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
    Some(all[all.len().saturating_sub(lines)..].join("\n"))
}

impl BuiltKernel {
    /// The kernel relinked with `initramfs` built in (CONFIG_INITRAMFS_SOURCE).
    ///
    /// UEFI firmware starts `\EFI\BOOT\BOOTX64.EFI` with no arguments, and the
    /// EFI stub only loads an `initrd=` named in those arguments, so a disk that
    /// boots with no bootloader must carry the initramfs inside the kernel.
    /// The relink reuses the cached build tree: only `usr/` and the final link
    /// run again. The result is cached by the initramfs's hash.
    pub fn with_embedded_initramfs(&self, initramfs: &Path) -> Result<PathBuf> {
        let cache_dir = self.entry_dir.parent().and_then(Path::parent).context("bad cache layout")?;
        let _lock = LockFile::acquire(&cache_dir.join("kernel.lock"))?;
        let hash = sha256_file(initramfs)?;
        let out = self.entry_dir.join(format!("embedded-{}.efi", &hash[..16]));
        if out.is_file() {
            return Ok(out);
        }
        let build_dir = self.entry_dir.join("build");
        // A fixed path, so the config does not change between images and
        // make rebuilds only what depends on the archive's content.
        let staged = self.entry_dir.join("embedded-initramfs.cpio.zst");
        copy_atomic(initramfs, &staged)?;
        let dot = build_dir.join(".config");
        let config = fs::read_to_string(&dot)?;
        let wanted = format!("CONFIG_INITRAMFS_SOURCE=\"{}\"", staged.display());
        if !config.lines().any(|l| l == wanted) {
            let kept: Vec<&str> = config.lines().filter(|l| !l.starts_with("CONFIG_INITRAMFS_SOURCE=")).collect();
            write_atomic(&dot, format!("{}\n{wanted}\n", kept.join("\n")).as_bytes())?;
            make(&self.src_dir, &build_dir, &["olddefconfig"], &self.entry_dir.join("configure.log"))?;
        }
        let started = Instant::now();
        make(&self.src_dir, &build_dir, &["bzImage"], &self.entry_dir.join("build.log"))?;
        eprintln!(
            "    relinked the {} kernel with the initramfs built in ({})",
            self.name,
            human_duration(started.elapsed())
        );
        copy_atomic(&build_dir.join("arch/x86/boot/bzImage"), &out)?;
        // Old relinks are dead weight: keep only the newest.
        for e in fs::read_dir(&self.entry_dir)?.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("embedded-") && name.ends_with(".efi") && p != out {
                let _ = fs::remove_file(p);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_source_names_the_package_and_the_flag() {
        let e = Source::from_path(Path::new("/nonexistent/linux.tar.xz")).unwrap_err().to_string();
        assert!(e.contains("linux-source-6.1") && e.contains("--kernel-source"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = Source::from_path(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a Linux source tree"), "{e}");
    }
}
