//! VM definitions: what the admin asked for, kept as one JSON file per VM
//! under `panel/vms/` on the data disk, with the log of past runs.
//! [`VmSpec::validate`] turns every mistake into a 4xx naming the field.

use crate::app::{ApiError, ApiResult};
use crate::images::{check_name, ImageKind, Images};
use crate::store::{self, lock};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What a VM boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Boot {
    /// A guest bundled with kvmos (e.g. `demo`).
    Guest { guest: String },
    /// Uploaded kernel and initrd images.
    Kernel { kernel: String, initrd: Option<String> },
    /// A PC with firmware that boots the VM's disks (a disk image with its
    /// own boot loader, or an ISO): SeaBIOS (`bios`) or OVMF (`uefi`).
    Firmware { firmware: Firmware },
}

/// Which firmware a VM's PC runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Bios,
    Uefi,
}

/// A disk of the VM: an existing disk image, or a new empty one of
/// `size_mib` made when the VM is created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_mib: Option<u64>,
    #[serde(default)]
    pub read_only: bool,
    /// How the guest sees a disk: virtio (fast; Linux and BSD have the
    /// driver) or an IDE hard disk (firmware boots only; for guests
    /// without virtio drivers, such as a Windows installer). ISOs always go
    /// in CD-ROM drives.
    #[serde(default, skip_serializing_if = "DiskBus::is_virtio")]
    pub bus: DiskBus,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    #[default]
    Virtio,
    Ide,
}

impl DiskBus {
    fn is_virtio(&self) -> bool {
        *self == DiskBus::Virtio
    }
}

/// A VM as the admin describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub name: String,
    pub vcpus: u16,
    pub memory_mib: u64,
    pub boot: Boot,
    /// The kernel command line; the bundled guest's when absent.
    #[serde(default)]
    pub cmdline: Option<String>,
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    /// Firmware boot: the disks to boot from, by index, first first;
    /// disks not listed come after them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boot_order: Vec<usize>,
    /// A NIC on the host bridge (`br0`).
    #[serde(default)]
    pub network: bool,
    #[serde(default)]
    pub autostart: bool,
    /// The VM's share of the host's CPUs against the other VMs when they
    /// are all busy (its cgroup's `cpu.weight`): 1 to 10000, 100 when
    /// absent. 200 gets twice the CPU time of a VM at 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u32>,
    /// Provisioning for cloud images: handed to the guest as a NoCloud
    /// seed (`crate::cloud_init`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<crate::cloud_init::CloudInit>,
}

/// One run of a VM.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Run {
    /// Unix seconds.
    pub started: u64,
    pub ended: Option<u64>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmRecord {
    pub id: String,
    pub spec: VmSpec,
    pub created: u64,
    /// The NIC's MAC, derived from the ID so it never changes.
    pub mac: String,
    #[serde(default)]
    pub runs: Vec<Run>,
}

/// The most runs kept per VM.
const MAX_RUNS: usize = 50;
/// Memory kept free for the host when checking a VM's size.
pub const HOST_MARGIN_MIB: u64 = 256;

/// What the host has, for validation.
#[derive(Debug, Clone, Copy)]
pub struct HostCapacity {
    pub cpus: u16,
    pub mem_available_mib: u64,
}

impl HostCapacity {
    pub fn read() -> Self {
        let cpus = std::thread::available_parallelism().map(|n| n.get() as u16).unwrap_or(1);
        Self { cpus, mem_available_mib: crate::host::meminfo("MemAvailable").unwrap_or(0) / 1024 }
    }
}

/// CD-ROM drives a VM can have (the IDE controller's four positions);
/// each ISO goes in one.
pub const MAX_CDROMS: usize = 4;

impl VmSpec {
    /// Keeps secrets only as hashes before the definition is stored.
    fn seal(&mut self) -> ApiResult<()> {
        self.cloud_init.as_mut().map_or(Ok(()), |c| c.seal())
    }

