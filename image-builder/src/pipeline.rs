//! The whole build, as one sequence of named steps. Reading [`build`] top to
//! bottom tells everything that goes into a kvmos image.

use crate::binaries::{self, Binaries};
use crate::disk::{self, DiskSpec};
use crate::firmware;
use crate::guest;
use crate::host_programs;
use crate::host_tools;
use crate::initramfs::{self, Archive};
use crate::kconfig;
use crate::kernel::{self, BuiltKernel, KernelSpec, Source};
use crate::manifest::{FileEntry, Manifest};
use crate::util::{copy_atomic, human_size, sha256_hex, step, write_atomic, LockFile};
use crate::{Layout, VERSION};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The default Linux source: Debian's package linux-source-6.1.
pub const DEFAULT_KERNEL_SOURCE: &str = "/usr/src/linux-source-6.1.tar.xz";
/// Where the demo guest lives inside the appliance.
pub const DEMO_GUEST_DIR: &str = "/usr/share/kvmos/guests/demo";

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A Linux source tarball or tree; Debian's linux-source-6.1 by default.
    pub kernel_source: Option<PathBuf>,
    /// Size of the empty `KVMOS_DATA` partition in `kvmos.img`, if any.
    pub data_size: Option<u64>,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct Outputs {
    pub bz_image: PathBuf,
    pub initramfs: PathBuf,
    pub disk_image: PathBuf,
    pub guest_kernel: PathBuf,
    pub guest_initramfs: PathBuf,
    /// The guest kernel as an ELF vmlinux (PVH boot), for tests and
    /// benchmarks; the appliance ships the bzImage.
    pub guest_vmlinux: PathBuf,
    /// The static appliance programs, runnable on the build host too.
    pub binaries: Binaries,
    pub manifest: Manifest,
}

/// Builds everything into `layout.out_dir` (reusing cached kernels).
pub fn build(layout: &Layout, opts: &Options) -> Result<Outputs> {
    let _lock = LockFile::acquire(&layout.out_dir.join(".build.lock"))?;
    step("check host tools", || check_host_tools(opts))?;
    let source = step("find the Linux source", || find_source(opts))?;
    let host_kernel = step("build the host kernel", || build_kernel(layout, &source, "host"))?;
    let guest_kernel = step("build the guest kernel", || build_kernel(layout, &source, "guest"))?;
    let bins = step("build the static binaries", || binaries::build(&layout.repo))?;
    let guest_vmlinux = layout.out_dir.join("guest/vmlinux");
    step("copy the guest vmlinux", || copy_atomic(&guest_kernel.vmlinux(), &guest_vmlinux))?;
    let (guest_kernel, guest_initramfs) = step("assemble the demo guest", || demo_guest(layout, &guest_kernel))?;
    let firmware = step("collect the PC firmware (SeaBIOS, OVMF)", firmware::collect)?;
    let initramfs =
        step("write the initramfs", || write_initramfs(layout, &bins, &guest_kernel, &guest_initramfs, &firmware))?;
    let efi_kernel = step("build the UEFI kernel with the initramfs inside", || {
        host_kernel.with_embedded_initramfs(&layout.initramfs())
    })?;
    step("copy the kernel and its symbol table", || {
        copy_atomic(&host_kernel.bz_image, &layout.bz_image())?;
        copy_atomic(&host_kernel.system_map(), &layout.system_map())
    })?;
    step("write the disk image", || write_disk_image(layout, &efi_kernel, opts.data_size))?;
    let firmware = firmware.into_iter().map(|f| f.entry).collect();
    let manifest = step("write the manifest", || write_manifest(layout, initramfs.cpio_sha256, firmware))?;
    print_summary(&manifest, layout);
    Ok(Outputs {
        bz_image: layout.bz_image(),
        initramfs: layout.initramfs(),
        disk_image: layout.disk_image(),
        guest_kernel,
        guest_initramfs,
        guest_vmlinux,
        binaries: bins,
        manifest,
    })
}

