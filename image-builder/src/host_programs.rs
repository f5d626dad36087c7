//! Host programs copied into the initramfs with the shared libraries they
//! need (found with `ldd`), for the few jobs no Rust crate does: making and
//! checking ext4 on the data disk (e2fsprogs' mke2fs and e2fsck).

use crate::initramfs::Archive;
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The e2fsprogs programs kvmos-init uses, and where it expects them.
pub const E2FSPROGS: &[(&str, &str)] = &[("mke2fs", "/usr/sbin/mke2fs"), ("e2fsck", "/usr/sbin/e2fsck")];

/// Finds a program in the usual system folders.
pub fn locate(name: &str) -> Result<PathBuf> {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{name} is not installed on this machine: apt-get install e2fsprogs")
}

/// The shared objects `ldd` lists for a program, the loader included.
pub fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(program).output().context("cannot run ldd (package libc-bin)")?;
    if !out.status.success() {
        bail!("ldd {} failed: {}", program.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    let mut libs = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libs.insert(PathBuf::from(path));
        }
    }
    libs.into_iter().collect()
}

/// Adds `program` at `dest` and its libraries at their own paths.
pub fn add(archive: &mut Archive, added_libs: &mut BTreeSet<PathBuf>, program: &Path, dest: &str) -> Result<()> {
    let bytes = std::fs::read(program).with_context(|| format!("cannot read {}", program.display()))?;
    archive.file(dest, 0o755, bytes)?;
    for lib in shared_libraries(program)? {
        if added_libs.insert(lib.clone()) {
            // Follow symlinks: the archive holds the library under the name
            // the loader asks for.
            let bytes = std::fs::read(&lib).with_context(|| format!("cannot read {}", lib.display()))?;
            archive.file(&lib.to_string_lossy(), 0o755, bytes)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_is_parsed() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibext2fs.so.2 => /lib/x86_64-linux-gnu/libext2fs.so.2 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        let libs = parse_ldd(text);
        assert_eq!(
            libs,
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib/x86_64-linux-gnu/libext2fs.so.2"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn a_real_program_brings_its_loader_and_libc() {
        let mke2fs = locate("mke2fs").unwrap();
        let libs = shared_libraries(&mke2fs).unwrap();
        assert!(libs.iter().any(|l| l.to_string_lossy().contains("ld-linux")), "{libs:?}");
        assert!(libs.iter().any(|l| l.to_string_lossy().contains("libc.so")), "{libs:?}");
        let mut a = Archive::new();
        add(&mut a, &mut BTreeSet::new(), &mke2fs, "/usr/sbin/mke2fs").unwrap();
        assert!(a.len() > libs.len());
    }
}