    /// Checks the fields, the references and the host's room.
    pub fn validate(&self, images: &Images, host: HostCapacity) -> ApiResult<()> {
        check_name("name", &self.name, 32)?;
        if self.vcpus == 0 || self.vcpus > host.cpus {
            return Err(ApiError::bad("vcpus", format!("vcpus: give 1 to {} (the host's CPUs)", host.cpus)));
        }
        let max_mem = host.mem_available_mib.saturating_sub(HOST_MARGIN_MIB);
        if self.memory_mib < 16 || self.memory_mib > max_mem {
            return Err(ApiError::bad(
                "memory_mib",
                format!("memory_mib: give 16 to {max_mem} MiB (free memory less {HOST_MARGIN_MIB} MiB for the host)"),
            ));
        }
        if let Some(w) = self.cpu_weight.filter(|w| !kvmos_contract::vm::CPU_WEIGHT_RANGE.contains(w)) {
            return Err(ApiError::bad(
                "cpu_weight",
                format!("cpu_weight: {w} is out of range; give 1 to 10000 (100 is an ordinary share; leave it out for that)"),
            ));
        }
        match &self.boot {
            Boot::Guest { guest } => {
                if images.guest(guest).is_none() {
                    return Err(ApiError::bad(
                        "boot.guest",
                        format!("boot.guest: there is no bundled guest {guest:?}"),
                    ));
                }
            }
            Boot::Kernel { kernel, initrd } => {
                expect_image(images, "boot.kernel", kernel, ImageKind::Kernel)?;
                if let Some(i) = initrd {
                    expect_image(images, "boot.initrd", i, ImageKind::Initrd)?;
                }
            }
            Boot::Firmware { .. } => {
                if self.cmdline.is_some() {
                    return Err(ApiError::bad(
                        "cmdline",
                        "cmdline: a firmware boot has no kernel command line (the guest's boot loader has it); leave it empty",
                    ));
                }
                if self.disks.is_empty() {
                    return Err(ApiError::bad("disks", "disks: a firmware boot needs a disk or an ISO to boot from"));
                }
            }
        }
        self.validate_boot_order()?;
        if let Some(c) = &self.cloud_init {
            c.validate()?;
        }
        if let Some(c) = &self.cmdline {
            // The VMM's own limit: the panel's VMs have virtio-rng, the
            // disks and the NIC.
            let devices = self.disks.len() + usize::from(self.network) + 1 + usize::from(self.cloud_init.is_some());
            let max = kvmos_contract::vm::cmdline_room(devices);
            if c.len() > max {
                return Err(ApiError::bad(
                    "cmdline",
                    format!(
                        "cmdline: {} bytes is too long with {devices} virtio device(s): at most {max} (the kernel takes 2047, and kvmos-vmm adds each device's address); shorten it",
                        c.len()
                    ),
                ));
            }
        }
        if self.disks.len() > 8 {
            return Err(ApiError::bad("disks", "disks: at most 8"));
        }
        // The IDE controller's four positions: CD-ROM drives and IDE disks.
        let mut ide_drives = 0;
        for (i, d) in self.disks.iter().enumerate() {
            let field = format!("disks[{i}].image");
            check_name(&field, &d.image, 64)?;
            let is_iso = d.size_mib.is_none() && images.get(&d.image).is_some_and(|img| img.kind == ImageKind::Iso);
            if d.bus == DiskBus::Ide {
                let bus = format!("disks[{i}].bus");
                if is_iso {
                    return Err(ApiError::bad(&bus, format!("{bus}: an ISO goes in a CD-ROM drive; leave bus out")));
                }
                if !matches!(self.boot, Boot::Firmware { .. }) {
                    return Err(ApiError::bad(
                        &bus,
                        format!("{bus}: IDE disks are for firmware boots (BIOS or UEFI); use virtio"),
                    ));
                }
            }
            ide_drives += usize::from(is_iso || d.bus == DiskBus::Ide);
            if ide_drives > MAX_CDROMS {
                return Err(ApiError::bad(
                    &field,
                    format!(
                        "{field}: a VM has at most {MAX_CDROMS} ISOs and IDE disks together (the IDE controller's four drives); remove one or make a disk virtio"
                    ),
                ));
            }
            if d.size_mib.is_none() {
                match images.get(&d.image) {
                    Some(img) if img.kind == ImageKind::Iso && !matches!(self.boot, Boot::Firmware { .. }) => {
                        return Err(ApiError::bad(
                            &field,
                            format!("{field}: {} is an ISO; only a firmware boot (BIOS or UEFI) reads ISOs", d.image),
                        ));
                    }
                    Some(img) if img.kind == ImageKind::Iso => {}
                    _ => expect_image(images, &field, &d.image, ImageKind::Disk)?,
                }
            }
        }
        Ok(())
    }

