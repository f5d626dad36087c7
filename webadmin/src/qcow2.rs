//! qcow2 disk images, converted to the sparse raw disks kvmos-vmm reads.
//!
//! Cloud images come as qcow2. A VM must never see a qcow2 file's metadata
//! as its sectors, so an uploaded qcow2 is checked and converted before it
//! becomes a disk. The format itself is read by `imago` (written by QEMU's
//! block-layer maintainer; it follows QEMU's qcow2 code, reads v2 and v3,
//! zlib-compressed clusters, and refuses backing files when asked). What
//! imago would only report as an I/O error is checked here first, so the
//! admin gets a message that says what to do: backing files, external data
//! files, encryption, zstd compression, clusters beyond the end of the file.

use imago::file::File;
use imago::qcow2::Qcow2;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, Mapping, Storage, StorageOpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The qcow2 magic, `QFI\xfb`.
pub const MAGIC: &[u8; 4] = b"QFI\xfb";
/// The largest disk kvmos makes, converted or empty.
pub const MAX_SIZE: u64 = 16 << 40;
/// How much is read and written at a time.
const CHUNK: u64 = 4 << 20;

/// Why a qcow2 file cannot become a disk; the text is for the admin.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    #[error("{0}")]
    Refused(String),
    #[error("the qcow2 image is damaged: {0}")]
    Corrupt(String),
    #[error("the disk could not be written: {0}")]
    Write(#[from] std::io::Error),
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// Reads and checks the header: everything that would make the conversion
/// wrong or impossible is refused here with what to do about it. Returns
/// the disk's (virtual) size.
pub fn read_header(path: &Path) -> Result<u64, Qcow2Error> {
    let file = std::fs::File::open(path)?;
    let mut h = [0u8; 112];
    let n = file.read_at(&mut h, 0)?;
    if n < 72 || &h[..4] != MAGIC {
        return Err(Qcow2Error::Corrupt("the file is too short for a qcow2 header".into()));
    }
    let version = be32(&h, 4);
    if version != 2 && version != 3 {
        return Err(Qcow2Error::Refused(format!("qcow2 version {version} is not supported (only 2 and 3 are)")));
    }
    if be64(&h, 8) != 0 {
        let (off, len) = (be64(&h, 8), be32(&h, 16).min(1023) as usize);
        let mut name = vec![0u8; len];
        let _ = file.read_at(&mut name, off);
        return Err(Qcow2Error::Refused(format!(
            "this qcow2 image has a backing file ({:?}), so it is only the difference to another image; \
             make it self-contained first: qemu-img convert -O qcow2 in.qcow2 out.qcow2",
            String::from_utf8_lossy(&name)
        )));
    }
    let cluster_bits = be32(&h, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(Qcow2Error::Corrupt(format!("cluster size 2^{cluster_bits} is out of range")));
    }
    let virtual_size = be64(&h, 24);
    if virtual_size == 0 || virtual_size > MAX_SIZE {
        return Err(Qcow2Error::Refused(format!(
            "its disk size, {} MiB, is outside 1 MiB to 16 TiB",
            virtual_size >> 20
        )));
    }
    if be32(&h, 32) != 0 {
        return Err(Qcow2Error::Refused(
            "this qcow2 image is encrypted; decrypt it first (qemu-img convert with --object secret)".into(),
        ));
    }
    if version == 3 {
        let incompatible = be64(&h, 72);
        if incompatible & (1 << 2) != 0 {
            return Err(Qcow2Error::Refused(
                "this qcow2 image keeps its data in an external file; convert it to a plain qcow2 or raw image first"
                    .into(),
            ));
        }
        let header_length = be32(&h, 100) as usize;
        if incompatible & (1 << 3) != 0 && header_length > 104 && n > 104 && h[104] != 0 {
            return Err(Qcow2Error::Refused(
                "this qcow2 image is compressed with zstd, which kvmos does not read; recompress it with zlib: \
                 qemu-img convert -O qcow2 -c -o compression_type=zlib in.qcow2 out.qcow2"
                    .into(),
            ));
        }
    }
    Ok(virtual_size)
}

/// How a conversion went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Converted {
    pub virtual_size: u64,
    /// The guest data that was not zero (what the raw file takes on disk).
    pub data_bytes: u64,
}