fn check_host_tools(opts: &Options) -> Result<()> {
    host_tools::ensure(host_tools::BUILD)?;
    if opts.kernel_source.is_none() {
        host_tools::ensure(&[host_tools::LINUX_SOURCE])?;
    }
    Ok(())
}

fn find_source(opts: &Options) -> Result<Source> {
    let path = opts.kernel_source.clone().unwrap_or_else(|| DEFAULT_KERNEL_SOURCE.into());
    Source::from_path(&path)
}

fn build_kernel(layout: &Layout, source: &Source, name: &str) -> Result<BuiltKernel> {
    let fragment = layout.repo.join("kernel-config").join(format!("{name}.config"));
    kernel::build(&KernelSpec { name, fragment_path: &fragment }, source, &layout.cache_dir)
}

/// The guest kernel and its busybox initramfs, in `target/kvmos/guest/`;
/// and the demo guest as the appliance bundles it, in
/// `target/kvmos/guests/demo/` (with its `guest.json`), for a panel run on
/// a development host with `--guests-dir target/kvmos/guests`.
fn demo_guest(layout: &Layout, kernel: &BuiltKernel) -> Result<(PathBuf, PathBuf)> {
    let dir = layout.out_dir.join("guest");
    let bz = dir.join("bzImage");
    copy_atomic(&kernel.bz_image, &bz)?;
    let cpio = guest::initramfs(Path::new("/bin/busybox"))?.to_cpio();
    let initrd = dir.join("initramfs.cpio.zst");
    write_atomic(&initrd, &initramfs::compress(&cpio)?)?;
    let bundled = layout.out_dir.join("guests/demo");
    copy_atomic(&bz, &bundled.join("bzImage"))?;
    copy_atomic(&initrd, &bundled.join("initramfs.cpio.zst"))?;
    let mut descriptor = serde_json::to_vec_pretty(&guest::descriptor())?;
    descriptor.push(b'\n');
    write_atomic(&bundled.join("guest.json"), &descriptor)?;
    Ok((bz, initrd))
}

struct InitramfsResult {
    cpio_sha256: String,
}

/// The appliance's initramfs. Recompression (the slow part) is skipped when
/// the archive's content is unchanged since the last build.
fn write_initramfs(
    layout: &Layout,
    bins: &Binaries,
    guest_kernel: &Path,
    guest_initrd: &Path,
    firmware: &[firmware::Firmware],
) -> Result<InitramfsResult> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let mut a = Archive::new();
    a.file("/init", 0o755, read(&bins.init)?)?;
    a.file("/usr/bin/kvmos-vmm", 0o755, read(&bins.vmm)?)?;
    a.file("/usr/bin/kvmos-webadmin", 0o755, read(&bins.webadmin)?)?;
    a.file(&format!("{DEMO_GUEST_DIR}/bzImage"), 0o644, read(guest_kernel)?)?;
    a.file(&format!("{DEMO_GUEST_DIR}/initramfs.cpio.zst"), 0o644, read(guest_initrd)?)?;
    let mut descriptor = serde_json::to_vec_pretty(&guest::descriptor())?;
    descriptor.push(b'\n');
    a.file(&format!("{DEMO_GUEST_DIR}/guest.json"), 0o644, descriptor)?;
    for f in firmware {
        a.file(&format!("{}/{}", firmware::DIR, f.entry.file), 0o644, f.data.clone())?;
    }
    let mut libs = std::collections::BTreeSet::new();
    for (name, dest) in host_programs::E2FSPROGS {
        host_programs::add(&mut a, &mut libs, &host_programs::locate(name)?, dest)?;
    }
    if Path::new("/etc/mke2fs.conf").is_file() {
        a.file("/etc/mke2fs.conf", 0o644, read(Path::new("/etc/mke2fs.conf"))?)?;
    }
    a.file("/usr/share/kvmos/version", 0o644, version_text(&layout.repo).into_bytes())?;
    for d in ["/proc", "/sys", "/dev", "/run", "/tmp", "/etc", "/root", "/var/lib/kvmos", "/var/log"] {
        a.dir(d, 0o755)?;
    }
    a.dir("/tmp", 0o1777)?;
    // The kernel opens /dev/console for PID 1 before anything mounts devtmpfs.
    a.char_dev("/dev/console", 0o600, 5, 1)?;
    let cpio = a.to_cpio();
    let cpio_sha256 = sha256_hex(&[&cpio]);
    let out = layout.initramfs();
    let previous = Manifest::read(&layout.manifest());
    let unchanged = previous.as_ref().is_some_and(|m| {
        m.initramfs_cpio_sha256 == cpio_sha256
            && m.file("initramfs.cpio.zst")
                .is_some_and(|f| crate::util::sha256_file(&out).map(|h| h == f.sha256).unwrap_or(false))
    });
    if unchanged {
        eprintln!("    unchanged since the last build ({} entries)", a.len());
    } else {
        eprintln!(
            "    {} entries, {} uncompressed; compressing with zstd -{}",
            a.len(),
            human_size(cpio.len() as u64),
            initramfs::ZSTD_LEVEL
        );
        write_atomic(&out, &initramfs::compress(&cpio)?)?;
    }
    Ok(InitramfsResult { cpio_sha256 })
}