    /// The boot order names existing disks, each once, and only for a
    /// firmware boot.
    fn validate_boot_order(&self) -> ApiResult<()> {
        if self.boot_order.is_empty() {
            return Ok(());
        }
        if !matches!(self.boot, Boot::Firmware { .. }) {
            return Err(ApiError::bad("boot_order", "boot_order: only a firmware boot has a boot order"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, &d) in self.boot_order.iter().enumerate() {
            let field = format!("boot_order[{i}]");
            if d >= self.disks.len() {
                return Err(ApiError::bad(
                    &field,
                    format!("{field}: the VM has no disk {d} (it has {}, numbered from 0)", self.disks.len()),
                ));
            }
            if !seen.insert(d) {
                return Err(ApiError::bad(&field, format!("{field}: disk {d} is listed twice")));
            }
        }
        Ok(())
    }
}

fn expect_image(images: &Images, field: &str, name: &str, kind: ImageKind) -> ApiResult<()> {
    match images.get(name) {
        Some(i) if i.kind == kind => Ok(()),
        Some(i) => Err(ApiError::bad(field, format!("{field}: {name} is a {:?} image, not a {kind:?}", i.kind))),
        None => Err(ApiError::bad(field, format!("{field}: there is no image called {name}; upload it first"))),
    }
}

pub struct VmStore {
    dir: PathBuf,
    vms: Mutex<BTreeMap<String, VmRecord>>,
}

impl VmStore {
    pub fn load(data_dir: &Path) -> anyhow::Result<Self> {
        let dir = data_dir.join("panel/vms");
        std::fs::create_dir_all(&dir)?;
        let mut vms = BTreeMap::new();
        for e in std::fs::read_dir(&dir)?.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "json") {
                match store::load_json::<VmRecord>(&path) {
                    Ok(Some(r)) => {
                        vms.insert(r.id.clone(), r);
                    }
                    Ok(None) => {}
                    Err(err) => tracing::error!("skipping a VM definition: {err:#}"),
                }
            }
        }
        Ok(Self { dir, vms: Mutex::new(vms) })
    }

    fn save(&self, r: &VmRecord) -> ApiResult<()> {
        store::save_json(&self.dir.join(format!("{}.json", r.id)), r).map_err(ApiError::from)
    }

    pub fn list(&self) -> Vec<VmRecord> {
        let mut v: Vec<VmRecord> = lock(&self.vms).values().cloned().collect();
        v.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        v
    }

    pub fn get(&self, id: &str) -> ApiResult<VmRecord> {
        lock(&self.vms).get(id).cloned().ok_or_else(|| ApiError::not_found("VM"))
    }

    fn name_taken(&self, name: &str, except: Option<&str>) -> bool {
        lock(&self.vms).values().any(|r| r.spec.name == name && Some(r.id.as_str()) != except)
    }

    pub fn create(&self, mut spec: VmSpec, now: u64) -> ApiResult<VmRecord> {
        spec.seal()?;
        if self.name_taken(&spec.name, None) {
            return Err(ApiError::field(409, "name", format!("name: a VM called {} already exists", spec.name)));
        }
        let id = crate::auth::random_hex(4);
        let mac = kvmos_contract::vm::derived_mac(&format!("kvmos-vm/{id}"));
        let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        let r = VmRecord { id: id.clone(), spec, created: now, mac, runs: Vec::new() };
        self.save(&r)?;
        lock(&self.vms).insert(id, r.clone());
        Ok(r)
    }

    pub fn update_spec(&self, id: &str, mut spec: VmSpec) -> ApiResult<VmRecord> {
        spec.seal()?;
        if self.name_taken(&spec.name, Some(id)) {
            return Err(ApiError::field(409, "name", format!("name: a VM called {} already exists", spec.name)));
        }
        self.modify(id, |r| r.spec = spec)
    }

    /// Applies a change and saves it; the in-memory copy changes only if
    /// the save succeeded.
    pub fn modify(&self, id: &str, f: impl FnOnce(&mut VmRecord)) -> ApiResult<VmRecord> {
        let mut vms = lock(&self.vms);
        let mut r = vms.get(id).cloned().ok_or_else(|| ApiError::not_found("VM"))?;
        f(&mut r);
        if r.runs.len() > MAX_RUNS {
            let extra = r.runs.len() - MAX_RUNS;
            r.runs.drain(..extra);
        }
        self.save(&r)?;
        vms.insert(id.to_string(), r.clone());
        Ok(r)
    }

    pub fn delete(&self, id: &str) -> ApiResult<()> {
        let mut vms = lock(&self.vms);
        if vms.remove(id).is_none() {
            return Err(ApiError::not_found("VM"));
        }
        let vars = self.uefi_vars(id);
        if vars.exists() {
            store::remove(&vars).map_err(ApiError::from)?;
        }
        store::remove(&self.dir.join(format!("{id}.json"))).map_err(ApiError::from)
    }

