//! Images: kernels, initrds, raw disks and ISOs under `images/` on the data disk,
//! each with a metadata file beside it. Uploads stream into a hidden
//! temporary file and appear under their name only once complete (fsync,
//! rename), so a partial upload is never an image. The bundled guests (the
//! demo guest) are listed too, read-only.

use crate::app::{ApiError, ApiResult};
use crate::download::{Checksum, Downloader};
use crate::qcow2;
use crate::store::{self, now_unix};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    Kernel,
    Initrd,
    /// A raw disk image (a whole disk with its partitions and boot loader).
    Disk,
    /// A CD/DVD image (ISO 9660); VMs get it read-only.
    Iso,
}

impl std::str::FromStr for ImageKind {
    type Err = ApiError;
    fn from_str(s: &str) -> Result<Self, ApiError> {
        match s {
            "kernel" => Ok(Self::Kernel),
            "initrd" => Ok(Self::Initrd),
            "disk" => Ok(Self::Disk),
            "iso" => Ok(Self::Iso),
            _ => Err(ApiError::bad("kind", "kind: use kernel, initrd, disk or iso")),
        }
    }
}

impl ImageKind {
    /// What the admin reads.
    pub fn label(self) -> &'static str {
        match self {
            Self::Kernel => "Linux kernel",
            Self::Initrd => "initrd",
            Self::Disk => "disk image",
            Self::Iso => "CD/DVD image (ISO 9660)",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Image {
    pub name: String,
    pub kind: ImageKind,
    pub size: u64,
    /// Of the uploaded bytes; absent for disks made empty here.
    pub sha256: Option<String>,
    /// The format the file came in when kvmos converted it (`qcow2`); the
    /// image itself is always raw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converted_from: Option<String>,
    /// The image this one is a copy of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloned_from: Option<String>,
    /// Unix seconds.
    pub created: u64,
}

/// A guest bundled with the appliance.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BundledGuest {
    pub name: String,
    pub description: String,
    pub kernel: String,
    pub initrd: String,
    pub cmdline: String,
    pub memory_mib: u64,
    pub vcpus: u16,
}

pub struct Images {
    dir: PathBuf,
    guests_dir: PathBuf,
    pub max_upload: u64,
    /// Downloads, conversions and clones, as the task list shows them.
    pub tasks: crate::tasks::Tasks,
    /// Names of images being made (uploads, downloads), so that two
    /// cannot make the same one.
    pending: Arc<Mutex<HashSet<String>>>,
    /// The client downloads go through, made again when the admin's
    /// certificate authorities change.
    downloader: Mutex<Arc<Downloader>>,
    data_dir: PathBuf,
}

/// A name taken for an image being made; given back when dropped.
pub struct Reservation {
    pending: Arc<Mutex<HashSet<String>>>,
    name: String,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.name);
    }
}

/// Names: 1 to 64 of `a-z 0-9 . _ -`, starting with a letter or digit.
pub fn check_name(field: &str, name: &str, max: usize) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(
            field,
            format!(
                "{field}: use 1 to {max} lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
            ),
        ))
    }
}

/// Free bytes on the file system holding `dir`.
pub fn free_space(dir: &Path) -> u64 {
    crate::host::fs_space(dir).0
}

