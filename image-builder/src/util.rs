//! Small helpers shared by the build steps: atomic output files, hashing,
//! running host commands with a readable error, and step timing.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A file being written next to its final path. Until [`AtomicFile::commit`]
/// renames it into place, a reader of the final path sees the old file (or
/// none), never a half-written one; dropping it uncommitted removes it.
pub struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<File>,
}

impl AtomicFile {
    pub fn create(dest: &Path) -> Result<Self> {
        let dir = dest.parent().context("output path has no parent folder")?;
        fs::create_dir_all(dir).with_context(|| format!("cannot create folder {}", dir.display()))?;
        let name = dest.file_name().context("output path has no file name")?.to_string_lossy();
        let tmp = dir.join(format!(".{name}.partial-{}", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        Ok(Self { tmp, dest: dest.to_path_buf(), file: Some(file) })
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("AtomicFile used after commit")
    }

    /// Flushes the data to disk and renames the file over `dest`.
    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take().expect("AtomicFile committed twice");
        file.sync_all().map_err(disk_error).with_context(|| format!("cannot write {}", self.tmp.display()))?;
        drop(file);
        fs::rename(&self.tmp, &self.dest).with_context(|| format!("cannot move {} into place", self.dest.display()))?;
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file().flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `data` to `dest` atomically.
pub fn write_atomic(dest: &Path, data: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(dest)?;
    f.write_all(data).map_err(disk_error).with_context(|| format!("cannot write {}", dest.display()))?;
    f.commit()
}

/// Copies `src` to `dest` atomically.
pub fn copy_atomic(src: &Path, dest: &Path) -> Result<()> {
    let mut input = File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
    let mut f = AtomicFile::create(dest)?;
    io::copy(&mut input, f.file()).map_err(disk_error).with_context(|| format!("cannot write {}", dest.display()))?;
    f.commit()
}

/// Turns ENOSPC into an error that says what to do about it.
pub fn disk_error(e: io::Error) -> anyhow::Error {
    if e.raw_os_error() == Some(28) {
        anyhow::anyhow!(
            "the disk is full ({e}): free some space (the kernel cache alone needs about 3 GiB) and run again"
        )
    } else {
        e.into()
    }
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

pub fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// Runs a command to completion, failing with its output if it fails.
pub fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Prints a step's start, runs it, and prints how long it took.
pub fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    eprintln!("==> {name}");
    let start = Instant::now();
    let r = f().with_context(|| format!("step `{name}` failed"));
    if r.is_ok() {
        eprintln!("    {name}: done in {}", human_duration(start.elapsed()));
    }
    r
}

pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1} s")
    } else {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    }
}

pub fn human_size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

/// Holds an exclusive `flock` on a file for as long as it lives, so two
/// builds (two test threads, a test and a developer) never write the same
/// cache entry or output at once.
pub struct LockFile(#[allow(dead_code)] File);

impl LockFile {
    pub fn acquire(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open lock {}", path.display()))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(Self(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_file_leaves_old_content_until_commit() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        fs::write(&dest, b"old").unwrap();
        {
            let mut f = AtomicFile::create(&dest).unwrap();
            f.write_all(b"new but abandoned").unwrap();
            assert_eq!(fs::read(&dest).unwrap(), b"old");
        }
        assert_eq!(fs::read(&dest).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "the partial file is removed");
        write_atomic(&dest, b"new").unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"new");
    }
}