    /// Where a UEFI VM keeps its UEFI variables (boot entries): its own
    /// copy of OVMF's variable store, beside its definition.
    pub fn uefi_vars(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.OVMF_VARS.fd"))
    }

    /// The VM's variable store, made from the firmware's empty one the
    /// first time the VM starts with UEFI.
    pub fn ensure_uefi_vars(&self, id: &str) -> ApiResult<PathBuf> {
        use kvmos_contract::firmware::{find, OVMF_VARS_FILE};
        let path = self.uefi_vars(id);
        if path.exists() {
            return Ok(path);
        }
        let template = find(OVMF_VARS_FILE).ok_or_else(|| {
            ApiError::field(409, "boot.firmware", "boot.firmware: UEFI firmware (OVMF) is not installed on this host")
        })?;
        let bytes = std::fs::read(&template).map_err(ApiError::internal)?;
        store::write_atomic(&path, &bytes, 0o600).map_err(ApiError::from)?;
        Ok(path)
    }

    /// VMs whose definition uses the image.
    pub fn users_of(&self, image: &str) -> Vec<String> {
        lock(&self.vms)
            .values()
            .filter(|r| {
                r.spec.disks.iter().any(|d| d.image == image)
                    || matches!(&r.spec.boot, Boot::Kernel { kernel, initrd } if kernel == image || initrd.as_deref() == Some(image))
            })
            .map(|r| r.spec.name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Images) {
        let dir = tempfile::tempdir().unwrap();
        let guests = dir.path().join("guests");
        std::fs::create_dir_all(guests.join("demo")).unwrap();
        std::fs::write(
            guests.join("demo/guest.json"),
            r#"{"name":"demo","description":"d","kernel":"bzImage","initrd":"i","cmdline":"console=ttyS0","memory_mib":128,"vcpus":1}"#,
        )
        .unwrap();
        let images = Images::new(dir.path(), &guests, 1 << 30).unwrap();
        (dir, images)
    }

    fn spec() -> VmSpec {
        VmSpec {
            name: "web1".into(),
            vcpus: 1,
            memory_mib: 128,
            boot: Boot::Guest { guest: "demo".into() },
            cmdline: None,
            disks: vec![],
            boot_order: vec![],
            network: false,
            autostart: false,
            cpu_weight: None,
            cloud_init: None,
        }
    }

    #[test]
    fn each_mistake_names_its_field() {
        let (_dir, images) = setup();
        let host = HostCapacity { cpus: 2, mem_available_mib: 1024 };
        assert!(spec().validate(&images, host).is_ok());
        let field = |s: VmSpec| s.validate(&images, host).unwrap_err().field.unwrap();
        assert_eq!(field(VmSpec { name: "Web 1".into(), ..spec() }), "name");
        assert_eq!(field(VmSpec { name: "x".repeat(33), ..spec() }), "name");
        assert_eq!(field(VmSpec { cpu_weight: Some(0), ..spec() }), "cpu_weight");
        assert_eq!(field(VmSpec { cpu_weight: Some(10_001), ..spec() }), "cpu_weight");
        assert!(VmSpec { cpu_weight: Some(10_000), ..spec() }.validate(&images, host).is_ok());
        assert_eq!(field(VmSpec { vcpus: 3, ..spec() }), "vcpus");
        assert_eq!(field(VmSpec { vcpus: 0, ..spec() }), "vcpus");
        assert_eq!(field(VmSpec { memory_mib: 1024, ..spec() }), "memory_mib");
        assert_eq!(field(VmSpec { boot: Boot::Guest { guest: "nope".into() }, ..spec() }), "boot.guest");
        assert_eq!(field(VmSpec { boot: Boot::Kernel { kernel: "k".into(), initrd: None }, ..spec() }), "boot.kernel");
        let disk = DiskSpec { image: "missing".into(), ..Default::default() };
        assert_eq!(field(VmSpec { disks: vec![disk], ..spec() }), "disks[0].image");
    }

    #[test]
    fn the_command_line_limit_is_the_vmms() {
        let (_dir, images) = setup();
        let host = HostCapacity { cpus: 2, mem_available_mib: 1024 };
        let disk = DiskSpec { image: "web1-disk".into(), size_mib: Some(64), ..Default::default() };
        let with =
            |len: usize| VmSpec { cmdline: Some("x".repeat(len)), disks: vec![disk.clone()], network: true, ..spec() };
        // A disk, the NIC and virtio-rng: what the VMM adds for three devices.
        let max = kvmos_contract::vm::cmdline_room(3);
        assert!(with(max).validate(&images, host).is_ok());
        let e = with(max + 1).validate(&images, host).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("cmdline"));
        assert!(e.message.contains(&format!("at most {max}")), "{}", e.message);
    }