impl Images {
    pub fn new(data_dir: &Path, guests_dir: &Path, max_upload: u64) -> anyhow::Result<Self> {
        let dir = data_dir.join("images");
        std::fs::create_dir_all(&dir)?;
        // Uploads cut short by a crash or restart.
        for e in std::fs::read_dir(&dir)?.flatten() {
            if e.file_name().to_string_lossy().starts_with(".upload-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Self {
            dir,
            guests_dir: guests_dir.to_path_buf(),
            max_upload,
            tasks: Default::default(),
            pending: Default::default(),
            downloader: Mutex::new(Arc::new(Downloader::new(&crate::download::load_trusted_ca(data_dir)))),
            data_dir: data_dir.to_path_buf(),
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A hidden temporary file for image `name` (removed at start if a
    /// crash left it), unique to this upload, download or copy.
    fn temp_path(&self, name: &str, suffix: &str) -> PathBuf {
        self.dir.join(format!(".upload-{name}-{}{suffix}", crate::auth::random_hex(4)))
    }

    fn meta_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.meta.json"))
    }

    pub fn get(&self, name: &str) -> Option<Image> {
        if check_name("name", name, 64).is_err() {
            return None;
        }
        store::load_json(&self.meta_path(name)).ok().flatten().filter(|_| self.path(name).exists())
    }

    pub fn list(&self) -> Vec<Image> {
        let mut out: Vec<Image> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".meta.json").map(String::from))
            .filter_map(|n| self.get(&n))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn guests(&self) -> Vec<BundledGuest> {
        let mut out: Vec<BundledGuest> = std::fs::read_dir(&self.guests_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| store::load_json::<BundledGuest>(&e.path().join("guest.json")).ok().flatten())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn guest(&self, name: &str) -> Option<BundledGuest> {
        self.guests().into_iter().find(|g| g.name == name)
    }

    /// The kernel and initrd paths of a bundled guest.
    pub fn guest_files(&self, g: &BundledGuest) -> (PathBuf, PathBuf) {
        let dir = self.guests_dir.join(&g.name);
        (dir.join(&g.kernel), dir.join(&g.initrd))
    }

    /// Checks that a new image `name` of `size` bytes (0: not known yet)
    /// can be made, and takes the name until the returned reservation is
    /// dropped.
    pub fn check_new(&self, name: &str, size: u64) -> ApiResult<Reservation> {
        check_name("name", name, 64)?;
        if name.ends_with(".meta.json") {
            return Err(ApiError::bad("name", "name: may not end in .meta.json"));
        }
        if self.path(name).exists() || self.meta_path(name).exists() {
            return Err(ApiError::field(409, "name", format!("name: an image called {name} already exists")));
        }
        let free = free_space(&self.dir);
        if size > free.saturating_sub(64 << 20) {
            return Err(ApiError::field(
                413,
                "size",
                format!("size: {} MiB does not fit; {} MiB are free on the data disk", size >> 20, free >> 20),
            ));
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if !pending.insert(name.to_string()) {
            return Err(ApiError::field(
                409,
                "name",
                format!("name: {name} is being made (an upload or download); wait for it"),
            ));
        }
        Ok(Reservation { pending: Arc::clone(&self.pending), name: name.into() })
    }

    /// Makes an empty (sparse) raw disk.
    pub fn create_disk(&self, name: &str, size_mib: u64) -> ApiResult<Image> {
        if size_mib == 0 || size_mib > qcow2::MAX_SIZE >> 20 {
            return Err(ApiError::bad("size_mib", "size_mib: give a size from 1 MiB to 16 TiB"));
        }
        let _name = self.check_new(name, 0)?;
        let tmp = self.temp_path(name, "");
        let f = std::fs::File::create(&tmp).map_err(ApiError::internal)?;
        f.set_len(size_mib << 20).and_then(|_| f.sync_all()).map_err(ApiError::internal)?;
        let image = Image {
            name: name.into(),
            kind: ImageKind::Disk,
            size: size_mib << 20,
            sha256: None,
            converted_from: None,
            cloned_from: None,
            created: now_unix(),
        };
        self.publish(&tmp, &image)?;
        Ok(image)
    }

    /// Makes a finished temporary file an image: metadata first, then the
    /// rename that makes it visible.
    fn publish(&self, tmp: &Path, image: &Image) -> ApiResult<()> {
        store::save_json(&self.meta_path(&image.name), image).map_err(ApiError::from)?;
        std::fs::rename(tmp, self.path(&image.name)).map_err(ApiError::internal)?;
        store::sync_dir(&self.dir).map_err(ApiError::from)
    }

    /// Streams an upload to disk. `declared` is the Content-Length when the
    /// client sent one, checked before a byte is written.
    pub async fn upload<S, E>(
        &self,
        name: &str,
        kind: ImageKind,
        declared: Option<u64>,
        mut body: S,
    ) -> ApiResult<Image>
    where
        S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use futures_util::StreamExt;
        let limit = self.max_upload;
        if declared.is_some_and(|d| d > limit) {
            return Err(ApiError::field(413, "file", format!("file: larger than the {} MiB limit", limit >> 20)));
        }
        let _name = self.check_new(name, declared.unwrap_or(0))?;
        let tmp = self.temp_path(name, "");
        let result = async {
            let mut f = tokio::fs::File::create(&tmp).await.map_err(ApiError::internal)?;
            let mut hash = Sha256::new();
            let mut size = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| ApiError::bad("file", format!("the upload was cut off: {e}")))?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(ApiError::field(
                        413,
                        "file",
                        format!("file: larger than the {} MiB limit", limit >> 20),
                    ));
                }
                hash.update(&chunk);
                f.write_all(&chunk).await.map_err(ApiError::internal)?;
            }
            f.sync_all().await.map_err(ApiError::internal)?;
            if size == 0 {
                return Err(ApiError::bad("file", "file: the upload is empty"));
            }
            self.accept(name, kind, &tmp, size, hex::encode(hash.finalize()), "file").await
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Downloads `url` into the new image `name` (taken by `reservation`),
    /// of `kind` or, if not given, the kind its content shows; checks it
    /// against `checksum`; reports to `task`. A failed download leaves
    /// nothing behind.
    pub async fn import(
        &self,
        _reservation: Reservation,
        kind: Option<ImageKind>,
        url: ureq::http::Uri,
        checksum: Option<Checksum>,
        task: &crate::tasks::Task,
    ) -> ApiResult<Image> {
        let name = _reservation.name.clone();
        let tmp = self.temp_path(&name, "");
        let result = async {
            let mut file = std::fs::File::create(&tmp).map_err(ApiError::internal)?;
            let limit = download_limit(free_space(&self.dir), self.max_upload);
            let downloader = Arc::clone(&self.downloader.lock().unwrap_or_else(|p| p.into_inner()));
            let mut t = task.clone();
            let fetched = tokio::task::spawn_blocking(move || {
                downloader.fetch(&url, &mut file, (limit.0, &limit.1), checksum.as_ref(), &mut t)
            })
            .await
            .map_err(ApiError::internal)??;
            let kind = match kind {
                Some(k) => k,
                None => detect_kind(&tmp)?,
            };
            task.log(format!("{} MiB, SHA-256 {}; a {}", fetched.size >> 20, fetched.sha256, kind.label()));
            self.accept(&name, kind, &tmp, fetched.size, fetched.sha256, "url").await
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// The admin's certificate authorities for downloads, as PEM.
    pub fn trusted_ca(&self) -> String {
        std::fs::read_to_string(self.data_dir.join(crate::download::TRUSTED_CA_FILE)).unwrap_or_default()
    }

    /// Replaces the admin's certificate authorities (empty: none); the
    /// next download trusts them. Returns how many there are.
    pub fn set_trusted_ca(&self, pem: &str) -> ApiResult<usize> {
        let certs = crate::download::parse_trusted_ca(pem)?;
        let path = self.data_dir.join(crate::download::TRUSTED_CA_FILE);
        if certs.is_empty() {
            store::remove(&path).map_err(ApiError::from)?;
        } else {
            store::write_atomic(&path, pem.as_bytes(), 0o600).map_err(ApiError::from)?;
        }
        *self.downloader.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(Downloader::new(&certs));
        Ok(certs.len())
    }

    /// Makes a received file (`tmp`: `size` bytes with this SHA-256) the
    /// image `name` of `kind`: checks its content, converts a qcow2 disk to
    /// raw, publishes it. What it made is removed if it fails; the caller
    /// removes `tmp`. `field` is what the admin gave (the file, the URL).
    async fn accept(
        &self,
        name: &str,
        kind: ImageKind,
        tmp: &Path,
        size: u64,
        sha256: String,
        field: &str,
    ) -> ApiResult<Image> {
        let mut image = Image {
            name: name.into(),
            kind,
            size,
            sha256: Some(sha256),
            converted_from: None,
            cloned_from: None,
            created: now_unix(),
        };
        match kind {
            ImageKind::Kernel => check_kernel(tmp, field)?,
            ImageKind::Iso => check_iso(tmp, field)?,
            ImageKind::Disk if read_at(tmp, 0, 4) == qcow2::MAGIC => {
                let raw = self.temp_path(name, ".raw");
                let converted = async {
                    image.size = self.convert_qcow2(name, tmp, &raw, field).await?;
                    image.converted_from = Some("qcow2".into());
                    std::fs::remove_file(tmp).map_err(ApiError::internal)?;
                    self.publish(&raw, &image)
                }
                .await;
                if converted.is_err() {
                    let _ = std::fs::remove_file(&raw);
                }
                return converted.map(|_| image);
            }
            ImageKind::Disk => check_raw_disk(tmp, field)?,
            ImageKind::Initrd => {}
        }
        self.publish(tmp, &image)?;
        Ok(image)
    }

    /// Converts a received qcow2 (`src`) to a sparse raw disk (`dst`), as
    /// a task the task list shows; returns the disk's size. Its errors are
    /// on `field`, what the admin gave.
    async fn convert_qcow2(&self, name: &str, src: &Path, dst: &Path, field: &str) -> ApiResult<u64> {
        let free = free_space(&self.dir).saturating_sub(64 << 20);
        let started = std::time::Instant::now();
        let task = self.tasks.start("convert", name);
        task.log(format!("qcow2 → sparse raw disk {name}"));
        // On a blocking thread: decompressing is CPU work, and imago's
        // futures are not Send.
        let (src, dst, t) = (src.to_path_buf(), dst.to_path_buf(), task.clone());
        let done = tokio::task::spawn_blocking(move || {
            let progress = |done, total| t.progress(done, total);
            tokio::runtime::Handle::current().block_on(qcow2::convert_to_raw(&src, &dst, free, progress))
        })
        .await
        .map_err(ApiError::internal)
        .and_then(|r| {
            r.map_err(|e| match e {
                qcow2::Qcow2Error::Write(e) => ApiError::internal(e),
                e => ApiError::bad(field, format!("{field}: {e}")),
            })
        });
        if let Ok(done) = &done {
            task.log(format!(
                "{} MiB disk, {} MiB of data, in {:.1} s",
                done.virtual_size >> 20,
                done.data_bytes >> 20,
                started.elapsed().as_secs_f64()
            ));
        }
        task.finish(&done);
        Ok(done?.virtual_size)
    }

    /// Checks that disk `from` can be copied to a new disk `to`: a disk, a
    /// free name. Returns the source, the bytes of data it holds (what
    /// the copy takes), and the new name, taken until the copy ends.
    pub fn prepare_clone(&self, from: &str, to: &str) -> ApiResult<(Image, u64, Reservation)> {
        let source = self.get(from).ok_or_else(|| ApiError::not_found("image"))?;
        if source.kind != ImageKind::Disk {
            return Err(ApiError::bad("name", format!("{from} is not a disk; only disks are cloned")));
        }
        let reservation = self.check_new(to, 0)?;
        Ok((source.clone(), allocated_bytes(&self.path(from)), reservation))
    }

    /// Refuses copies of `bytes` of data that would fill the data disk.
    pub fn check_room(&self, bytes: u64) -> ApiResult<()> {
        let free = free_space(&self.dir);
        if bytes + (64 << 20) > free {
            return Err(ApiError::field(
                507,
                "name",
                format!(
                    "the copy needs {} MiB and the data disk has {} MiB free; free some space first",
                    bytes >> 20,
                    free >> 20
                ),
            ));
        }
        Ok(())
    }

    /// Copies `source` to a new disk `to`, keeping it sparse (only its
    /// data extents, found with SEEK_DATA and SEEK_HOLE, are copied); the
    /// copy appears under its name once complete, and a failed copy leaves
    /// nothing. Blocking. `progress(bytes copied)` follows, and stops the
    /// copy when it answers false. The caller
    /// makes sure no running VM writes the source.
    pub fn copy_disk(&self, source: Image, to: &str, progress: impl FnMut(u64) -> bool) -> ApiResult<Image> {
        let tmp = self.temp_path(to, "");
        let result = (|| {
            sparse_copy(&self.path(&source.name), &tmp, progress).map_err(|e| match e.kind() {
                std::io::ErrorKind::Interrupted => crate::tasks::stopped(),
                _ => ApiError::internal(format!("copying {}: {e}", source.name)),
            })?;
            let image =
                Image { name: to.into(), cloned_from: Some(source.name.clone()), created: now_unix(), ..source };
            self.publish(&tmp, &image)?;
            Ok(image)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Grows disk `name` to `size_mib` (never shrinks it: that would cut
    /// the guest's file systems). The caller makes sure no VM runs on it;
    /// the guest sees the new size at its next start.
    pub fn grow_disk(&self, name: &str, size_mib: u64) -> ApiResult<Image> {
        let mut image = self.get(name).ok_or_else(|| ApiError::not_found("image"))?;
        if image.kind != ImageKind::Disk {
            return Err(ApiError::bad("size_mib", format!("{name} is not a disk; only disks grow")));
        }
        let size = size_mib.checked_mul(1 << 20).filter(|&s| s <= qcow2::MAX_SIZE);
        let Some(size) = size else {
            return Err(ApiError::bad("size_mib", "size_mib: at most 16 TiB"));
        };
        if size <= image.size {
            return Err(ApiError::bad(
                "size_mib",
                format!(
                    "size_mib: {name} is {} MiB already; disks only grow (a smaller disk would cut the guest's file systems)",
                    image.size >> 20
                ),
            ));
        }
        let f = std::fs::OpenOptions::new().write(true).open(self.path(name)).map_err(ApiError::internal)?;
        f.set_len(size).and_then(|_| f.sync_all()).map_err(ApiError::internal)?;
        image.size = size;
        store::save_json(&self.meta_path(name), &image).map_err(ApiError::from)?;
        Ok(image)
    }

    pub fn delete(&self, name: &str) -> ApiResult<()> {
        if self.get(name).is_none() {
            return Err(ApiError::not_found("image"));
        }
        store::remove(&self.path(name)).map_err(ApiError::from)?;
        store::remove(&self.meta_path(name)).map_err(ApiError::from)
    }
}

/// The most a download may bring, and why, for the admin: the upload
/// limit, or less when the data disk (keeping 64 MiB) has less room.
fn download_limit(free: u64, max_upload: u64) -> (u64, String) {
    let free = free.saturating_sub(64 << 20);
    if free < max_upload {
        (free, format!("the data disk has {} MiB free", free >> 20))
    } else {
        (max_upload, format!("images are limited to {} MiB", max_upload >> 20))
    }
}

/// The bytes a file really holds on disk (a sparse disk holds less than its size).
fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

/// Copies `src` to a new file `dst` of the same size, only the extents
/// that hold data (SEEK_DATA/SEEK_HOLE), so the copy is as sparse as the
/// source; fsyncs it. `progress(bytes copied)` follows, and stops the copy
/// (an `Interrupted` error) when it answers false. Returns the bytes copied.
fn sparse_copy(src: &Path, dst: &Path, mut progress: impl FnMut(u64) -> bool) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let from = std::fs::File::open(src)?;
    let to = std::fs::File::create(dst)?;
    let size = from.metadata()?.len();
    to.set_len(size)?;
    let seek = |offset: u64, whence: i32| -> std::io::Result<Option<u64>> {
        // SAFETY: lseek on an open file descriptor with a valid whence.
        let r = unsafe { libc::lseek(from.as_raw_fd(), offset as libc::off_t, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        let e = std::io::Error::last_os_error();
        // ENXIO: no data at or after `offset`.
        if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        }
    };
    let mut buf = vec![0u8; 4 << 20];
    let (mut at, mut copied) = (0u64, 0u64);
    while at < size {
        let Some(data) = seek(at, libc::SEEK_DATA)? else { break };
        let end = seek(data, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
        let mut pos = data;
        while pos < end {
            let n = ((end - pos) as usize).min(buf.len());
            from.read_exact_at(&mut buf[..n], pos)?;
            // Zeros inside a data extent stay a hole in the copy.
            if buf[..n].iter().any(|&b| b != 0) {
                to.write_all_at(&buf[..n], pos)?;
            }
            pos += n as u64;
            copied += n as u64;
            if !progress(copied) {
                return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "stopped"));
            }
        }
        at = end;
    }
    to.sync_all()?;
    Ok(copied)
}

/// The test kvmos-vmm itself makes: a bzImage or an ELF vmlinux.
/// `field` names what the admin gave (the file, the URL).
fn check_kernel(path: &Path, field: &str) -> ApiResult<()> {
    if is_kernel(path) {
        Ok(())
    } else {
        Err(ApiError::bad(field, format!("{field}: this is not a Linux kernel (neither a bzImage nor an ELF vmlinux)")))
    }
}

fn is_kernel(path: &Path) -> bool {
    kvmos_contract::vm::is_kernel(path).unwrap_or(false)
}

/// Reads `len` bytes at `offset` of `path` (fewer at its end).
fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    let n = std::fs::File::open(path).and_then(|f| f.read_at(&mut buf, offset)).unwrap_or(0);
    buf.truncate(n);
    buf
}

/// An ISO 9660 image has its primary volume descriptor's "CD001" at 0x8001.
fn is_iso(path: &Path) -> bool {
    read_at(path, 0x8001, 5) == b"CD001"
}

fn check_iso(path: &Path, field: &str) -> ApiResult<()> {
    if is_iso(path) {
        Ok(())
    } else {
        Err(ApiError::bad(
            field,
            format!("{field}: this is not an ISO 9660 CD/DVD image; give it as a disk if it is a disk image"),
        ))
    }
}

/// The kind a file's content shows: a qcow2 or a disk with a partition
/// table (MBR or GPT) is a disk, an ISO 9660 volume an ISO (a hybrid ISO
/// too: it goes in a CD-ROM drive, as on a server), a bzImage or vmlinux a
/// kernel. Anything else needs its kind given.
pub fn detect_kind(path: &Path) -> ApiResult<ImageKind> {
    let head = read_at(path, 0, 1024);
    if head.starts_with(qcow2::MAGIC) {
        Ok(ImageKind::Disk)
    } else if is_iso(path) {
        Ok(ImageKind::Iso)
    } else if is_kernel(path) {
        Ok(ImageKind::Kernel)
    } else if head.get(510..512) == Some(&[0x55, 0xaa]) || head.get(512..520) == Some(b"EFI PART") {
        Ok(ImageKind::Disk)
    } else if head.trim_ascii_start().first() == Some(&b'<') {
        Err(ApiError::bad(
            "url",
            "url: the server sent a web page, not an image; link to the file itself, not to its download page",
        ))
    } else {
        Err(ApiError::bad(
            "kind",
            "kind: the file is not a qcow2, an ISO, a kernel or a disk with a partition table; give its kind (disk, iso, kernel or initrd)",
        ))
    }
}

/// A raw disk is any bytes, but another format's container stored as a
/// disk would have its metadata read as sectors: refuse the formats kvmos
/// does not convert (qcow2 is converted before this) and say how to.
fn check_raw_disk(path: &Path, field: &str) -> ApiResult<()> {
    let head = read_at(path, 0, 8);
    let format = match &head[..] {
        [b'K', b'D', b'M', b'V', ..] => Some("VMDK"),
        [b'v', b'h', b'd', b'x', b'f', b'i', b'l', b'e'] => Some("VHDX"),
        _ if read_at(path, 0x40, 4) == [0x7f, 0x10, 0xda, 0xbe] => Some("VDI"),
        _ => None,
    };
    match format {
        Some(f) => Err(ApiError::bad(
            field,
            format!(
                "{field}: this is a {f} image, not a raw disk; convert it to qcow2 or raw first (qemu-img convert -O qcow2 in out.qcow2)"
            ),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl futures_util::Stream<Item = Result<bytes::Bytes, String>> + Unpin {
        futures_util::stream::iter(parts.iter().map(|p| Ok(bytes::Bytes::from_static(p))).collect::<Vec<_>>())
    }

    #[tokio::test]
    async fn uploads_are_hashed_limited_and_never_partial() {
        let dir = tempfile::tempdir().unwrap();
        let images = Images::new(dir.path(), &dir.path().join("guests"), 1 << 20).unwrap();
        let img = images.upload("root.img", ImageKind::Disk, None, chunks(&[b"hello ", b"world"])).await.unwrap();
        assert_eq!(img.sha256.as_deref(), Some("b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"));
        assert_eq!(images.list().len(), 1);

        // Too large: refused while streaming, and nothing is left behind.
        let big: &'static [u8] = Box::leak(vec![0u8; 700 << 10].into_boxed_slice());
        let e = images.upload("big.img", ImageKind::Disk, None, chunks(&[big, big])).await.unwrap_err();
        assert_eq!((e.status, e.field.as_deref()), (413, Some("file")));
        let e = images.upload("big.img", ImageKind::Disk, Some(2 << 20), chunks(&[])).await.unwrap_err();
        assert_eq!(e.status, 413);
        // A stream that fails halfway (the client went away).
        let broken = futures_util::stream::iter(vec![Ok(bytes::Bytes::from_static(b"part")), Err("reset".to_string())]);
        assert!(images.upload("cut.img", ImageKind::Disk, None, broken).await.is_err());
        assert!(images.get("cut.img").is_none());
        let names: Vec<String> = std::fs::read_dir(dir.path().join("images"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with(".upload-")), "no temporary files remain: {names:?}");

        let e = images.upload("root.img", ImageKind::Disk, None, chunks(&[b"x"])).await.unwrap_err();
        assert_eq!(e.status, 409);
        let e = images.upload("vmlinuz", ImageKind::Kernel, None, chunks(&[b"not a kernel"])).await.unwrap_err();
        assert_eq!(e.field.as_deref(), Some("file"));
        let e = images.upload("Bad Name", ImageKind::Disk, None, chunks(&[b"x"])).await.unwrap_err();
        assert_eq!(e.field.as_deref(), Some("name"));
    }

    #[tokio::test]
    async fn isos_and_disks_are_recognised_by_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let images = Images::new(dir.path(), &dir.path().join("guests"), 1 << 20).unwrap();
        let mut iso = vec![0u8; 0x8800];
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        let iso: &'static [u8] = Box::leak(iso.into_boxed_slice());
        assert_eq!(
            images.upload("rescue.iso", ImageKind::Iso, None, chunks(&[iso])).await.unwrap().kind,
            ImageKind::Iso
        );
        let e = images.upload("notiso", ImageKind::Iso, None, chunks(&[b"just bytes"])).await.unwrap_err();
        assert!(e.message.contains("not an ISO 9660"), "{}", e.message);
        let e = images.upload("cloud.img", ImageKind::Disk, None, chunks(&[b"QFI\xfb\0\0\0\x03"])).await.unwrap_err();
        assert!(e.message.contains("qcow2") && e.message.contains("damaged"), "{}", e.message);
        let e = images.upload("win.vmdk", ImageKind::Disk, None, chunks(&[b"KDMV\x01\0\0\0"])).await.unwrap_err();
        assert!(e.message.contains("VMDK") && e.message.contains("qemu-img convert"), "{}", e.message);
        assert!(images.get("cloud.img").is_none() && images.get("notiso").is_none(), "refused uploads leave nothing");
        // A hybrid ISO is a disk too.
        images.upload("hybrid.img", ImageKind::Disk, None, chunks(&[iso])).await.unwrap();
    }

    #[tokio::test]
    async fn a_qcow2_uploaded_as_a_disk_becomes_a_raw_disk() {
        let dir = tempfile::tempdir().unwrap();
        let images = Images::new(dir.path(), &dir.path().join("guests"), 64 << 20).unwrap();
        let raw = dir.path().join("src.raw");
        std::fs::write(&raw, [b"boot sector ".repeat(40), vec![0; 3 << 20], b"the end".to_vec()].concat()).unwrap();
        let q = dir.path().join("cloud.qcow2");
        let ok = std::process::Command::new("qemu-img")
            .args(["convert", "-c", "-O", "qcow2"])
            .args([&raw, &q])
            .status()
            .expect("qemu-img (package qemu-utils)");
        assert!(ok.success());
        let bytes: &'static [u8] = Box::leak(std::fs::read(&q).unwrap().into_boxed_slice());
        let img = images.upload("cloud.img", ImageKind::Disk, None, chunks(&[bytes])).await.unwrap();
        assert_eq!(img.converted_from.as_deref(), Some("qcow2"));
        // qemu-img rounds the disk up to whole sectors.
        let mut want = std::fs::read(&raw).unwrap();
        want.resize(want.len().next_multiple_of(512), 0);
        assert_eq!(img.size, want.len() as u64);
        assert_eq!(std::fs::read(images.path("cloud.img")).unwrap(), want);
        assert_eq!(images.get("cloud.img").unwrap().converted_from.as_deref(), Some("qcow2"));
        // The conversion is in the task list, done, with its log.
        let task = &images.tasks.list()[0];
        assert_eq!((task.kind.as_str(), task.target.as_str()), ("convert", "cloud.img"));
        assert_eq!(task.state, crate::tasks::TaskState::Done);
        assert!(task.total_bytes > 0 && task.done_bytes == task.total_bytes, "{task:?}");
        assert!(task.log.iter().any(|l| l.contains("MiB of data")), "{:?}", task.log);
        let names: Vec<String> = std::fs::read_dir(dir.path().join("images"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with(".upload-")), "no temporary files remain: {names:?}");
    }

    #[test]
    fn a_download_is_limited_by_the_upload_limit_or_the_free_space() {
        assert_eq!(download_limit(10 << 30, 4 << 30), (4 << 30, "images are limited to 4096 MiB".into()));
        assert_eq!(download_limit(1 << 30, 4 << 30), (960 << 20, "the data disk has 960 MiB free".into()));
        assert_eq!(download_limit(0, 4 << 30).0, 0, "a full disk takes nothing");
    }

    #[test]
    fn empty_disks_are_sparse_files_of_the_given_size() {
        let dir = tempfile::tempdir().unwrap();
        let images = Images::new(dir.path(), dir.path(), 1 << 20).unwrap();
        let d = images.create_disk("data", 64).unwrap();
        assert_eq!(d.size, 64 << 20);
        assert_eq!(std::fs::metadata(images.path("data")).unwrap().len(), 64 << 20);
        assert_eq!(images.create_disk("data", 64).unwrap_err().status, 409);
        assert_eq!(images.create_disk("zero", 0).unwrap_err().field.as_deref(), Some("size_mib"));
        images.delete("data").unwrap();
        assert!(images.list().is_empty());
    }
}
