//! Reproducible initramfs archives: cpio "newc" written with the `cpio` crate,
//! compressed with the `zstd` crate.
//!
//! The same entries always give the same bytes: entries are sorted by path,
//! parents are created implicitly before children, inode numbers follow that
//! order, and every entry has mtime 0 and owner root. That lets the manifest
//! checksum identify an image and lets a rebuild skip an unchanged archive.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::{self, Write};

/// The zstd level: initramfs bytes are read at every boot and the kernel's
/// decompression speed hardly depends on the level, so favour size. Level 19
/// keeps the window at 8 MiB, which the kernel's decompressor accepts.
pub const ZSTD_LEVEL: i32 = 19;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir { perm: u32 },
    File { perm: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDev { perm: u32, major: u32, minor: u32 },
}

/// An archive under construction. Paths are absolute (`/init`) or relative;
/// both mean the same place in the archive.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    nodes: BTreeMap<String, Node>,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn dir(&mut self, path: &str, perm: u32) -> Result<&mut Self> {
        self.insert(path, Node::Dir { perm })
    }

    pub fn file(&mut self, path: &str, perm: u32, data: Vec<u8>) -> Result<&mut Self> {
        if u32::try_from(data.len()).is_err() {
            bail!("{path} is {} bytes; a cpio newc entry holds at most 4 GiB", data.len());
        }
        self.insert(path, Node::File { perm, data })
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self> {
        self.insert(path, Node::Symlink { target: target.to_string() })
    }

    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> Result<&mut Self> {
        self.insert(path, Node::CharDev { perm, major, minor })
    }

    fn insert(&mut self, path: &str, node: Node) -> Result<&mut Self> {
        let path = normalise(path)?;
        // Parents become directories unless they were added explicitly.
        let mut parent = String::new();
        for part in path.split('/').take(path.split('/').count() - 1) {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            match self.nodes.get(&parent) {
                None => {
                    self.nodes.insert(parent.clone(), Node::Dir { perm: 0o755 });
                }
                Some(Node::Dir { .. }) => {}
                Some(_) => bail!("cannot add {path}: {parent} is not a directory"),
            }
        }
        if let Some(old) = self.nodes.get(&path) {
            let both_dirs = matches!((old, &node), (Node::Dir { .. }, Node::Dir { .. }));
            if !both_dirs {
                bail!("{path} is added twice");
            }
        }
        self.nodes.insert(path, node);
        Ok(self)
    }

    /// The number of entries (directories included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Writes the uncompressed newc archive.
    pub fn write_cpio<W: Write>(&self, mut out: W) -> io::Result<W> {
        for (index, (path, node)) in self.nodes.iter().enumerate() {
            let ino = index as u32 + 1;
            let builder = cpio::newc::Builder::new(path).ino(ino).uid(0).gid(0).mtime(0);
            let (builder, data): (_, &[u8]) = match node {
                Node::Dir { perm } => (builder.mode(S_IFDIR | perm).nlink(2), &[]),
                Node::File { perm, data } => (builder.mode(S_IFREG | perm).nlink(1), data),
                Node::Symlink { target } => (builder.mode(S_IFLNK | 0o777).nlink(1), target.as_bytes()),
                Node::CharDev { perm, major, minor } => {
                    (builder.mode(S_IFCHR | perm).nlink(1).rdev_major(*major).rdev_minor(*minor), &[])
                }
            };
            let mut w = builder.write(out, data.len() as u32);
            w.write_all(data)?;
            out = w.finish()?;
        }
        cpio::newc::trailer(out)
    }

    /// The uncompressed archive in memory.
    pub fn to_cpio(&self) -> Vec<u8> {
        // Writing to a Vec cannot fail.
        self.write_cpio(Vec::new()).unwrap_or_default()
    }
}

/// zstd-compresses an archive (single-threaded, so the output depends only on
/// the input).
pub fn compress(cpio: &[u8]) -> Result<Vec<u8>> {
    zstd::bulk::compress(cpio, ZSTD_LEVEL).context("zstd compression of the initramfs failed")
}

fn normalise(path: &str) -> Result<String> {
    let trimmed = path.trim_start_matches('/').trim_end_matches('/');
    if trimmed.is_empty() || trimmed.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
        bail!("bad path in the initramfs: {path:?}");
    }
    Ok(trimmed.to_string())
}

/// Reads a newc archive back into (path, mode, data) triples; used by tests
/// and by `kvmos-image` to list an image's contents.
pub fn list(cpio: &[u8]) -> Result<Vec<(String, u32, Vec<u8>)>> {
    let mut rest = cpio;
    let mut out = Vec::new();
    loop {
        let mut reader = cpio::newc::Reader::new(rest).context("bad cpio entry")?;
        if reader.entry().is_trailer() {
            break;
        }
        let name = reader.entry().name().to_string();
        let mode = reader.entry().mode();
        let mut data = Vec::new();
        io::copy(&mut reader, &mut data)?;
        rest = reader.finish()?;
        out.push((name, mode, data));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(order: &[usize]) -> Archive {
        let mut a = Archive::new();
        for &i in order {
            match i {
                0 => a.file("/init", 0o755, b"#!/bin/sh\n".to_vec()).unwrap(),
                1 => a.file("/usr/share/kvmos/version", 0o644, b"0.1.0\n".to_vec()).unwrap(),
                2 => a.char_dev("/dev/console", 0o600, 5, 1).unwrap(),
                3 => a.symlink("/bin/sh", "busybox").unwrap(),
                _ => a.dir("/proc", 0o555).unwrap(),
            };
        }
        a
    }

    #[test]
    fn same_entries_in_any_order_give_identical_bytes() {
        let a = compress(&sample(&[0, 1, 2, 3, 4]).to_cpio()).unwrap();
        let b = compress(&sample(&[4, 3, 2, 1, 0]).to_cpio()).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn round_trips_with_parents_first_and_fixed_metadata() {
        let cpio = sample(&[0, 1, 2, 3, 4]).to_cpio();
        let entries = list(&cpio).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "proc",
                "usr",
                "usr/share",
                "usr/share/kvmos",
                "usr/share/kvmos/version"
            ]
        );
        let init = entries.iter().find(|e| e.0 == "init").unwrap();
        assert_eq!(init.1, S_IFREG | 0o755);
        assert_eq!(init.2, b"#!/bin/sh\n");
        let link = entries.iter().find(|e| e.0 == "bin/sh").unwrap();
        assert_eq!(link.2, b"busybox");
        let reader = cpio::newc::Reader::new(&cpio[..]).unwrap();
        assert_eq!(reader.entry().mtime(), 0);
        assert_eq!(reader.entry().uid(), 0);
        assert_eq!(reader.entry().ino(), 1);
    }

    #[test]
    fn rejects_conflicts_and_bad_paths() {
        let mut a = Archive::new();
        a.file("/etc/x", 0o644, vec![]).unwrap();
        assert!(a.file("/etc/x", 0o644, vec![]).is_err());
        assert!(a.file("/etc/x/y", 0o644, vec![]).is_err(), "a file cannot be a parent");
        assert!(a.file("/a/../b", 0o644, vec![]).is_err());
        assert!(a.file("/", 0o644, vec![]).is_err());
    }
}
