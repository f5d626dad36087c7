//! Real Debian 12 disk images for the PC-machine tests, built once from
//! Debian's packages and cached in `~/.cache/kvmos/guests/`. Nothing in
//! them knows about kvmos: a stock Debian kernel, systemd, ifupdown with
//! the ISC DHCP client, and GRUB for both BIOS and UEFI on a GPT disk, as a
//! cloud image has them (`console=ttyS0` on the kernel command line).
//!
//! Two flavours ([`Flavour`]): the test image has a root password and
//! takes its address by DHCP; the cloud image is what a cloud provider
//! ships, with Debian's cloud kernel, cloud-init, OpenSSH and growpart,
//! and no password, key or network configuration of its own: it learns
//! them from a NoCloud seed at its first boot.
//!
//! The build needs no loop devices or mounts: mmdebstrap makes the root
//! tree, `mke2fs -d` writes it straight into the disk image at the root
//! partition's offset, mtools fills the EFI system partition, and the BIOS
//! boot code is placed the way `grub-bios-setup` places it: GRUB's
//! `boot.img` in the MBR pointing at `core.img` in the BIOS boot partition.
//!
//! Layout (512-byte sectors): 1 BIOS boot partition at 2048 (1 MiB),
//! 2 EFI system partition at 4096 (64 MiB, label `ESP`), 3 root at 135168
//! (ext4, label `debroot`), 2 GiB in all, sparse.

use anyhow::{bail, Context, Result};
use kvmos_image_builder::util::{sha256_hex, LockFile};
use kvmos_image_builder::Layout;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The root password of the test image.
pub const ROOT_PASSWORD: &str = "kvmos";
/// Its host name, which the login prompt shows.
pub const HOSTNAME: &str = "debian-test";
/// What GRUB prints before it loads the kernel. Under SeaBIOS it reaches
/// the serial port through SeaBIOS's serial console, which may put cursor
/// escapes inside it: tests look for [`KERNEL_MARKER`] instead.
pub const GRUB_MARKER: &str = "GRUB: loading the Debian kernel";
/// What the Debian kernel prints first when GRUB started it with this
/// image's configuration (Linux writes to the serial port itself).
pub const KERNEL_MARKER: &str = "Command line: BOOT_IMAGE=/vmlinuz root=LABEL=debroot";

const PACKAGES: &str = "linux-image-amd64,systemd-sysv,udev,ifupdown,isc-dhcp-client,iproute2,efibootmgr,kmod,procps";
/// The cloud image's: Debian's cloud kernel (virtio, no desktop hardware),
/// cloud-init with what its modules run (growpart, sgdisk, resize2fs,
/// sudo, hostnamectl over D-Bus) and an SSH server.
const CLOUD_PACKAGES: &str = "linux-image-cloud-amd64,systemd-sysv,udev,dbus,ifupdown,isc-dhcp-client,iproute2,kmod,\
                              procps,e2fsprogs,cloud-init,cloud-guest-utils,fdisk,gdisk,openssh-server,sudo";
const DISK_MIB: u64 = 2048;
const BIOS_BOOT_LBA: u64 = 2048;
const ESP_LBA: u64 = 4096;
const ESP_MIB: u64 = 64;
const ROOT_LBA: u64 = ESP_LBA + ESP_MIB * 2048;
/// A Linux initramfs with just what a virtio VM needs boots in seconds
/// under TCG, where Debian's default (every module) takes minutes.
const INITRAMFS_MODULES: &str = "virtio_pci\nvirtio_blk\nvirtio_net\next4\n";

/// GRUB's commands, built into its image for both BIOS and UEFI.
fn grub_config() -> String {
    format!(
        "search --no-floppy --label debroot --set=root\n\
         echo '{GRUB_MARKER}'\n\
         linux /vmlinuz root=LABEL=debroot ro console=ttyS0,115200 net.ifnames=0\n\
         initrd /initrd.img\n\
         boot\n"
    )
}

