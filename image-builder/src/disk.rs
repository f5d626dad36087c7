//! The flashable disk image: a GPT disk with an EFI system partition that
//! holds the kernel (with its initramfs and command line built in) as
//! `\EFI\BOOT\BOOTX64.EFI`, the path UEFI firmware boots from removable and
//! unconfigured disks, and optionally an empty data partition named
//! `KVMOS_DATA`.
//!
//! Written entirely in user space with the `gpt` and `fatfs` crates: no root,
//! no loop devices, no mkfs. GUIDs are derived from the content, so the same
//! inputs give the same image.

use crate::util::{disk_error, sha256_hex, AtomicFile};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

pub const SECTOR: u64 = 512;
/// Partitions start on 1 MiB boundaries, as every partitioning tool does.
pub const ALIGN: u64 = 1 << 20;
/// The smallest ESP we make: FAT32 needs at least 65525 clusters, and
/// firmware is happiest with FAT32 for the ESP.
pub const MIN_ESP: u64 = 64 << 20;
/// The GPT partition name the appliance looks for to find its data disk.
pub const DATA_LABEL: &str = "KVMOS_DATA";
pub const ESP_LABEL: &str = "KVMOS_ESP";
/// The smallest data partition worth making (ext4 with a journal, a VM disk).
pub const MIN_DATA: u64 = 64 << 20;

/// What goes into the image.
pub struct DiskSpec<'a> {
    /// The kernel with built-in initramfs and command line.
    pub efi_kernel: &'a Path,
    /// Extra small files for the ESP, by path (e.g. `kvmos/version`).
    pub extra_files: Vec<(String, Vec<u8>)>,
    /// Size of the empty `KVMOS_DATA` partition, if any.
    pub data_size: Option<u64>,
}

/// Where the partitions landed, in bytes from the start of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub total: u64,
    pub esp: (u64, u64),
    pub data: Option<(u64, u64)>,
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// Computes the partition layout for an ESP content size and a data size.
pub fn plan(esp_content: u64, data_size: Option<u64>) -> Result<Layout> {
    // FAT metadata and slack: a quarter on top, at least 8 MiB.
    let esp_size = round_up((esp_content + (esp_content / 4).max(8 << 20)).max(MIN_ESP), ALIGN);
    let esp_start = ALIGN;
    let mut next = esp_start + esp_size;
    let data = match data_size {
        None => None,
        Some(size) if size < MIN_DATA => {
            bail!("--data-size {size} is too small: give at least 64M (for example --data-size 8G)")
        }
        Some(size) => {
            let size = round_up(size, ALIGN);
            let start = next;
            next += size;
            Some((start, size))
        }
    };
    // The backup GPT (33 sectors) lives in the last megabyte.
    Ok(Layout { total: next + ALIGN, esp: (esp_start, esp_size), data })
}

/// Writes the image to `dest` atomically and returns its layout.
pub fn write_image(dest: &Path, spec: &DiskSpec) -> Result<Layout> {
    let kernel =
        std::fs::read(spec.efi_kernel).with_context(|| format!("cannot read {}", spec.efi_kernel.display()))?;
    let extra: u64 = spec.extra_files.iter().map(|(_, d)| d.len() as u64).sum();
    let layout = plan(kernel.len() as u64 + extra, spec.data_size)?;
    let seed = sha256_hex(&[&kernel, format!("{layout:?}").as_bytes()]);

    let mut out = AtomicFile::create(dest)?;
    out.file().set_len(layout.total).map_err(disk_error)?;
    let mut parts = vec![(gpt::partition_types::EFI, "esp", layout.esp, ESP_LABEL)];
    if let Some(data) = layout.data {
        parts.push((gpt::partition_types::LINUX_FS, "data", data, DATA_LABEL));
    }
    write_gpt(out.file(), layout.total, &seed, &parts)?;
    write_esp(out.file(), &layout, &kernel, &spec.extra_files, &seed)?;
    out.commit()?;
    Ok(layout)
}

