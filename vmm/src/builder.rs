//! Building a VM, top to bottom, the way Firecracker's builder reads. There
//! are two machines, and each has one function that tells its whole story:
//!
//! - [`build_linux_vm`], the direct-boot machine: memory, the KVM VM, the
//!   legacy devices, virtio-mmio devices, the kernel and its boot data, the
//!   vCPUs in the kernel's entry state;
//! - [`build_pc_vm`], the PC machine (QEMU's i440FX "pc"): memory around the
//!   VGA window, the PC's ISA devices, fw_cfg, the i440FX/PIIX chipset (with
//!   its IDE controller and CD-ROM drives) and virtio-pci devices on PCI bus 0, the firmware at the top of 4 GiB, and
//!   vCPUs left in their reset state, so the first instruction is the
//!   firmware's reset vector.
//!
//! [`build_machine`] is the direct-boot machine before any guest code is
//! chosen, which the tests share with hand-assembled guests.

use crate::arch::{acpi, boot, cpuid, firmware, layout, regs};
use crate::config::{ConfigError, FirmwareConfig, SerialConfig, VmConfig};
use crate::console::Console;
use crate::devices::acpi_pm::{self, AcpiPm};
use crate::devices::bus::{Bus, BusDevice};
use crate::devices::chipset::{self, i440fx::HostBridge, piix3::IsaBridge, piix4_pm::PowerManagement};
use crate::devices::display::stdvga::StdVga;
use crate::devices::flash::Flash;
use crate::devices::fw_cfg::{FwCfg, FwCfgError};
use crate::devices::ide::ata::AtaDisk;
use crate::devices::ide::{self, atapi, Ide, IdeFunction};
use crate::devices::legacy::{boot_marker::BootMarker, cmos::Cmos, i8042::I8042, port92::Port92, serial::SerialDevice};
use crate::devices::pci::msix::{Msix, MsixError};
use crate::devices::pci::root::{devfn, PciRoot};
use crate::devices::virtio::block::{open_locked, Block, OpenError};
use crate::devices::virtio::input::{Tablet, TabletHandle};
use crate::devices::virtio::mmio::{reg, MmioTransport};
use crate::devices::virtio::pci::VirtioPci;
use crate::devices::virtio::{net::Net, rng::Rng, Interrupt, VirtioDevice, VirtioTransport};
use crate::exit::ExitSignal;
use crate::timeline;
use crate::vstate::irq_routing::IrqRouting;
use crate::vstate::memory;
use crate::vstate::vcpu::{Vcpu, VcpuControl, VcpuCounters};
use crate::vstate::vm::{Vm, VmError};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vm_memory::Bytes;
use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, displaydoc::Display, thiserror::Error)]
pub enum BuildError {
    /// {0}
    Config(ConfigError),
    /// cannot allocate {0} MiB of guest memory: {1}
    Memory(u64, String),
    /// {0}
    Vm(#[from] VmError),
    /// cannot create an event fd: {0}
    EventFd(std::io::Error),
    /// cannot wire interrupt {0}: {1}
    Irq(u32, kvm_ioctls::Error),
    /// device layout: {0}
    Bus(String),
    /// {0}
    Boot(#[from] boot::BootError),
    /// cannot write the ACPI tables: {0}
    Acpi(vm_memory::GuestMemoryError),
    /// cannot create vCPU {0}: {1}
    CreateVcpu(u8, kvm_ioctls::Error),
    /// cannot set up vCPU {0}: {1}
    SetupVcpu(u8, regs::RegsError),
    /// vCPU {0}: {1}
    Tsc(u8, crate::arch::tsc::TscError),
    /// KVM cannot report its CPUID: {0}
    Cpuid(kvm_ioctls::Error),
    /// KVM refused the CPUID of vCPU {0}: {1}
    SetCpuid(u8, kvm_ioctls::Error),
    /// cannot set up MSI-X: {0}
    Msix(#[from] MsixError),
    /// KVM refused the interrupt routing: {0}
    Routing(kvm_ioctls::Error),
    /// fw_cfg: {0}
    FwCfg(#[from] FwCfgError),
}

/// A VM with its devices and vCPUs, ready to run.
pub struct Machine {
    pub vm: Vm,
    pub vcpus: Vec<Vcpu>,
    pub mmio_bus: Arc<Bus>,
    pub console: Console,
    pub serial: Arc<Mutex<SerialDevice>>,
    pub acpi_pm: Arc<Mutex<AcpiPm>>,
    /// The keyboard controller, which VNC clients type into.
    pub i8042: Arc<Mutex<I8042>>,
    pub exit: Arc<ExitSignal>,
    pub control: Arc<VcpuControl>,
    pub counters: Arc<VcpuCounters>,
    pub boot_marker_us: Arc<AtomicU64>,
    pub started: Instant,
    /// `virtio_mmio.device=` arguments that tell a Linux guest where its
    /// virtio devices are.
    pub virtio_cmdline: Vec<String>,
    /// The virtio devices, for the event loop.
    pub virtio: Vec<VirtioSlot>,
    /// The PC's RTC, whose interrupt timer the event loop watches.
    pub rtc: Option<Arc<Mutex<Cmos>>>,
    /// The PC's display adapter, which the VNC server and screenshots show.
    pub display: Option<Arc<Mutex<StdVga>>>,
    /// The PC's virtio tablet, which gets the VNC pointer once the guest
    /// drives it.
    pub tablet: Option<TabletHandle>,
    /// The PC's IDE channels, whose CD-ROM media the API changes.
    pub ide: Option<Arc<Ide>>,
}

/// One virtio device as the event loop sees it: its transport and one
/// ioeventfd per queue, which KVM signals when the guest notifies the queue
/// (so a notification costs no exit to this process's vCPU thread).
pub struct VirtioSlot {
    pub transport: Arc<Mutex<dyn VirtioTransport>>,
    pub queue_evts: Vec<EventFd>,
    /// A PCI device's INTx line: KVM signals the resample fd when the
    /// guest ends the interrupt, and the line is raised again while the
    /// device still has an interrupt pending (level-triggered semantics).
    pub intx: Option<IntxLine>,
}

pub struct IntxLine {
    pub resample: EventFd,
    pub interrupt: Arc<Interrupt>,
}

/// Everything but the guest code: memory, VM, legacy and virtio devices,
/// vCPUs.
pub fn build_machine(
    memory_mib: u64,
    vcpu_count: u8,
    console: Console,
    started: Instant,
    virtio: Vec<Box<dyn VirtioDevice>>,
) -> Result<Machine, BuildError> {
    let guest_memory = create_guest_memory(memory_mib)?;
    let vm = Vm::new(guest_memory)?;
    timeline::mark(started, "KVM VM created");
    let base = attach_base_devices(&vm, console, started, false)?;
    insert(&base.io_bus, u64::from(layout::PM1A_EVT_PORT), acpi_pm::LEN, base.acpi_pm.clone())?;
    let (virtio_cmdline, virtio) = attach_virtio_devices(&vm, &base.mmio_bus, virtio)?;
    assemble(vm, vcpu_count, base, virtio_cmdline, virtio, None)
}

/// What both machines have: the buses, the exit signal, COM1, the i8042
/// (with a PS/2 mouse on the PC), the boot marker, and the ACPI registers
/// (placed by the caller).
struct BaseDevices {
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    exit: Arc<ExitSignal>,
    console: Console,
    serial: Arc<Mutex<SerialDevice>>,
    boot_marker_us: Arc<AtomicU64>,
    acpi_pm: Arc<Mutex<AcpiPm>>,
    i8042: Arc<Mutex<I8042>>,
    started: Instant,
}

fn attach_base_devices(vm: &Vm, console: Console, started: Instant, mouse: bool) -> Result<BaseDevices, BuildError> {
    let exit = Arc::new(ExitSignal::new().map_err(BuildError::EventFd)?);
    let io_bus = Arc::new(Bus::default());
    let mmio_bus = Arc::new(Bus::default());
    let serial = attach_serial(vm, &io_bus, console.clone())?;
    let i8042 = attach_i8042(vm, &io_bus, Arc::clone(&exit), mouse)?;
    let boot_marker_us = attach_boot_marker(&io_bus, started)?;
    let acpi_pm = new_acpi_pm(vm, Arc::clone(&exit));
    Ok(BaseDevices { io_bus, mmio_bus, exit, console, serial, boot_marker_us, acpi_pm, i8042, started })
}

/// Creates the vCPUs on the buses and puts the machine together.
fn assemble(
    vm: Vm,
    vcpu_count: u8,
    base: BaseDevices,
    virtio_cmdline: Vec<String>,
    virtio: Vec<VirtioSlot>,
    rtc: Option<Arc<Mutex<Cmos>>>,
) -> Result<Machine, BuildError> {
    let control = Arc::new(VcpuControl::default());
    let counters = Arc::new(VcpuCounters::default());
    let vcpus = create_vcpus(&vm, vcpu_count, &base.io_bus, &base.mmio_bus, &base.exit, &control, &counters)?;
    Ok(Machine {
        vm,
        vcpus,
        mmio_bus: base.mmio_bus,
        console: base.console,
        serial: base.serial,
        acpi_pm: base.acpi_pm,
        i8042: base.i8042,
        exit: base.exit,
        control,
        counters,
        boot_marker_us: base.boot_marker_us,
        started: base.started,
        virtio_cmdline,
        virtio,
        rtc,
        display: None,
        tablet: None,
        ide: None,
    })
}

/// The VM the configuration asks for (validated by the caller): a PC when
/// it names firmware, the direct-boot machine when it names a kernel.
pub fn build_vm(config: &VmConfig, started: Instant) -> Result<Machine, BuildError> {
    match &config.firmware {
        Some(firmware) => build_pc_vm(config, firmware, started),
        None => build_linux_vm(config, started),
    }
}

/// The VM's virtio devices, in the order the guest sees them: disks, NICs,
/// the entropy source.
fn open_virtio_devices(config: &VmConfig) -> Result<Vec<Box<dyn VirtioDevice>>, BuildError> {
    let mut virtio: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for (index, disk) in config.disks.iter().enumerate().filter(|(_, d)| d.media.is_disk()) {
        virtio.push(Box::new(open_disk(index, disk)?));
    }
    for (index, net) in config.nets.iter().enumerate() {
        virtio.push(Box::new(open_net(index, net, &config.vm_id)?));
    }
    if config.rng {
        virtio.push(Box::new(Rng::default()));
    }
    Ok(virtio)
}

/// validate() keeps vcpus within MAX_VCPUS, so it fits the APIC IDs.
fn vcpu_count(config: &VmConfig) -> u8 {
    u8::try_from(config.vcpus).unwrap_or(u8::MAX)
}

/// A Linux guest per the configuration (validated by the caller).
pub fn build_linux_vm(config: &VmConfig, started: Instant) -> Result<Machine, BuildError> {
    let console = Console::new(matches!(config.serial, SerialConfig::Stdio));
    let virtio = open_virtio_devices(config)?;
    let vcpus = vcpu_count(config);
    let machine = build_machine(config.memory_mib, vcpus, console, started, virtio)?;
    timeline::mark(started, "machine and devices created");
    let kernel_path = config.kernel.as_deref().ok_or(BuildError::Config(ConfigError::NoBoot))?;
    let kernel = boot::load_kernel(&machine.vm.memory, kernel_path)?;
    timeline::mark(started, "kernel loaded");
    let initrd = match &config.initrd {
        Some(p) => Some(boot::load_initrd(&machine.vm.memory, p, config.memory_mib << 20)?),
        None => None,
    };
    timeline::mark(started, "initrd loaded");
    let rsdp = acpi::write_tables(&machine.vm.memory, vcpus).map_err(BuildError::Acpi)?;
    let cmdline = std::iter::once(config.cmdline.as_str())
        .chain(machine.virtio_cmdline.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    boot::write_boot_info(&machine.vm.memory, &kernel, &cmdline, initrd, rsdp)?;
    timeline::mark(started, "ACPI tables and boot parameters written");
    configure_vcpus_for_linux(&machine, &kernel)?;
    timeline::mark(started, "vCPUs configured (CPUID, registers)");
    Ok(machine)
}

/// The serial a disk shows the guest: its `id`, or the file name.
fn disk_serial(disk: &crate::config::DiskConfig) -> String {
    disk.id
        .clone()
        .unwrap_or_else(|| disk.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
}

/// The configuration error for disk `index` that could not be opened.
fn disk_open_error(index: usize, disk: &crate::config::DiskConfig, e: OpenError) -> BuildError {
    let path = disk.path.display().to_string();
    BuildError::Config(match e {
        OpenError::Locked => ConfigError::DiskLocked { index, path },
        OpenError::Open(err) => ConfigError::DiskOpen { index, path, reason: err.to_string() },
    })
}

/// Opens and locks one virtio disk; the guest sees `id` (or the file
/// name) as its serial.
fn open_disk(index: usize, disk: &crate::config::DiskConfig) -> Result<Block, BuildError> {
    Block::open(&disk.path, disk.read_only, &disk_serial(disk)).map_err(|e| disk_open_error(index, disk, e))
}

/// Opens and locks the IDE hard disks.
fn open_ide_disks(config: &VmConfig) -> Result<Vec<AtaDisk>, BuildError> {
    let disks = config.disks.iter().enumerate().filter(|(_, d)| d.media == crate::config::DiskMedia::Ide);
    disks
        .map(|(index, disk)| {
            let file = open_locked(&disk.path, disk.read_only).map_err(|e| disk_open_error(index, disk, e))?;
            AtaDisk::new(file, disk.read_only, disk_serial(disk))
                .map_err(|e| disk_open_error(index, disk, OpenError::Open(e)))
        })
        .collect()
}

/// Opens a NIC's tap; the MAC is the configured one or one derived from
/// the VM's ID, so it is the same at every start.
fn open_net(index: usize, net: &crate::config::NetConfig, vm_id: &str) -> Result<Net, BuildError> {
    let mac = match &net.mac {
        Some(m) => crate::config::parse_mac(m)
            .ok_or_else(|| BuildError::Config(ConfigError::BadMac { index, mac: m.clone() }))?,
        None => crate::config::derived_mac(&format!("{vm_id}/{index}")),
    };
    let tap = crate::tap::Tap::open(&net.tap, crate::devices::virtio::net::HDR_LEN)
        .map_err(|e| BuildError::Config(ConfigError::TapOpen { index, tap: net.tap.clone(), reason: e.to_string() }))?;
    Ok(Net::new(tap, mac))
}

fn create_guest_memory(memory_mib: u64) -> Result<memory::GuestMemory, BuildError> {
    memory::create(memory_mib << 20).map_err(|e| BuildError::Memory(memory_mib, e.to_string()))
}

fn insert(bus: &Bus, base: u64, len: u64, dev: Arc<Mutex<dyn BusDevice>>) -> Result<(), BuildError> {
    bus.insert(base, len, dev).map_err(|e| BuildError::Bus(e.to_string()))
}

fn create_vcpus(
    vm: &Vm,
    count: u8,
    io_bus: &Arc<Bus>,
    mmio_bus: &Arc<Bus>,
    exit: &Arc<ExitSignal>,
    control: &Arc<VcpuControl>,
    counters: &Arc<VcpuCounters>,
) -> Result<Vec<Vcpu>, BuildError> {
    (0..count)
        .map(|index| {
            let fd = vm.fd.create_vcpu(u64::from(index)).map_err(|e| BuildError::CreateVcpu(index, e))?;
            check_tsc(&fd, index)?;
            Ok(Vcpu {
                fd,
                index,
                io_bus: Arc::clone(io_bus),
                mmio_bus: Arc::clone(mmio_bus),
                exit: Arc::clone(exit),
                control: Arc::clone(control),
                counters: Arc::clone(counters),
                tally: Default::default(),
            })
        })
        .collect()
}

/// Makes sure the host's KVM keeps the vCPU's TSC running (see
/// [`crate::arch::tsc`]): otherwise the guest's timer and clock fail.
fn check_tsc(fd: &kvm_ioctls::VcpuFd, index: u8) -> Result<(), BuildError> {
    use crate::arch::tsc::{ensure_tsc_runs, TscCheck};
    if let TscCheck::Repaired { from_khz, to_khz } = ensure_tsc_runs(fd).map_err(|e| BuildError::Tsc(index, e))? {
        tracing::warn!(
            vcpu = index,
            "the host's KVM kept this vCPU's TSC standing still at {from_khz} kHz (the host's TSC calibration \
             changed after KVM loaded); at {to_khz} kHz it runs"
        );
    }
    Ok(())
}

fn attach_serial(vm: &Vm, io_bus: &Bus, console: Console) -> Result<Arc<Mutex<SerialDevice>>, BuildError> {
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
    vm.fd.register_irqfd(&irq, layout::COM1_IRQ).map_err(|e| BuildError::Irq(layout::COM1_IRQ, e))?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(irq, console)));
    insert(io_bus, u64::from(layout::COM1_PORT), 8, serial.clone())?;
    Ok(serial)
}

/// The keyboard controller on IRQ 1 (and 12 for the mouse).
fn attach_i8042(vm: &Vm, io_bus: &Bus, exit: Arc<ExitSignal>, mouse: bool) -> Result<Arc<Mutex<I8042>>, BuildError> {
    let fd = Arc::clone(&vm.fd);
    let irq = Box::new(move |line: u32, level: bool| {
        if let Err(e) = fd.set_irq_line(line, level) {
            tracing::warn!("cannot drive IRQ {line} of the i8042: {e}");
        }
    });
    let i8042 = Arc::new(Mutex::new(I8042::new(exit, irq, mouse)));
    insert(io_bus, u64::from(layout::I8042_DATA_PORT), 5, i8042.clone())?;
    Ok(i8042)
}

fn attach_boot_marker(io_bus: &Bus, started: Instant) -> Result<Arc<AtomicU64>, BuildError> {
    let marked = Arc::new(AtomicU64::new(0));
    let dev = BootMarker::new(started, Arc::clone(&marked));
    insert(io_bus, u64::from(layout::BOOT_MARKER_PORT), 1, Arc::new(Mutex::new(dev)))?;
    Ok(marked)
}

/// The ACPI registers, driving the SCI line; the caller places them.
fn new_acpi_pm(vm: &Vm, exit: Arc<ExitSignal>) -> Arc<Mutex<AcpiPm>> {
    let fd = Arc::clone(&vm.fd);
    let set_sci = Box::new(move |level: bool| {
        if let Err(e) = fd.set_irq_line(layout::SCI_IRQ, level) {
            tracing::warn!("cannot drive the ACPI SCI: {e}");
        }
    });
    Arc::new(Mutex::new(AcpiPm::new(set_sci, exit)))
}

/// Each virtio device gets a 4 KiB MMIO window, an IRQ from
/// [`layout::VIRTIO_IRQ_BASE`] up and an ioeventfd per queue; Linux learns
/// of them from the command line.
fn attach_virtio_devices(
    vm: &Vm,
    mmio_bus: &Bus,
    devices: Vec<Box<dyn VirtioDevice>>,
) -> Result<(Vec<String>, Vec<VirtioSlot>), BuildError> {
    let mut args = Vec::new();
    let mut slots = Vec::new();
    for (i, dev) in devices.into_iter().enumerate() {
        let irq = layout::VIRTIO_IRQ_BASE + i as u32;
        if irq > layout::VIRTIO_IRQ_LAST {
            return Err(BuildError::Bus(format!(
                "too many virtio devices (at most {})",
                layout::VIRTIO_IRQ_LAST - layout::VIRTIO_IRQ_BASE + 1
            )));
        }
        let base = layout::VIRTIO_MMIO_START + i as u64 * layout::VIRTIO_MMIO_SIZE;
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
        vm.fd.register_irqfd(&irqfd, irq).map_err(|e| BuildError::Irq(irq, e))?;
        let transport = MmioTransport::new(dev, vm.memory.clone(), Arc::new(Interrupt::new(irqfd)));
        let queue_evts = register_queue_notifiers(vm, base, transport.queue_count())?;
        let transport = Arc::new(Mutex::new(transport));
        insert(mmio_bus, base, layout::VIRTIO_MMIO_SIZE, transport.clone())?;
        args.push(format!("virtio_mmio.device=4K@{base:#x}:{irq}"));
        slots.push(VirtioSlot { transport, queue_evts, intx: None });
    }
    Ok((args, slots))
}

/// One ioeventfd per queue on the QueueNotify register, matched on the
/// queue index the driver writes.
fn register_queue_notifiers(vm: &Vm, base: u64, queues: usize) -> Result<Vec<EventFd>, BuildError> {
    let addr = kvm_ioctls::IoEventAddress::Mmio(base + reg::QUEUE_NOTIFY);
    (0..queues as u32)
        .map(|q| {
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
            vm.fd.register_ioevent(&evt, &addr, q).map_err(|e| BuildError::Irq(q, e))?;
            Ok(evt)
        })
        .collect()
}

fn configure_vcpus_for_linux(machine: &Machine, kernel: &boot::LoadedKernel) -> Result<(), BuildError> {
    let host = cpuid::HostCpuid::of(&machine.vm.kvm).map_err(BuildError::Cpuid)?;
    let count = machine.vcpus.len() as u8;
    for v in &machine.vcpus {
        let id = v.index;
        let cpuid = cpuid::for_vcpu(&host, id, count);
        v.fd.set_cpuid2(&cpuid).map_err(|e| BuildError::SetCpuid(id, e))?;
        let err = |e| BuildError::SetupVcpu(id, e);
        regs::setup_msrs(&v.fd).map_err(err)?;
        regs::setup_fpu(&v.fd).map_err(err)?;
        regs::setup_lint(&v.fd).map_err(err)?;
        match (id, kernel.pvh) {
            (0, true) => {
                regs::setup_pvh_regs(&v.fd, kernel.entry).map_err(err)?;
                regs::setup_pvh_sregs(&machine.vm.memory, &v.fd).map_err(err)?;
            }
            (0, false) => {
                regs::setup_regs(&v.fd, kernel.entry).map_err(err)?;
                regs::setup_sregs(&machine.vm.memory, &v.fd).map_err(err)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// The PC machine (QEMU's i440FX "pc" as SeaBIOS and OVMF know it): the
/// firmware finds the disks on PCI and boots them.
pub fn build_pc_vm(config: &VmConfig, firmware: &FirmwareConfig, started: Instant) -> Result<Machine, BuildError> {
    let console = Console::new(matches!(config.serial, SerialConfig::Stdio));
    let vcpu_count = vcpu_count(config);
    let ram = config.memory_mib << 20;
    let images = load_firmware(firmware)?;
    let guest_memory = memory::create_pc(ram).map_err(|e| BuildError::Memory(config.memory_mib, e.to_string()))?;
    let mut vm = Vm::new(guest_memory)?;
    let routing = Arc::new(IrqRouting::new(Arc::clone(&vm.fd)).map_err(BuildError::Routing)?);
    let base = attach_base_devices(&vm, console, started, true)?;
    let (io_bus, mmio_bus) = (Arc::clone(&base.io_bus), Arc::clone(&base.mmio_bus));
    attach_port92(&io_bus, Arc::clone(&base.exit))?;
    attach_debugcon(&io_bus, config)?;
    let rtc = attach_cmos(&vm, &io_bus, ram, vcpu_count)?;
    let mut root = PciRoot::new(Arc::clone(&io_bus), Arc::clone(&mmio_bus), Arc::clone(&base.exit));
    let pm_function = attach_chipset(&mut root, &io_bus, &base.acpi_pm);
    let ide = attach_ide(&vm, &io_bus, &mut root, open_ide_disks(config)?, open_cdroms(config)?)?;
    let display = attach_display(&mut vm, &io_bus, &mmio_bus, &mut root)?;
    let (tablet, tablet_handle) = Tablet::new();
    let mut devices = open_virtio_devices(config)?;
    devices.push(Box::new(tablet));
    let virtio = attach_virtio_pci(&vm, &routing, &mut root, devices)?;
    attach_pci_root(&io_bus, root)?;
    attach_fw_cfg(&vm, &io_bus, config, vcpu_count, pm_function)?;
    map_firmware(&mut vm, &mmio_bus, firmware, &images)?;
    let mut machine = assemble(vm, vcpu_count, base, Vec::new(), virtio, Some(rtc))?;
    machine.display = Some(display);
    machine.tablet = Some(tablet_handle);
    machine.ide = Some(ide);
    configure_vcpus_for_firmware(&machine.vm, &machine.vcpus)?;
    Ok(machine)
}

/// PCI configuration mechanism #1 and the reset control register.
fn attach_pci_root(io_bus: &Bus, root: PciRoot) -> Result<(), BuildError> {
    use crate::devices::pci::root::{CONFIG_ADDRESS_PORT, PORT_SPAN};
    insert(io_bus, u64::from(CONFIG_ADDRESS_PORT), PORT_SPAN, Arc::new(Mutex::new(root)))
}

/// The firmware's code, and OVMF's variable store.
struct FirmwareImages {
    code: Vec<u8>,
    vars: Option<Vec<u8>>,
}

fn load_firmware(firmware: &FirmwareConfig) -> Result<FirmwareImages, BuildError> {
    let config_err = |e: ConfigError| BuildError::Config(e);
    let code_path = firmware.code_path().map_err(|e| config_err(e.into()))?;
    match firmware {
        FirmwareConfig::Bios { .. } => {
            let code = firmware::load_bios(&code_path).map_err(|e| config_err(e.into()))?;
            Ok(FirmwareImages { code, vars: None })
        }
        FirmwareConfig::Uefi { vars, .. } => {
            let code = firmware::load_uefi_code(&code_path).map_err(|e| config_err(e.into()))?;
            firmware::check_uefi_vars(vars, code.len() as u64).map_err(|e| config_err(e.into()))?;
            let vars = std::fs::read(vars).map_err(|e| {
                config_err(firmware::FirmwareError::Read(vars.display().to_string(), e.to_string()).into())
            })?;
            Ok(FirmwareImages { code, vars: Some(vars) })
        }
    }
}

fn attach_port92(io_bus: &Bus, exit: Arc<ExitSignal>) -> Result<(), BuildError> {
    let port = crate::devices::legacy::port92::PORT;
    insert(io_bus, u64::from(port), 1, Arc::new(Mutex::new(Port92::new(exit))))
}

/// The firmware's debug console, logging to `firmware_log` if given.
fn attach_debugcon(io_bus: &Bus, config: &VmConfig) -> Result<(), BuildError> {
    use crate::devices::legacy::debugcon::{DebugCon, PORT};
    let out = match &config.firmware_log {
        Some(p) => Some(
            std::fs::File::create(p)
                .map_err(|e| BuildError::Config(ConfigError::FirmwareLog(p.display().to_string(), e.to_string())))?,
        ),
        None => None,
    };
    insert(io_bus, u64::from(PORT), 1, Arc::new(Mutex::new(DebugCon::new(out))))
}

/// The RTC on IRQ 8, with the memory sizes and CPU count the firmware
/// reads there.
fn attach_cmos(vm: &Vm, io_bus: &Bus, ram: u64, cpus: u8) -> Result<Arc<Mutex<Cmos>>, BuildError> {
    let low = memory::low_ram_end(ram);
    let high = ram - low;
    let fd = Arc::clone(&vm.fd);
    let irq = Box::new(move |level: bool| {
        if let Err(e) = fd.set_irq_line(layout::RTC_IRQ, level) {
            tracing::warn!("cannot drive the RTC interrupt: {e}");
        }
    });
    let mut cmos = Cmos::new(Some(Cmos::new_timer().map_err(BuildError::EventFd)?), irq);
    cmos.set_memory_and_cpus(low, high, cpus);
    let cmos = Arc::new(Mutex::new(cmos));
    let port = crate::devices::legacy::cmos::PORT;
    insert(io_bus, u64::from(port), crate::devices::legacy::cmos::PORT_LEN, cmos.clone())?;
    Ok(cmos)
}

/// The i440FX host bridge, the PIIX3 ISA bridge and the PIIX4 PM function
/// (which places the ACPI registers where the firmware puts PMBASE).
fn attach_chipset(root: &mut PciRoot, io_bus: &Arc<Bus>, acpi_pm: &Arc<Mutex<AcpiPm>>) -> Arc<Mutex<PowerManagement>> {
    use chipset::{HOST_BRIDGE_SLOT, PIIX3_ISA_FUNCTION, PIIX4_PM_FUNCTION, PIIX_SLOT};
    root.add(devfn(HOST_BRIDGE_SLOT, 0), Arc::new(Mutex::new(HostBridge::default())));
    root.add(devfn(PIIX_SLOT, PIIX3_ISA_FUNCTION), Arc::new(Mutex::new(IsaBridge::default())));
    let pm = Arc::new(Mutex::new(PowerManagement::new(Arc::clone(acpi_pm), Arc::clone(io_bus))));
    root.add(devfn(PIIX_SLOT, PIIX4_PM_FUNCTION), pm.clone());
    pm
}

/// The CD-ROM drives' media, opened read-only (a shared lock: an ISO may
/// be in many VMs at once).
fn open_cdroms(config: &VmConfig) -> Result<Vec<atapi::Cdrom>, BuildError> {
    let cdroms = config.disks.iter().enumerate().filter(|(_, d)| d.media == crate::config::DiskMedia::Cdrom);
    cdroms
        .map(|(index, disk)| {
            let path = disk.path.display().to_string();
            let fail = |reason: String| BuildError::Config(ConfigError::DiskOpen { index, path: path.clone(), reason });
            let file = std::fs::File::open(&disk.path).map_err(|e| fail(e.to_string()))?;
            let medium = atapi::Medium::new(file, path.clone()).map_err(|e| fail(e.to_string()))?;
            let serial = disk.id.clone().unwrap_or_else(|| format!("CD{index}"));
            Ok(atapi::Cdrom::new(Some(medium), serial))
        })
        .collect()
}

/// The PIIX's IDE function (00:01.1) and its two channels at their legacy
/// ports and ISA interrupts, the hard disks and CD-ROM drives in them.
fn attach_ide(
    vm: &Vm,
    io_bus: &Bus,
    root: &mut PciRoot,
    disks: Vec<AtaDisk>,
    cdroms: Vec<atapi::Cdrom>,
) -> Result<Arc<Ide>, BuildError> {
    use crate::devices::ide::channel::{CommandBlock, ControlBlock};
    let fd = Arc::clone(&vm.fd);
    let ide = Ide::new(disks, cdroms, move |line, level| {
        if let Err(e) = fd.set_irq_line(line, level) {
            tracing::warn!("cannot drive the IDE interrupt {line}: {e}");
        }
    });
    for (channel, &(command, control, _)) in ide.channels.iter().zip(ide::CHANNELS.iter()) {
        let cmd = Arc::new(Mutex::new(CommandBlock(Arc::clone(channel))));
        insert(io_bus, u64::from(command), ide::COMMAND_BLOCK_LEN, cmd)?;
        insert(io_bus, u64::from(control), 1, Arc::new(Mutex::new(ControlBlock(Arc::clone(channel)))))?;
    }
    root.add(devfn(chipset::PIIX_SLOT, ide::FUNCTION), Arc::new(Mutex::new(IdeFunction::default())));
    Ok(Arc::new(ide))
}

/// The standard VGA at 00:02.0 (where QEMU has it), with its legacy
/// ports and memory window; its framebuffer gets a memory slot of its own.
fn attach_display(
    vm: &mut Vm,
    io_bus: &Bus,
    mmio_bus: &Bus,
    root: &mut PciRoot,
) -> Result<Arc<Mutex<StdVga>>, BuildError> {
    use crate::devices::display::stdvga::{Legacy, LegacyRange};
    let slot = vm.new_slot();
    let vga = StdVga::new(Some(Arc::clone(&vm.fd)), slot)
        .map_err(|e| BuildError::Memory(crate::devices::display::stdvga::VRAM_SIZE as u64 >> 20, e.to_string()))?;
    let vga = Arc::new(Mutex::new(vga));
    for range in [LegacyRange::VgaPorts, LegacyRange::DispiPorts, LegacyRange::Window] {
        let (base, len) = range.span();
        let bus = if range == LegacyRange::Window { mmio_bus } else { io_bus };
        insert(bus, base, len, Arc::new(Mutex::new(Legacy { vga: Arc::clone(&vga), range })))?;
    }
    root.add(devfn(chipset::VGA_SLOT, 0), vga.clone());
    Ok(vga)
}

/// The PCI slot of the `index`th virtio device.
fn virtio_slot(index: usize) -> u8 {
    chipset::FIRST_DEVICE_SLOT + index as u8
}

/// Each virtio device on its own slot from [`chipset::FIRST_DEVICE_SLOT`]:
/// MSI-X with a vector per queue plus one for configuration changes, and
/// INTx on the slot's PIRQ pin through a resampling irqfd.
fn attach_virtio_pci(
    vm: &Vm,
    routing: &Arc<IrqRouting>,
    root: &mut PciRoot,
    devices: Vec<Box<dyn VirtioDevice>>,
) -> Result<Vec<VirtioSlot>, BuildError> {
    let max = 32 - usize::from(chipset::FIRST_DEVICE_SLOT);
    if devices.len() > max {
        return Err(BuildError::Bus(format!("too many PCI devices (at most {max})")));
    }
    let mut slots = Vec::new();
    for (i, dev) in devices.into_iter().enumerate() {
        let slot = virtio_slot(i);
        let gsi = chipset::piix3::intx_gsi(slot, 1);
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
        let resample = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
        vm.fd.register_irqfd_with_resample(&irqfd, &resample, gsi).map_err(|e| BuildError::Irq(gsi, e))?;
        let queues = dev.queue_max_sizes().len();
        let queue_evts: Vec<EventFd> = (0..queues)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<_, _>>()
            .map_err(BuildError::EventFd)?;
        let device_evts =
            queue_evts.iter().map(EventFd::try_clone).collect::<Result<Vec<_>, _>>().map_err(BuildError::EventFd)?;
        let msix = Msix::new(queues as u16 + 1, &vm.fd, Arc::clone(routing))?;
        let transport = VirtioPci::new(dev, vm.memory.clone(), irqfd, msix, Arc::clone(&vm.fd), device_evts);
        let interrupt = transport.interrupt();
        let transport = Arc::new(Mutex::new(transport));
        root.add(devfn(slot, 0), transport.clone());
        slots.push(VirtioSlot { transport, queue_evts, intx: Some(IntxLine { resample, interrupt }) });
    }
    Ok(slots)
}

/// The firmware's view of the machine through fw_cfg: memory map, boot
/// order, serial console, and the ACPI tables, built when the firmware
/// reads them so that they carry the PMBASE it programmed.
fn attach_fw_cfg(
    vm: &Vm,
    io_bus: &Bus,
    config: &VmConfig,
    cpus: u8,
    pm: Arc<Mutex<PowerManagement>>,
) -> Result<(), BuildError> {
    use crate::devices::fw_cfg;
    let ram = config.memory_mib << 20;
    let low = memory::low_ram_end(ram);
    let mut f = FwCfg::new(vm.memory.clone(), u16::from(cpus), ram, vm_uuid(&config.vm_id));
    f.add_file("etc/e820", e820(ram))?;
    f.add_file("bootorder", bootorder(config))?;
    // Without a bootable disk, SeaBIOS tries again after this many ms.
    f.add_file("etc/boot-fail-wait", 5000u32.to_le_bytes().to_vec())?;
    // SeaBIOS prints on COM1 as well as the screen (its "split mode").
    f.add_file("etc/sercon-port", layout::COM1_PORT.to_le_bytes().to_vec())?;
    add_vga_rom(&mut f)?;
    let platform = move || acpi::PcPlatform {
        vcpus: cpus,
        pm_base: pm.lock().unwrap_or_else(|p| p.into_inner()).pm_base().unwrap_or(0x600),
        pci_window_start: low as u32,
    };
    // One generator per file, each picking its part of the same tables.
    let platform = Arc::new(platform);
    type Part = fn(acpi::PcAcpi) -> Vec<u8>;
    let parts: [(&str, Part); 3] =
        [(acpi::FILE_RSDP, |t| t.rsdp), (acpi::FILE_TABLES, |t| t.tables), (acpi::FILE_LOADER, |t| t.loader)];
    for (name, part) in parts {
        let p = Arc::clone(&platform);
        f.add_generated_file(name, Arc::new(move || part(acpi::pc_tables(&p()))))?;
    }
    insert(io_bus, u64::from(fw_cfg::PORT), fw_cfg::PORT_LEN, Arc::new(Mutex::new(f)))
}

/// The standard VGA's option ROM, which SeaBIOS runs to get a screen: the
/// one Debian's seabios package ships. Without it the VM still runs, on the
/// serial console only.
fn add_vga_rom(f: &mut FwCfg) -> Result<(), BuildError> {
    use crate::devices::display::stdvga::{ROM_FILE, VGABIOS_FILE};
    let Some(path) = firmware::find(VGABIOS_FILE) else {
        tracing::warn!(
            "no {VGABIOS_FILE} found (install Debian's seabios package): the BIOS will not draw on the screen"
        );
        return Ok(());
    };
    match std::fs::read(&path) {
        Ok(rom) => f.add_file(ROM_FILE, rom)?,
        Err(e) => tracing::warn!("cannot read {}: {e}; the BIOS will not draw on the screen", path.display()),
    }
    Ok(())
}

/// A stable UUID for the VM, from its ID (SMBIOS and firmware show it).
fn vm_uuid(vm_id: &str) -> [u8; 16] {
    let fnv = crate::config::fnv1a;
    let mut u = [0u8; 16];
    u[..8].copy_from_slice(&fnv(&format!("uuid-a/{vm_id}")).to_le_bytes());
    u[8..].copy_from_slice(&fnv(&format!("uuid-b/{vm_id}")).to_le_bytes());
    u[6] = (u[6] & 0x0f) | 0x40; // version 4
    u[8] = (u[8] & 0x3f) | 0x80; // RFC 4122 variant
    u
}

/// `etc/e820`: RAM below the PCI hole and above 4 GiB, as QEMU lists it
/// (the firmware carves out the legacy areas itself), and the pages KVM
/// keeps for itself.
fn e820(ram: u64) -> Vec<u8> {
    const RAM: u32 = 1;
    const RESERVED: u32 = 2;
    let low = memory::low_ram_end(ram);
    let mut entries = vec![(0, low, RAM)];
    if ram > low {
        entries.push((layout::MMIO_HOLE_END, ram - low, RAM));
    }
    entries.push((layout::KVM_IDENTITY_MAP_START, layout::KVM_PRIVATE_END - layout::KVM_IDENTITY_MAP_START, RESERVED));
    entries
        .iter()
        .flat_map(|&(addr, len, kind): &(u64, u64, u32)| {
            addr.to_le_bytes().into_iter().chain(len.to_le_bytes()).chain(kind.to_le_bytes())
        })
        .collect()
}

/// `bootorder`: OpenFirmware paths of the disks and CD-ROM drives, the
/// configured order first (all in order when none is given), one per line.
fn bootorder(config: &VmConfig) -> Vec<u8> {
    let mut order = config.boot_order.clone();
    order.extend((0..config.disks.len()).filter(|d| !config.boot_order.contains(d)));
    let mut text: String = order.iter().map(|&d| boot_path(config, d) + "\n").collect();
    text.push('\0');
    text.into_bytes()
}

/// Where disk `index` is: a virtio disk's slot (virtio disks come first,
/// in order), or an IDE disk's or CD-ROM's IDE position.
fn boot_path(config: &VmConfig, index: usize) -> String {
    use crate::config::DiskMedia;
    let count =
        |media: DiskMedia, disks: &[crate::config::DiskConfig]| disks.iter().filter(|d| d.media == media).count();
    let media = config.disks[index].media;
    let same_kind = count(media, &config.disks[..index]);
    let (ide_disks, cdroms) =
        ide::placement(count(DiskMedia::Ide, &config.disks), count(DiskMedia::Cdrom, &config.disks));
    match media {
        DiskMedia::Disk => format!("/pci@i0cf8/scsi@{:x}/disk@0,0", virtio_slot(same_kind)),
        DiskMedia::Ide => ide::boot_path(chipset::PIIX_SLOT, ide_disks[same_kind]),
        DiskMedia::Cdrom => ide::boot_path(chipset::PIIX_SLOT, cdroms[same_kind]),
    }
}

/// The firmware below 4 GiB, and its last 128 KiB in the legacy BIOS area
/// as well. OVMF's variables sit right below its code, in a flash chip
/// that writes them through to the VM's variable file.
fn map_firmware(
    vm: &mut Vm,
    mmio_bus: &Bus,
    config: &FirmwareConfig,
    images: &FirmwareImages,
) -> Result<(), BuildError> {
    let code_at = firmware::FLASH_END - images.code.len() as u64;
    vm.map_rom(code_at, &images.code)?;
    if let (Some(vars), FirmwareConfig::Uefi { vars: path, .. }) = (&images.vars, config) {
        let at = code_at - vars.len() as u64;
        let rom = vm.map_rom(at, vars)?;
        let file = std::fs::OpenOptions::new().write(true).open(path).map_err(|e| {
            BuildError::Config(ConfigError::Firmware(firmware::FirmwareError::Read(
                path.display().to_string(),
                e.to_string(),
            )))
        })?;
        let flash = Flash::new(rom, Arc::clone(&vm.fd), file);
        insert(mmio_bus, at, vars.len() as u64, Arc::new(Mutex::new(flash)))?;
    }
    let tail = images.code.len().min(firmware::BIOS_AREA_LEN as usize);
    let at = vm_memory::GuestAddress(firmware::BIOS_AREA_START + firmware::BIOS_AREA_LEN - tail as u64);
    vm.memory.write_slice(&images.code[images.code.len() - tail..], at).map_err(BuildError::Acpi)?;
    Ok(())
}

/// Firmware starts every vCPU from its reset state, which KVM gives new
/// vCPUs; only the CPUID is ours to set.
fn configure_vcpus_for_firmware(vm: &Vm, vcpus: &[Vcpu]) -> Result<(), BuildError> {
    let host = cpuid::HostCpuid::of(&vm.kvm).map_err(BuildError::Cpuid)?;
    let count = vcpus.len() as u8;
    for v in vcpus {
        let cpuid = cpuid::for_vcpu(&host, v.index, count);
        v.fd.set_cpuid2(&cpuid).map_err(|e| BuildError::SetCpuid(v.index, e))?;
    }
    Ok(())
}