    #[tokio::test]
    async fn firmware_boots_take_disks_isos_and_a_boot_order() {
        let (_dir, images) = setup();
        let host = HostCapacity { cpus: 2, mem_available_mib: 1024 };
        let mut iso = vec![0u8; 0x8800];
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        let body = futures_util::stream::iter(vec![Ok::<_, String>(bytes::Bytes::from(iso))]);
        images.upload("installer.iso", ImageKind::Iso, None, body).await.unwrap();
        let new_disk = DiskSpec { image: "web1-disk".into(), size_mib: Some(64), ..Default::default() };
        let iso_disk = DiskSpec { image: "installer.iso".into(), read_only: true, ..Default::default() };
        let pc = VmSpec {
            boot: Boot::Firmware { firmware: Firmware::Uefi },
            disks: vec![new_disk.clone(), iso_disk.clone()],
            boot_order: vec![1, 0],
            ..spec()
        };
        assert!(pc.validate(&images, host).is_ok());
        let err = |s: VmSpec| s.validate(&images, host).unwrap_err();
        let e = err(VmSpec { boot_order: vec![2], ..pc.clone() });
        assert_eq!(e.field.as_deref(), Some("boot_order[0]"));
        assert!(e.message.contains("no disk 2"), "{}", e.message);
        assert_eq!(err(VmSpec { boot_order: vec![0, 0], ..pc.clone() }).field.as_deref(), Some("boot_order[1]"));
        assert_eq!(err(VmSpec { cmdline: Some("quiet".into()), ..pc.clone() }).field.as_deref(), Some("cmdline"));
        assert_eq!(err(VmSpec { disks: vec![], boot_order: vec![], ..pc.clone() }).field.as_deref(), Some("disks"));
        // An ISO is for firmware boots; a boot order too.
        assert_eq!(err(VmSpec { disks: vec![iso_disk.clone()], ..spec() }).field.as_deref(), Some("disks[0].image"));
        assert_eq!(err(VmSpec { boot_order: vec![0], ..spec() }).field.as_deref(), Some("boot_order"));
        // One CD-ROM drive per ISO, four at most.
        let five = VmSpec { disks: vec![iso_disk.clone(); 5], boot_order: vec![], ..pc.clone() };
        let e = err(five);
        assert_eq!(e.field.as_deref(), Some("disks[4].image"));
        assert!(e.message.contains("at most 4 ISOs"), "{}", e.message);
        // IDE disks: firmware boots only, not for ISOs, sharing the four drives with them.
        let ide = DiskSpec { bus: DiskBus::Ide, ..new_disk.clone() };
        assert!(VmSpec { disks: vec![ide.clone(), iso_disk.clone()], ..pc.clone() }.validate(&images, host).is_ok());
        let e = err(VmSpec { disks: vec![ide.clone()], boot_order: vec![], ..spec() });
        assert!(e.field.as_deref() == Some("disks[0].bus") && e.message.contains("use virtio"), "{}", e.message);
        let e = err(VmSpec {
            disks: vec![DiskSpec { bus: DiskBus::Ide, ..iso_disk.clone() }],
            boot_order: vec![],
            ..pc.clone()
        });
        assert!(e.message.contains("CD-ROM drive; leave bus out"), "{}", e.message);
        let three = vec![iso_disk.clone(), iso_disk.clone(), iso_disk.clone()];
        let e = err(VmSpec { disks: [three, vec![ide.clone(), ide]].concat(), boot_order: vec![], ..pc.clone() });
        assert!(
            e.field.as_deref() == Some("disks[4].image") && e.message.contains("ISOs and IDE disks"),
            "{}",
            e.message
        );
    }

    #[test]
    fn definitions_survive_a_reload_and_names_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let store = VmStore::load(dir.path()).unwrap();
        let r = store.create(spec(), 1).unwrap();
        assert_eq!(store.create(spec(), 2).unwrap_err().status, 409);
        store
            .modify(&r.id, |r| r.runs.push(Run { started: 1, ended: Some(2), exit_code: Some(0), reason: None }))
            .unwrap();
        let again = VmStore::load(dir.path()).unwrap();
        let loaded = again.get(&r.id).unwrap();
        assert_eq!(loaded.spec, spec());
        assert_eq!(loaded.mac, r.mac);
        assert_eq!(loaded.runs.len(), 1);
        again.delete(&r.id).unwrap();
        assert!(VmStore::load(dir.path()).unwrap().list().is_empty());
    }
}