fn guid(seed: &str, what: &str) -> uuid::Uuid {
    let h = sha256_hex(&[seed.as_bytes(), what.as_bytes()]);
    let mut bytes = [0u8; 16];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&h[i * 2..i * 2 + 2], 16).unwrap_or(0);
    }
    // Shape it as a random (version 4, RFC 4122 variant) GUID.
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// A partition to write: its type, a word for its GUID, (start, size) in
/// bytes, and its GPT name.
type PartSpec<'a> = (gpt::partition_types::Type, &'a str, (u64, u64), &'a str);

fn write_gpt(file: &mut std::fs::File, total: u64, seed: &str, specs: &[PartSpec]) -> Result<()> {
    let lb = gpt::disk::LogicalBlockSize::Lb512;
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(total / SECTOR - 1).unwrap_or(u32::MAX));
    mbr.overwrite_lba0(file).context("cannot write the protective MBR")?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(lb)
        .create_from_device(&mut *file, Some(guid(seed, "disk")))
        .context("cannot create the GPT")?;
    let parts: BTreeMap<u32, gpt::partition::Partition> = specs
        .iter()
        .zip(1..)
        .map(|((part_type_guid, what, (start, size), name), number)| {
            let p = gpt::partition::Partition {
                part_type_guid: part_type_guid.clone(),
                part_guid: guid(seed, what),
                first_lba: start / SECTOR,
                last_lba: (start + size) / SECTOR - 1,
                flags: 0,
                name: name.to_string(),
            };
            (number, p)
        })
        .collect();
    disk.update_partitions(parts).context("cannot lay out the partitions")?;
    disk.write().context("cannot write the GPT")?;
    Ok(())
}

/// A data disk for development runs: one blank partition named
/// `KVMOS_DATA`, which kvmos-init formats at first boot. The file is sparse.
pub fn write_data_disk(dest: &Path, size: u64) -> Result<()> {
    if size < MIN_DATA {
        bail!("a data disk needs at least 64 MiB");
    }
    let data = (ALIGN, round_up(size, ALIGN));
    let total = data.0 + data.1 + ALIGN;
    let mut out = AtomicFile::create(dest)?;
    out.file().set_len(total).map_err(disk_error)?;
    let seed = sha256_hex(&[dest.to_string_lossy().as_bytes()]);
    write_gpt(out.file(), total, &seed, &[(gpt::partition_types::LINUX_FS, "data", data, DATA_LABEL)])?;
    out.commit()
}

fn write_esp(
    file: &mut std::fs::File,
    layout: &Layout,
    kernel: &[u8],
    extra: &[(String, Vec<u8>)],
    seed: &str,
) -> Result<()> {
    let (start, size) = layout.esp;
    file.seek(SeekFrom::Start(0))?;
    let mut slice = fscommon::StreamSlice::new(&mut *file, start, start + size)?;
    let volume_id = u32::from_str_radix(&seed[..8], 16).unwrap_or(0x4b564d4f);
    fatfs::format_volume(
        &mut slice,
        fatfs::FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat32)
            .volume_label(*b"KVMOS_ESP  ")
            .volume_id(volume_id),
    )
    .context("cannot format the EFI system partition")?;
    slice.seek(SeekFrom::Start(0))?;
    let fs = fatfs::FileSystem::new(&mut slice, fatfs::FsOptions::new()).context("cannot open the new ESP")?;
    {
        let root = fs.root_dir();
        let boot = root.create_dir("EFI")?.create_dir("BOOT")?;
        let mut f = boot.create_file("BOOTX64.EFI")?;
        f.write_all(kernel).map_err(disk_error)?;
        f.flush()?;
        for (path, data) in extra {
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
            let d = if dir.is_empty() { root.clone() } else { create_dirs(&root, dir)? };
            let mut f = d.create_file(name)?;
            f.write_all(data).map_err(disk_error)?;
            f.flush()?;
        }
    }
    fs.unmount().context("cannot finish the ESP")?;
    Ok(())
}