/// Which Debian image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Root logs in with [`ROOT_PASSWORD`]; eth0 takes an address by DHCP.
    Test,
    /// A cloud image: no password, key or network of its own; cloud-init
    /// sets them from a NoCloud seed, and grows the root partition to the
    /// disk at every boot.
    Cloud,
}

impl Flavour {
    fn name(self) -> &'static str {
        match self {
            Flavour::Test => "debian12",
            Flavour::Cloud => "debian12-cloud",
        }
    }

    fn packages(self) -> &'static str {
        match self {
            Flavour::Test => PACKAGES,
            Flavour::Cloud => CLOUD_PACKAGES,
        }
    }

    /// mmdebstrap's hooks: the root password, host name, network, fstab,
    /// and a small initramfs.
    fn hooks(self) -> Vec<String> {
        let mut hooks = match self {
            Flavour::Test => vec![
                format!("echo root:{ROOT_PASSWORD} | chroot \"$1\" chpasswd"),
                format!("echo {HOSTNAME} > \"$1/etc/hostname\""),
                "printf 'auto lo\\niface lo inet loopback\\nauto eth0\\niface eth0 inet dhcp\\n' > \"$1/etc/network/interfaces\""
                    .into(),
            ],
            // cloud-init writes eth0's stanza into interfaces.d; the SSH
            // host keys are made at the first boot, each VM its own.
            Flavour::Cloud => vec![
                "echo debian > \"$1/etc/hostname\"".into(),
                "printf 'auto lo\\niface lo inet loopback\\nsource /etc/network/interfaces.d/*\\n' > \"$1/etc/network/interfaces\""
                    .into(),
                "rm -f \"$1\"/etc/ssh/ssh_host_*".into(),
            ],
        };
        hooks.extend([
            "printf 'LABEL=debroot / ext4 errors=remount-ro 0 1\\n' > \"$1/etc/fstab\"".into(),
            "echo MODULES=list > \"$1/etc/initramfs-tools/conf.d/kvmos-test.conf\"".into(),
            format!("printf '{}' > \"$1/etc/initramfs-tools/modules\"", INITRAMFS_MODULES.replace('\n', "\\n")),
            "chroot \"$1\" update-initramfs -u -k all".into(),
            // Keep the image small: no package lists or caches.
            "rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*".into(),
        ]);
        hooks
    }
}

const GRUB_BIOS_MODULES: &[&str] = &["biosdisk", "part_gpt", "ext2", "search", "search_label", "linux", "echo"];
const GRUB_EFI_MODULES: &[&str] = &["part_gpt", "ext2", "search", "search_label", "linux", "echo"];

/// The cached test image, built first if needed (a few minutes, once).
pub fn image() -> Result<PathBuf> {
    image_of(Flavour::Test)
}

/// The cached image of `flavour`, built first if needed.
pub fn image_of(flavour: Flavour) -> Result<PathBuf> {
    let layout = Layout::this_checkout();
    let dir = layout.cache_dir.join("guests");
    std::fs::create_dir_all(&dir)?;
    let name = flavour.name();
    let key = sha256_hex(&[
        flavour.packages().as_bytes(),
        grub_config().as_bytes(),
        flavour.hooks().join("\n").as_bytes(),
        &DISK_MIB.to_le_bytes(),
        format!("{name} v1").as_bytes(),
    ]);
    let out = dir.join(format!("{name}-{}.img", &key[..16]));
    let _lock = LockFile::acquire(&dir.join(format!("{name}.lock")))?;
    if out.is_file() {
        return Ok(out);
    }
    let work = dir.join(format!("{name}-{}.work", &key[..16]));
    let started = std::time::Instant::now();
    eprintln!("==> building the Debian 12 image {name} (once; cached as {})", out.display());
    let result = build(flavour, &work, &out);
    let _ = std::fs::remove_dir_all(&work);
    result?;
    eprintln!("    built in {:.0} s", started.elapsed().as_secs_f64());
    Ok(out)
}