/// `kvmos <version>` plus the git commit when built from a git checkout.
fn version_text(repo: &Path) -> String {
    match git_commit(repo) {
        Some(c) => format!("kvmos {VERSION}\ncommit {c}\n"),
        None => format!("kvmos {VERSION}\n"),
    }
}

fn git_commit(repo: &Path) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(repo).args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn write_disk_image(layout: &Layout, efi_kernel: &Path, data_size: Option<u64>) -> Result<()> {
    let spec = DiskSpec {
        efi_kernel,
        extra_files: vec![("kvmos/version".into(), version_text(&layout.repo).into_bytes())],
        data_size,
    };
    let l = disk::write_image(&layout.disk_image(), &spec)?;
    eprintln!(
        "    ESP {}{}",
        human_size(l.esp.1),
        l.data.map(|(_, s)| format!(", {} partition {}", disk::DATA_LABEL, human_size(s))).unwrap_or_default()
    );
    Ok(())
}

/// The command line built into the host kernel (CONFIG_CMDLINE).
pub fn builtin_cmdline(layout: &Layout) -> Result<String> {
    let path = layout.repo.join("kernel-config/host.config");
    let text = std::fs::read_to_string(&path)?;
    let settings = kconfig::parse_fragment(&path.display().to_string(), &text)?;
    Ok(settings.into_iter().find(|s| s.name == "CMDLINE").map(|s| s.value.to_string()).unwrap_or_default())
}

fn write_manifest(layout: &Layout, cpio_sha256: String, firmware: Vec<firmware::FirmwareEntry>) -> Result<Manifest> {
    let files = [layout.bz_image(), layout.initramfs(), layout.disk_image()]
        .iter()
        .map(|p| FileEntry::of(p))
        .collect::<Result<Vec<_>>>()?;
    let m = Manifest {
        version: VERSION.to_string(),
        commit: git_commit(&layout.repo),
        files,
        initramfs_cpio_sha256: cpio_sha256,
        kernel_cmdline: builtin_cmdline(layout)?,
        firmware,
    };
    m.write(&layout.manifest())?;
    Ok(m)
}

fn print_summary(m: &Manifest, layout: &Layout) {
    eprintln!("==> outputs in {}:", layout.out_dir.display());
    for f in &m.files {
        eprintln!("    {:<20} {:>10}  sha256 {}", f.name, human_size(f.bytes), &f.sha256[..16]);
    }
}