fn create_dirs<'a, T: fatfs::ReadWriteSeek>(root: &fatfs::Dir<'a, T>, path: &str) -> Result<fatfs::Dir<'a, T>> {
    let mut d = root.clone();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        d = d.create_dir(part)?;
    }
    Ok(d)
}

/// Parses sizes such as `8G`, `512M`, `1T` or a byte count.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (t, 1u64),
        Some((i, _)) => {
            let unit = t[i..].trim_end_matches(['B', 'b']).trim_end_matches(['i']);
            let mult = match unit.to_ascii_uppercase().as_str() {
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                "" => 1,
                _ => bail!("cannot read the size {s:?}: write it like 512M, 8G or 1T"),
            };
            (&t[..i], mult)
        }
    };
    let n: u64 =
        num.parse().map_err(|_| anyhow::anyhow!("cannot read the size {s:?}: write it like 512M, 8G or 1T"))?;
    n.checked_mul(mult).with_context(|| format!("the size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("8G").unwrap(), 8 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert!(parse_size("eight").is_err());
        assert!(parse_size("3X").unwrap_err().to_string().contains("512M"));
    }

    #[test]
    fn a_development_data_disk_has_one_blank_kvmos_data_partition() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("data.img");
        write_data_disk(&img, 256 << 20).unwrap();
        let disk = gpt::GptConfig::new().writable(false).open(&img).unwrap();
        let parts = disk.partitions();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[&1].name, DATA_LABEL);
        assert!(write_data_disk(&img, 1 << 20).is_err());
    }

    #[test]
    fn image_has_gpt_esp_with_kernel_and_data_partition() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("bzImage");
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&kernel, &payload).unwrap();
        let img = dir.path().join("kvmos.img");
        let spec = DiskSpec {
            efi_kernel: &kernel,
            extra_files: vec![("kvmos/version".into(), b"0.1.0\n".to_vec())],
            data_size: Some(128 << 20),
        };
        let layout = write_image(&img, &spec).unwrap();
        assert_eq!(std::fs::metadata(&img).unwrap().len(), layout.total);

        let disk = gpt::GptConfig::new().writable(false).open(&img).unwrap();
        let parts = disk.partitions();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[&1].part_type_guid, gpt::partition_types::EFI);
        assert_eq!(parts[&1].first_lba * SECTOR % ALIGN, 0);
        assert_eq!(parts[&2].name, DATA_LABEL);
        assert_eq!((parts[&2].last_lba + 1 - parts[&2].first_lba) * SECTOR, 128 << 20);

        let mut f = std::fs::File::open(&img).unwrap();
        let (start, size) = layout.esp;
        let slice = fscommon::StreamSlice::new(&mut f, start, start + size).unwrap();
        let fs = fatfs::FileSystem::new(slice, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat32);
        let mut read = Vec::new();
        fs.root_dir().open_file("EFI/BOOT/BOOTX64.EFI").unwrap().read_to_end(&mut read).unwrap();
        assert_eq!(read, payload);
        let mut v = String::new();
        fs.root_dir().open_file("kvmos/version").unwrap().read_to_string(&mut v).unwrap();
        assert_eq!(v, "0.1.0\n");
    }

    #[test]
    fn same_inputs_give_the_same_image() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("k");
        std::fs::write(&kernel, vec![7u8; 100_000]).unwrap();
        let spec = DiskSpec { efi_kernel: &kernel, extra_files: vec![], data_size: None };
        write_image(&dir.path().join("a.img"), &spec).unwrap();
        write_image(&dir.path().join("b.img"), &spec).unwrap();
        assert!(std::fs::read(dir.path().join("a.img")).unwrap() == std::fs::read(dir.path().join("b.img")).unwrap());
    }

    #[test]
    fn too_small_data_partition_is_refused() {
        let e = plan(1 << 20, Some(1 << 20)).unwrap_err();
        assert!(e.to_string().contains("at least 64M"), "{e}");
    }
}
