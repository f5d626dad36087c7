//! The L0 QEMU for nested runs whose L2 guest is 64-bit UEFI firmware.
//!
//! Debian's QEMU (7.2, and 10.0 from backports alike) aborts under TCG
//! with `tcg_handle_interrupt: assertion failed` when a guest two levels
//! down writes CR8 while its hypervisor (the appliance's KVM) has a
//! virtual interrupt pending: the CR8 helper raises the interrupt without
//! the big QEMU lock. OVMF writes CR8 in every interrupt handler, so an
//! OVMF guest in kvmos-vmm, nested under TCG, brings the L0 down within
//! minutes. SeaBIOS and Linux never write CR8.
//!
//! This is the emulator under the test failing, not the code under test,
//! so the nested UEFI tests run on the same QEMU with that one helper
//! fixed (`l0-qemu/cr8-bql.patch`, which takes the lock around the
//! interrupt request): the source of the installed `qemu-system-x86`
//! package, fetched with `apt-get source` from the system's own Debian
//! archives (signatures checked by apt), patched, and built once with only
//! the x86_64 system emulator and what the tests use (TCG, user
//! networking). The binary is cached in `~/.cache/kvmos/qemu-l0/`, keyed
//! by the package's source version, the patch and the configuration, and
//! runs with the installed package's firmware and option ROMs.
//!
//! It is test equipment, never part of the appliance.

use anyhow::{bail, Context, Result};
use kvmos_image_builder::qemu::Emulator;
use kvmos_image_builder::util::{sha256_hex, LockFile};
use kvmos_image_builder::Layout;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The fix, applied with `patch -p1` to the package's source.
const PATCH: &str = include_str!("../l0-qemu/cr8-bql.patch");

/// Only the x86_64 system emulator, with TCG and user networking (the
/// appliance tests forward the panel's port through it); no UI, no docs.
/// It loads firmware and option ROMs from where Debian's package does
/// (qemu-system-data, seabios, ipxe-qemu).
const CONFIGURE: &[&str] = &[
    "--target-list=x86_64-softmmu",
    "--firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu",
    "--without-default-features",
    "--enable-tcg",
    "--enable-slirp",
    "--enable-fdt=system",
    "--disable-werror",
    "--disable-docs",
];

/// The patched QEMU, for
/// [`QemuOptions::emulator`](kvmos_image_builder::qemu::QemuOptions).
pub fn emulator() -> Result<Emulator> {
    Ok(Emulator { program: binary()? })
}

/// The patched QEMU, built first if needed (about a quarter of an hour on
/// two cores, once per package version).
pub fn binary() -> Result<PathBuf> {
    let version = installed_source_version()?;
    let key = sha256_hex(&[version.as_bytes(), PATCH.as_bytes(), CONFIGURE.join(" ").as_bytes(), b"l0 v1"]);
    let dir = Layout::this_checkout().cache_dir.join("qemu-l0");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join(format!("qemu-system-x86_64-{}", &key[..16]));
    let _lock = LockFile::acquire(&dir.join("build.lock"))?;
    if out.is_file() {
        return Ok(out);
    }
    let work = dir.join(format!("work-{}", &key[..16]));
    let started = std::time::Instant::now();
    eprintln!(
        "==> building the L0 QEMU for nested UEFI runs (qemu {version} + cr8-bql.patch; once, cached as {})",
        out.display()
    );
    let result = build(&version, &work, &out);
    let _ = std::fs::remove_dir_all(&work);
    result?;
    eprintln!("    built in {:.0} s", started.elapsed().as_secs_f64());
    Ok(out)
}

/// The source version of the installed `qemu-system-x86` (a binary
/// rebuild such as `+b2` has the same source).
fn installed_source_version() -> Result<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${source:Version}", "qemu-system-x86"])
        .output()
        .context("cannot run dpkg-query")?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || version.is_empty() {
        bail!("the package qemu-system-x86 is not installed (the test command installs it)");
    }
    Ok(version)
}

fn run(cmd: &mut Command) -> Result<()> {
    kvmos_image_builder::util::run(cmd).map(drop)
}