/// Converts the qcow2 image at `src` to a sparse raw disk at `dst`
/// (created; removed again on any error). `free` is the room on the data
/// disk: an image with more data than that is refused before a byte is
/// written. `progress(done, total)` follows the guest offset.
pub async fn convert_to_raw(
    src: &Path,
    dst: &Path,
    free: u64,
    mut progress: impl FnMut(u64, u64),
) -> Result<Converted, Qcow2Error> {
    let size = read_header(src)?;
    // The file is opened here, so the gate can refuse everything the image
    // itself would open (a backing image, an external data file).
    let file = File::open(StorageOpenOptions::new().filename(src).write(false)).await?;
    let image = Qcow2::<File>::builder(file)
        .write(false)
        .open(DenyImplicitOpenGate::default())
        .await
        .map_err(|e| Qcow2Error::Corrupt(e.to_string()))?;
    let image = FormatAccess::new(image);
    let file_len = std::fs::metadata(src)?.len();

    // First pass, metadata only: where the data is, that it lies inside the
    // file, and whether it fits.
    let mut extents = Vec::new();
    let mut offset = 0;
    while offset < size {
        let (mapping, len) =
            image.get_mapping(offset, size - offset).await.map_err(|e| Qcow2Error::Corrupt(e.to_string()))?;
        let len = len.min(size - offset);
        match mapping {
            Mapping::Zero { .. } => {}
            Mapping::Raw { offset: host, .. } => {
                if host.saturating_add(len) > file_len {
                    return Err(Qcow2Error::Corrupt(format!(
                        "data at disk offset {offset} lies beyond the end of the file (host offset {host}, file {file_len} bytes): \
                         the file is truncated, download or copy it again"
                    )));
                }
                extents.push(Extent { guest: offset, len, host: Some(host) });
            }
            Mapping::Special { .. } => extents.push(Extent { guest: offset, len, host: None }),
            Mapping::Eof { .. } => break,
            _ => return Err(Qcow2Error::Corrupt(format!("unknown mapping at disk offset {offset}"))),
        }
        if len == 0 {
            break;
        }
        offset += len;
    }
    let data: u64 = extents.iter().map(|e| e.len).sum();
    if data > free {
        return Err(Qcow2Error::Refused(format!(
            "its {} MiB of data do not fit: {} MiB are free on the data disk",
            data >> 20,
            free >> 20
        )));
    }

    let src_file = std::fs::File::open(src)?;
    let result = copy_extents(&image, &src_file, &extents, dst, size, data, &mut progress).await;
    if result.is_err() {
        let _ = std::fs::remove_file(dst);
    }
    let data_bytes = result?;
    Ok(Converted { virtual_size: size, data_bytes })
}

/// A stretch of the disk that holds data.
struct Extent {
    guest: u64,
    len: u64,
    /// Where it lies in the qcow2 file when stored as it is; `None` when
    /// imago must decode it (compressed clusters).
    host: Option<u64>,
}

