//! Building a VM, top to bottom, the way Firecracker's builder reads:
//! memory, the KVM VM, the devices, the kernel and its boot data, the
//! vCPUs. [`build_linux_vm`] is the whole story of how a VM comes to life;
//! [`build_machine`] is the part before any guest code is chosen, which the
//! tests share with hand-assembled guests.

use crate::arch::{acpi, boot, cpuid, layout, regs};
use crate::config::{ConfigError, SerialConfig, VmConfig};
use crate::console::Console;
use crate::devices::acpi_pm::{self, AcpiPm};
use crate::devices::bus::{Bus, BusDevice};
use crate::devices::legacy::{boot_marker::BootMarker, i8042::I8042, serial::SerialDevice};
use crate::devices::virtio::block::{Block, OpenError};
use crate::devices::virtio::mmio::{reg, MmioTransport};
use crate::devices::virtio::{net::Net, rng::Rng, Interrupt, VirtioDevice};
use crate::exit::ExitSignal;
use crate::vstate::memory;
use crate::vstate::vcpu::{Vcpu, VcpuControl, VcpuCounters};
use crate::vstate::vm::{Vm, VmError};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;
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
    /// KVM cannot report its CPUID: {0}
    Cpuid(kvm_ioctls::Error),
    /// KVM refused the CPUID of vCPU {0}: {1}
    SetCpuid(u8, kvm_ioctls::Error),
}

/// A VM with its devices and vCPUs, ready to run.
pub struct Machine {
    pub vm: Vm,
    pub vcpus: Vec<Vcpu>,
    pub mmio_bus: Arc<Bus>,
    pub console: Console,
    pub serial: Arc<Mutex<SerialDevice>>,
    pub acpi_pm: Arc<Mutex<AcpiPm>>,
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
}

/// One virtio device as the event loop sees it: its transport and one
/// ioeventfd per queue, which KVM signals when the guest notifies the queue
/// (so a notification costs no exit to this process's vCPU thread).
pub struct VirtioSlot {
    pub transport: Arc<Mutex<MmioTransport>>,
    pub queue_evts: Vec<EventFd>,
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
    let exit = Arc::new(ExitSignal::new().map_err(BuildError::EventFd)?);
    let mut io_bus = Bus::default();
    let serial = attach_serial(&vm, &mut io_bus, console.clone())?;
    attach_i8042(&mut io_bus, Arc::clone(&exit))?;
    let boot_marker_us = attach_boot_marker(&mut io_bus, started)?;
    let acpi_pm = attach_acpi_pm(&vm, &mut io_bus, Arc::clone(&exit))?;
    let io_bus = Arc::new(io_bus);
    let mut mmio_bus = Bus::default();
    let (virtio_cmdline, virtio) = attach_virtio_devices(&vm, &mut mmio_bus, virtio)?;
    let mmio_bus = Arc::new(mmio_bus);
    let control = Arc::new(VcpuControl::default());
    let counters = Arc::new(VcpuCounters::default());
    let mut vcpus = Vec::new();
    for index in 0..vcpu_count {
        let fd = vm.fd.create_vcpu(u64::from(index)).map_err(|e| BuildError::CreateVcpu(index, e))?;
        vcpus.push(Vcpu {
            fd,
            index,
            io_bus: Arc::clone(&io_bus),
            mmio_bus: Arc::clone(&mmio_bus),
            exit: Arc::clone(&exit),
            control: Arc::clone(&control),
            counters: Arc::clone(&counters),
        });
    }
    Ok(Machine {
        vm,
        vcpus,
        mmio_bus,
        console,
        serial,
        acpi_pm,
        exit,
        control,
        counters,
        boot_marker_us,
        started,
        virtio_cmdline,
        virtio,
    })
}