fn build(version: &str, work: &Path, out: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(work);
    let source = fetch_source(version, work)?;
    let mut patch = Command::new("patch");
    patch.args(["-p1", "--forward", "--quiet"]).current_dir(&source).stdin(std::process::Stdio::piped());
    let mut child = patch.spawn().context("cannot run patch (package patch)")?;
    use std::io::Write;
    child.stdin.take().context("patch's stdin")?.write_all(PATCH.as_bytes())?;
    if !child.wait()?.success() {
        bail!("cr8-bql.patch does not apply to qemu {version}: update qemu-test/l0-qemu/cr8-bql.patch");
    }
    let build = source.join("kvmos-build");
    std::fs::create_dir_all(&build)?;
    run(Command::new(source.join("configure")).args(CONFIGURE).current_dir(&build))?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get()).to_string();
    run(Command::new("ninja").args(["-j", &jobs, "qemu-system-x86_64"]).current_dir(&build))?;
    kvmos_image_builder::util::copy_atomic(&build.join("qemu-system-x86_64"), out)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// `apt-get source qemu=VERSION` from the deb-src twins of the system's
/// own Debian archives, with apt's state kept in `work` (the system's
/// package lists are not touched). Returns the unpacked, Debian-patched
/// source tree.
fn fetch_source(version: &str, work: &Path) -> Result<PathBuf> {
    let parts = work.join("apt/sources");
    let lists = work.join("apt/lists");
    let cache = work.join("apt/cache");
    for d in [&parts, &lists.join("partial"), &cache.join("archives/partial")] {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(parts.join("kvmos-src.sources"), source_archives()?)?;
    let opts = [
        "-o".to_string(),
        "Dir::Etc::SourceList=/dev/null".into(),
        "-o".into(),
        format!("Dir::Etc::SourceParts={}", parts.display()),
        "-o".into(),
        format!("Dir::State::Lists={}", lists.display()),
        "-o".into(),
        format!("Dir::Cache={}", cache.display()),
    ];
    run(Command::new("apt-get").args(&opts).args(["update", "-qq"]))?;
    let src = work.join("src");
    std::fs::create_dir_all(&src)?;
    run(Command::new("apt-get").args(&opts).args(["source", "-qq", &format!("qemu={version}")]).current_dir(&src))?;
    let upstream = version.split_once(':').map_or(version, |(_, v)| v);
    let upstream = upstream.rsplit_once('-').map_or(upstream, |(u, _)| u);
    let tree = src.join(format!("qemu-{upstream}"));
    if !tree.join("configure").is_file() {
        bail!("apt-get source did not unpack {}", tree.display());
    }
    Ok(tree)
}

/// The system's Debian archives (deb822 `.sources` files and one-line
/// lists), as deb-src entries.
fn source_archives() -> Result<String> {
    let mut out = String::new();
    let dir = Path::new("/etc/apt/sources.list.d");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    files.push("/etc/apt/sources.list".into());
    files.sort();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else { continue };
        if f.extension().is_some_and(|e| e == "sources") {
            out.push_str(&deb822_sources(&text));
        } else {
            out.push_str(&one_line_sources(&text));
        }
    }
    if out.is_empty() {
        bail!("no Debian archive found in /etc/apt to fetch QEMU's source from");
    }
    Ok(out)
}

/// deb822 stanzas of Debian archives with `Types: deb` turned to deb-src.
fn deb822_sources(text: &str) -> String {
    text.split("\n\n")
        .filter(|s| s.lines().any(|l| l.starts_with("URIs:") && l.contains("debian.org")))
        .filter_map(|s| {
            let types = s.lines().find(|l| l.starts_with("Types:"))?;
            types.split_whitespace().any(|t| t == "deb").then(|| {
                let stanza: Vec<String> = s
                    .lines()
                    .map(|l| if l.starts_with("Types:") { "Types: deb-src".to_string() } else { l.to_string() })
                    .collect();
                format!("{}\n\n", stanza.join("\n"))
            })
        })
        .collect()
}

/// One-line `deb URI SUITE COMPONENTS` entries of Debian archives, as
/// deb822 deb-src stanzas.
fn one_line_sources(text: &str) -> String {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace().filter(|w| !w.starts_with('['));
            if words.next() != Some("deb") {
                return None;
            }
            let uri = words.next().filter(|u| u.contains("debian.org"))?;
            let suite = words.next()?;
            let components: Vec<&str> = words.collect();
            Some(format!("Types: deb-src\nURIs: {uri}\nSuites: {suite}\nComponents: {}\n\n", components.join(" ")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_archives_become_source_archives() {
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n\n\
                      Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\n";
        let s = deb822_sources(deb822);
        assert!(s.starts_with("Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm"), "{s}");
        assert!(!s.contains("nodesource"), "{s}");
        let line = "deb [arch=amd64] http://deb.debian.org/debian bookworm main contrib\n\
                    deb https://packages.cloud.google.com/apt cloud-sdk main\n# deb x y z\n";
        let s = one_line_sources(line);
        assert_eq!(
            s,
            "Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main contrib\n\n"
        );
    }
}