/// Second pass: reads the data extents and writes what is not zero; the rest
/// of the raw file stays a hole. Plain clusters are read straight from the
/// file (they were checked to lie inside it), compressed ones through imago.
async fn copy_extents(
    image: &FormatAccess<File>,
    src: &std::fs::File,
    extents: &[Extent],
    dst: &Path,
    size: u64,
    total: u64,
    progress: &mut impl FnMut(u64, u64),
) -> Result<u64, Qcow2Error> {
    let out = std::fs::OpenOptions::new().write(true).create_new(true).open(dst)?;
    out.set_len(size)?;
    let mut buf = Vec::new();
    let (mut done, mut written) = (0u64, 0u64);
    progress(0, total);
    for e in extents {
        let (start, len) = (e.guest, e.len);
        let mut at = start;
        while at < start + len {
            let n = CHUNK.min(start + len - at);
            buf.resize(n as usize, 0);
            match e.host {
                Some(host) => src.read_exact_at(&mut buf, host + (at - start))?,
                None => image
                    .read(&mut buf, at)
                    .await
                    .map_err(|e| Qcow2Error::Corrupt(format!("at disk offset {at}: {e}")))?,
            }
            if buf.iter().any(|&b| b != 0) {
                out.write_all_at(&buf, at)?;
                written += n;
            }
            at += n;
            done += n;
            progress(done, total);
        }
    }
    out.sync_all()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn qemu_img(args: &[&str]) {
        let out = Command::new("qemu-img").args(args).output().expect("qemu-img (package qemu-utils)");
        assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A raw disk with a pattern in a few places and holes between them.
    fn pattern_disk(path: &Path, size: u64) -> Vec<(u64, Vec<u8>)> {
        let f = std::fs::File::create(path).unwrap();
        f.set_len(size).unwrap();
        let pieces: Vec<(u64, Vec<u8>)> = [(0u64, 512usize), (1 << 20, 70_000), (size - 4096, 4096)]
            .iter()
            .map(|&(at, n)| (at, (0..n).map(|i| (i as u64 * 7 + at) as u8 | 1).collect()))
            .collect();
        for (at, bytes) in &pieces {
            f.write_all_at(bytes, *at).unwrap();
        }
        pieces
    }

    fn allocated(f: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(f).unwrap().blocks() * 512
    }

    #[tokio::test]
    async fn plain_and_compressed_images_convert_to_the_same_sparse_raw_disk() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("src.raw");
        let size = 64 << 20;
        pattern_disk(&raw, size);
        for (name, extra) in [("v3.qcow2", vec![]), ("v2.qcow2", vec!["-o", "compat=0.10"]), ("z.qcow2", vec!["-c"])] {
            let q = dir.path().join(name);
            let mut args = vec!["convert", "-O", "qcow2"];
            args.extend(extra);
            args.extend([raw.to_str().unwrap(), q.to_str().unwrap()]);
            qemu_img(&args);
            let out = dir.path().join(format!("{name}.img"));
            let mut last = (0, 0);
            let c = convert_to_raw(&q, &out, u64::MAX, |d, t| last = (d, t)).await.unwrap();
            assert_eq!(c.virtual_size, size, "{name}");
            assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&raw).unwrap(), "{name}: same bytes");
            assert_eq!(last.0, last.1, "{name}: progress reaches the total");
            assert!(allocated(&out) < 4 << 20, "{name}: the raw disk is sparse ({} bytes allocated)", allocated(&out));
        }
    }

    #[tokio::test]
    async fn images_that_cannot_be_disks_are_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let s = |p: &std::path::PathBuf| p.to_str().unwrap().to_string();
        qemu_img(&["create", "-f", "qcow2", &s(&p("base.qcow2")), "16M"]);
        qemu_img(&["create", "-f", "qcow2", "-F", "qcow2", "-b", &s(&p("base.qcow2")), &s(&p("top.qcow2"))]);
        let e = convert_to_raw(&p("top.qcow2"), &p("top.img"), u64::MAX, |_, _| {}).await.unwrap_err();
        assert!(e.to_string().contains("backing file") && e.to_string().contains("qemu-img convert"), "{e}");
        assert!(!p("top.img").exists(), "nothing written");

        // Truncated: the data clusters are cut off.
        pattern_disk(&p("src.raw"), 16 << 20);
        qemu_img(&["convert", "-O", "qcow2", &s(&p("src.raw")), &s(&p("cut.qcow2"))]);
        let len = std::fs::metadata(p("cut.qcow2")).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(p("cut.qcow2")).unwrap().set_len(len - 40_000).unwrap();
        let e = convert_to_raw(&p("cut.qcow2"), &p("cut.img"), u64::MAX, |_, _| {}).await.unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        assert!(!p("cut.img").exists());

        // Corrupt: the header's L1 table offset is not on a cluster.
        qemu_img(&["convert", "-O", "qcow2", &s(&p("src.raw")), &s(&p("bad.qcow2"))]);
        let f = std::fs::OpenOptions::new().read(true).write(true).open(p("bad.qcow2")).unwrap();
        let mut h = [0u8; 48];
        f.read_at(&mut h, 0).unwrap();
        f.write_all_at(&(be64(&h, 40) + 8).to_be_bytes(), 40).unwrap();
        let e = convert_to_raw(&p("bad.qcow2"), &p("bad.img"), u64::MAX, |_, _| {}).await.unwrap_err();
        assert!(matches!(e, Qcow2Error::Corrupt(_)), "{e}");
        assert!(!p("bad.img").exists());

        // More data than the data disk has room for.
        qemu_img(&["convert", "-O", "qcow2", &s(&p("src.raw")), &s(&p("fits.qcow2"))]);
        let e = convert_to_raw(&p("fits.qcow2"), &p("fits.img"), 4096, |_, _| {}).await.unwrap_err();
        assert!(e.to_string().contains("do not fit"), "{e}");
        assert!(!p("fits.img").exists());

        // Too large a disk, and not a qcow2 at all.
        qemu_img(&["create", "-f", "qcow2", &s(&p("huge.qcow2")), "17T"]);
        let e = read_header(&p("huge.qcow2")).unwrap_err();
        assert!(e.to_string().contains("16 TiB"), "{e}");
        std::fs::write(p("text"), b"QFI\xfbshort").unwrap();
        assert!(matches!(read_header(&p("text")).unwrap_err(), Qcow2Error::Corrupt(_)));
    }
}