fn run(cmd: &mut Command) -> Result<()> {
    kvmos_image_builder::util::run(cmd).map(drop)
}

fn build(flavour: Flavour, work: &Path, out: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work)?;
    let root = work.join("root");
    let mut deb = Command::new("mmdebstrap");
    deb.args(["--variant=minbase", "--mode=root", &format!("--include={}", flavour.packages())]);
    for h in flavour.hooks() {
        deb.arg(format!("--customize-hook={h}"));
    }
    run(deb.arg("bookworm").arg(&root))?;

    let disk = work.join("disk.img");
    let f = std::fs::File::create(&disk)?;
    f.set_len(DISK_MIB << 20)?;
    drop(f);
    partition(&disk)?;
    // The root file system, written at its partition's offset; the last MiB
    // holds the backup GPT.
    let root_mib = DISK_MIB - ROOT_LBA / 2048 - 1;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "debroot", "-d"])
        .arg(&root)
        .arg("-E")
        .arg(format!("offset={}", ROOT_LBA * 512))
        .arg(&disk)
        .arg(format!("{root_mib}M")))?;
    let cfg = work.join("grub.cfg");
    std::fs::write(&cfg, grub_config())?;
    write_esp(work, &disk, &cfg)?;
    write_bios_boot(work, &disk, &cfg)?;
    std::fs::rename(&disk, out)?;
    Ok(())
}

fn partition(disk: &Path) -> Result<()> {
    let table = format!(
        "label: gpt\n\
         start={BIOS_BOOT_LBA}, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=bios\n\
         start={ESP_LBA}, size={}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=ESP\n\
         start={ROOT_LBA}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n",
        ESP_MIB * 2048
    );
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg(disk)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("cannot run sfdisk")?;
    use std::io::Write;
    child.stdin.take().context("sfdisk's stdin")?.write_all(table.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        bail!("sfdisk failed ({status})");
    }
    Ok(())
}

/// Writes `data` into `disk` at sector `lba`.
fn write_at(disk: &Path, lba: u64, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(disk)?;
    f.write_all_at(data, lba * 512)?;
    Ok(())
}

/// The EFI system partition: GRUB as the removable-media loader
/// (`\EFI\BOOT\BOOTX64.EFI`), which firmware finds without a boot entry,
/// and as `\EFI\debian\grubx64.efi` for boot entries to name.
fn write_esp(work: &Path, disk: &Path, cfg: &Path) -> Result<()> {
    let efi = work.join("grubx64.efi");
    run(Command::new("grub-mkimage")
        .args(["-O", "x86_64-efi", "-p", "/EFI/debian", "-o"])
        .arg(&efi)
        .arg("-c")
        .arg(cfg)
        .args(GRUB_EFI_MODULES))?;
    let esp = work.join("esp.img");
    run(Command::new("mkfs.vfat").args(["-n", "ESP", "-C"]).arg(&esp).arg((ESP_MIB * 1024).to_string()))?;
    let img = format!("{}", esp.display());
    run(Command::new("mmd").args(["-i", &img, "::/EFI", "::/EFI/BOOT", "::/EFI/debian"]))?;
    run(Command::new("mcopy").args(["-i", &img]).arg(&efi).arg("::/EFI/BOOT/BOOTX64.EFI"))?;
    run(Command::new("mcopy").args(["-i", &img]).arg(&efi).arg("::/EFI/debian/grubx64.efi"))?;
    write_at(disk, ESP_LBA, &std::fs::read(&esp)?)
}