/// A Linux guest per the configuration (validated by the caller).
pub fn build_linux_vm(config: &VmConfig, started: Instant) -> Result<Machine, BuildError> {
    let console = Console::new(matches!(config.serial, SerialConfig::Stdio));
    let mut virtio: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for (index, disk) in config.disks.iter().enumerate() {
        virtio.push(Box::new(open_disk(index, disk)?));
    }
    for (index, net) in config.nets.iter().enumerate() {
        virtio.push(Box::new(open_net(index, net, &config.vm_id)?));
    }
    if config.rng {
        virtio.push(Box::new(Rng::default()));
    }
    // validate() keeps vcpus within MAX_VCPUS, so it fits the APIC IDs.
    let vcpus = u8::try_from(config.vcpus).unwrap_or(u8::MAX);
    let machine = build_machine(config.memory_mib, vcpus, console, started, virtio)?;
    let kernel = boot::load_kernel(&machine.vm.memory, &config.kernel)?;
    let initrd = match &config.initrd {
        Some(p) => Some(boot::load_initrd(&machine.vm.memory, p, config.memory_mib << 20)?),
        None => None,
    };
    let rsdp = acpi::write_tables(&machine.vm.memory, vcpus).map_err(BuildError::Acpi)?;
    let cmdline = std::iter::once(config.cmdline.as_str())
        .chain(machine.virtio_cmdline.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    boot::write_boot_info(&machine.vm.memory, &kernel, &cmdline, initrd, rsdp)?;
    configure_vcpus_for_linux(&machine, &kernel)?;
    Ok(machine)
}

/// Opens and locks one disk; the guest sees `id` (or the file name) as its
/// serial.
fn open_disk(index: usize, disk: &crate::config::DiskConfig) -> Result<Block, BuildError> {
    let path = disk.path.display().to_string();
    let id = disk
        .id
        .clone()
        .unwrap_or_else(|| disk.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    Block::open(&disk.path, disk.read_only, &id).map_err(|e| {
        BuildError::Config(match e {
            OpenError::Locked => ConfigError::DiskLocked { index, path },
            OpenError::Open(err) => ConfigError::DiskOpen { index, path, reason: err.to_string() },
        })
    })
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

fn insert(bus: &mut Bus, base: u64, len: u64, dev: Arc<Mutex<dyn BusDevice>>) -> Result<(), BuildError> {
    bus.insert(base, len, dev).map_err(|e| BuildError::Bus(e.to_string()))
}

fn attach_serial(vm: &Vm, io_bus: &mut Bus, console: Console) -> Result<Arc<Mutex<SerialDevice>>, BuildError> {
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
    vm.fd.register_irqfd(&irq, layout::COM1_IRQ).map_err(|e| BuildError::Irq(layout::COM1_IRQ, e))?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(irq, console)));
    insert(io_bus, u64::from(layout::COM1_PORT), 8, serial.clone())?;
    Ok(serial)
}

fn attach_i8042(io_bus: &mut Bus, exit: Arc<ExitSignal>) -> Result<(), BuildError> {
    insert(io_bus, u64::from(layout::I8042_DATA_PORT), 5, Arc::new(Mutex::new(I8042::new(exit))))
}

fn attach_boot_marker(io_bus: &mut Bus, started: Instant) -> Result<Arc<AtomicU64>, BuildError> {
    let marked = Arc::new(AtomicU64::new(0));
    let dev = BootMarker::new(started, Arc::clone(&marked));
    insert(io_bus, u64::from(layout::BOOT_MARKER_PORT), 1, Arc::new(Mutex::new(dev)))?;
    Ok(marked)
}

fn attach_acpi_pm(vm: &Vm, io_bus: &mut Bus, exit: Arc<ExitSignal>) -> Result<Arc<Mutex<AcpiPm>>, BuildError> {
    let fd = Arc::clone(&vm.fd);
    let set_sci = Box::new(move |level: bool| {
        if let Err(e) = fd.set_irq_line(layout::SCI_IRQ, level) {
            tracing::warn!("cannot drive the ACPI SCI: {e}");
        }
    });
    let pm = Arc::new(Mutex::new(AcpiPm::new(set_sci, exit)));
    insert(io_bus, u64::from(layout::PM1A_EVT_PORT), acpi_pm::LEN, pm.clone())?;
    Ok(pm)
}

/// Each virtio device gets a 4 KiB MMIO window, an IRQ from
/// [`layout::VIRTIO_IRQ_BASE`] up and an ioeventfd per queue; Linux learns
/// of them from the command line.
fn attach_virtio_devices(
    vm: &Vm,
    mmio_bus: &mut Bus,
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
        slots.push(VirtioSlot { transport, queue_evts });
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
    let supported =
        machine.vm.kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES).map_err(BuildError::Cpuid)?;
    let count = machine.vcpus.len() as u8;
    for v in &machine.vcpus {
        let id = v.index;
        let cpuid = cpuid::for_vcpu(&supported, id, count);
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