/// GRUB for BIOS: `core.img` in the BIOS boot partition, its first sector
/// (diskboot) listing where the rest is, and `boot.img` in the MBR's code
/// area pointing at it, as `grub-bios-setup` does.
fn write_bios_boot(work: &Path, disk: &Path, cfg: &Path) -> Result<()> {
    let core_path = work.join("core.img");
    run(Command::new("grub-mkimage")
        .args(["-O", "i386-pc", "-p", "(hd0,gpt3)/boot/grub", "-o"])
        .arg(&core_path)
        .arg("-c")
        .arg(cfg)
        .args(GRUB_BIOS_MODULES))?;
    let mut core = std::fs::read(&core_path)?;
    let sectors = core.len().div_ceil(512) as u64;
    if sectors > 2048 {
        bail!("GRUB's core.img ({sectors} sectors) does not fit the 1 MiB BIOS boot partition");
    }
    // diskboot's block list: the rest of core.img, right after its first
    // sector, loaded at segment 0x820.
    core[0x1f4..0x1fc].copy_from_slice(&(BIOS_BOOT_LBA + 1).to_le_bytes());
    core[0x1fc..0x1fe].copy_from_slice(&((sectors - 1) as u16).to_le_bytes());
    core[0x1fe..0x200].copy_from_slice(&0x820u16.to_le_bytes());
    write_at(disk, BIOS_BOOT_LBA, &core)?;
    let mut boot = std::fs::read("/usr/lib/grub/i386-pc/boot.img").context("GRUB's boot.img (package grub-pc-bin)")?;
    // Where core.img starts, and always boot from the drive the BIOS says.
    boot[0x5c..0x64].copy_from_slice(&BIOS_BOOT_LBA.to_le_bytes());
    boot[0x66..0x68].copy_from_slice(&[0x90, 0x90]);
    // The MBR's code area only: the partition table stays.
    write_at(disk, 0, &boot[..440])
}

/// What a NoCloud seed tells a [`Flavour::Cloud`] VM at its first boot.
pub struct Seed<'a> {
    /// A new one makes cloud-init run its first-boot steps again.
    pub instance_id: &'a str,
    pub hostname: &'a str,
    /// Made with sudo rights, logging in with `ssh_key` only.
    pub user: &'a str,
    pub ssh_key: &'a str,
    /// eth0 is the NIC with this MAC, at `address` (with its prefix
    /// length) behind `gateway`.
    pub mac: &'a str,
    pub address: &'a str,
    pub gateway: &'a str,
}

impl Seed<'_> {
    /// Writes the seed as a 1 MiB FAT volume labelled `CIDATA`, as
    /// `cloud-localds` would (the panel writes its own, in the same form).
    pub fn write(&self, path: &Path) -> Result<()> {
        let meta = serde_json::json!({"instance-id": self.instance_id, "local-hostname": self.hostname});
        let user = serde_json::json!({"hostname": self.hostname, "preserve_hostname": false, "manage_etc_hosts": true,
            "ssh_pwauth": false, "users": [{"name": self.user, "shell": "/bin/bash", "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "lock_passwd": true, "ssh_authorized_keys": [self.ssh_key]}]});
        let network = serde_json::json!({"version": 2, "ethernets": {"eth0": {"match": {"macaddress": self.mac},
            "set-name": "eth0", "dhcp4": false, "addresses": [self.address],
            "routes": [{"to": "0.0.0.0/0", "via": self.gateway}]}}});
        let dir = seed_files_dir(path)?;
        let files = [
            ("meta-data", meta.to_string()),
            ("user-data", format!("#cloud-config\n{user}\n")),
            ("network-config", network.to_string()),
        ];
        for (name, text) in &files {
            std::fs::write(dir.join(name), text)?;
        }
        let _ = std::fs::remove_file(path);
        run(Command::new("mkfs.vfat").args(["-n", "CIDATA", "-C"]).arg(path).arg("1024"))?;
        let mut copy = Command::new("mcopy");
        copy.arg("-i").arg(path);
        for (name, _) in &files {
            copy.arg(dir.join(name));
        }
        run(copy.arg("::"))?;
        Ok(std::fs::remove_dir_all(&dir)?)
    }
}

/// A fresh folder beside `path` for the seed's files.
fn seed_files_dir(path: &Path) -> Result<PathBuf> {
    let dir = path.with_extension("files");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
