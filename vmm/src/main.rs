//! `kvmos-vmm`: run one VM in this process. See the crate docs
//! (`kvmos_vmm`) for the parts, and `exit.rs` for the exit codes.

use clap::Parser;
use kvmos_vmm::config::{
    ConfigError, DiskConfig, DiskMedia, ExitRecord, FirmwareConfig, HostLimits, JailConfig, NetConfig, SerialConfig,
    Validate, VmConfig,
};
use kvmos_vmm::exit::{EXIT_BAD_CONFIG, EXIT_INTERNAL_ERROR};
use kvmos_vmm::{builder, jail, runner, seccomp, timeline};
use std::fs::File;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(name = "kvmos-vmm", version, about = "Run one virtual machine on KVM")]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// A JSON VM configuration (see the crate docs); flags below override it
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The guest kernel (bzImage or ELF vmlinux), for a direct boot
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Boot a PC from its disks with firmware: bios (SeaBIOS) or uefi (OVMF)
    #[arg(long, value_name = "bios|uefi")]
    firmware: Option<String>,
    /// The firmware image (SeaBIOS, or OVMF's code) instead of the installed one
    #[arg(long, value_name = "FILE")]
    firmware_path: Option<PathBuf>,
    /// UEFI: this VM's copy of OVMF_VARS_4M.fd, where boot entries are kept
    #[arg(long, value_name = "FILE")]
    uefi_vars: Option<PathBuf>,
    /// Disks to boot from, first first, by their index (e.g. 1,0)
    #[arg(long, value_name = "N,N,...", value_delimiter = ',')]
    boot_order: Vec<usize>,
    #[arg(long)]
    initrd: Option<PathBuf>,
    #[arg(long)]
    cmdline: Option<String>,
    #[arg(long)]
    memory_mib: Option<u64>,
    #[arg(long)]
    vcpus: Option<u16>,
    /// PATH[,ro][,cdrom] — a raw disk image, or with `cdrom` an ISO in a
    /// CD-ROM drive (firmware boot; repeatable)
    #[arg(long, value_name = "PATH[,ro][,cdrom]")]
    disk: Vec<String>,
    /// tap=NAME[,mac=MAC] — a NIC on a TAP device (repeatable)
    #[arg(long, value_name = "tap=NAME[,mac=MAC]")]
    net: Vec<String>,
    /// stdio, socket:PATH or none
    #[arg(long)]
    serial: Option<String>,
    /// The control API's Unix socket
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Firmware boot: serve the VM's screen, keyboard and mouse over VNC
    /// on this Unix socket
    #[arg(long, value_name = "PATH")]
    vnc_socket: Option<PathBuf>,
    /// A name for logs
    #[arg(long)]
    vm_id: Option<String>,
    /// The jail's user: a uid of this VM's own, never root
    #[arg(long, value_name = "UID", requires = "jail_gid")]
    jail_uid: Option<u32>,
    /// The jail's group
    #[arg(long, value_name = "GID", requires = "jail_uid")]
    jail_gid: Option<u32>,
    /// The jail's cgroup v2 leaf, under /sys/fs/cgroup (created if missing)
    #[arg(long, value_name = "DIR", requires = "jail_uid")]
    jail_cgroup: Option<PathBuf>,
    /// The jail cgroup's cpu.weight: the VM's CPU share against other VMs
    /// (1 to 10000; 100 by default)
    #[arg(long, value_name = "N", requires = "jail_cgroup")]
    jail_cpu_weight: Option<u32>,
    /// Development only: run without the jail (namespaces, own user,
    /// seccomp). The panel never does.
    #[arg(long, conflicts_with = "jail_uid")]
    no_jail: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Talk to a running VM's control API
    Ctl {
        #[arg(long, value_name = "PATH")]
        api_socket: PathBuf,
        #[arg(value_enum)]
        action: CtlAction,
        /// eject, insert: the CD-ROM drive, by its index in the VM's disks
        #[arg(long)]
        disk: Option<usize>,
        /// insert: the ISO to put in (opened here, passed to the VMM)
        #[arg(long, value_name = "PATH")]
        iso: Option<PathBuf>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum CtlAction {
    Get,
    Pause,
    Resume,
    PowerOff,
    Reset,
    Stop,
    /// Take the medium out of a CD-ROM drive (--disk)
    Eject,
    /// Put an ISO (--iso) in a CD-ROM drive (--disk)
    Insert,
}

/// `kvmos-vmm ctl`: one API call; prints the answer; exit 0 on success.
fn ctl(socket: &std::path::Path, action: CtlAction, disk: Option<usize>, iso: Option<PathBuf>) -> i32 {
    use kvmos_contract::control::{Action, Client};
    let client = Client::new(socket);
    if let CtlAction::Eject | CtlAction::Insert = action {
        return change_medium(&client, action, disk, iso);
    }
    let action = match action {
        CtlAction::Eject | CtlAction::Insert => None,
        CtlAction::Get => None,
        CtlAction::Pause => Some(Action::Pause),
        CtlAction::Resume => Some(Action::Resume),
        CtlAction::PowerOff => Some(Action::PowerOff),
        CtlAction::Reset => Some(Action::Reset),
        CtlAction::Stop => Some(Action::Stop),
    };
    let result = match action {
        None => client.vm().map(|info| serde_json::to_string_pretty(&info).unwrap_or_default()),
        Some(a) => client.act(a).map(|()| String::new()),
    };
    match result {
        Ok(text) => {
            if !text.is_empty() {
                println!("{text}");
            }
            0
        }
        Err(e) => {
            eprintln!("kvmos-vmm ctl: {} ({e})", socket.display());
            1
        }
    }
}

/// `ctl eject --disk N` and `ctl insert --disk N --iso PATH`.
fn change_medium(
    client: &kvmos_contract::control::Client,
    action: CtlAction,
    disk: Option<usize>,
    iso: Option<PathBuf>,
) -> i32 {
    let fail = |message: String| {
        eprintln!("kvmos-vmm ctl: {message}");
        1
    };
    let Some(disk) = disk else {
        return fail("give the CD-ROM drive with --disk N (its index in the VM's disks)".into());
    };
    let file = match (action, &iso) {
        (CtlAction::Insert, Some(path)) => match std::fs::File::open(path) {
            Ok(f) => Some((path.display().to_string(), f)),
            Err(e) => return fail(format!("cannot open {}: {e}", path.display())),
        },
        (CtlAction::Insert, None) => return fail("insert: give the ISO with --iso PATH".into()),
        _ => None,
    };
    match client.change_medium(disk, file.as_ref().map(|(name, f)| (name.as_str(), f))) {
        Ok(()) => 0,
        Err(e) => fail(format!("{} ({e})", client.socket().display())),
    }
}

fn flag(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Flag { flag, reason: reason.into() }
}

fn config_from(args: Args) -> Result<VmConfig, ConfigError> {
    let mut c = match &args.config {
        Some(p) => VmConfig::from_file(p)?,
        None if args.kernel.is_none() && args.firmware.is_none() => {
            return Err(flag("kernel", "give --kernel PATH, --firmware bios|uefi, or --config FILE"));
        }
        None => VmConfig::from_json("{}")?,
    };
    if let Some(v) = args.kernel {
        c.kernel = Some(v);
    }
    if let Some(kind) = args.firmware.as_deref() {
        c.firmware = Some(match kind {
            "bios" => FirmwareConfig::Bios { path: args.firmware_path.clone() },
            "uefi" => {
                let vars = args.uefi_vars.clone().ok_or_else(|| {
                    flag("uefi-vars", "UEFI needs this VM's copy of OVMF_VARS_4M.fd: give --uefi-vars FILE")
                })?;
                FirmwareConfig::Uefi { code: args.firmware_path.clone(), vars }
            }
            other => return Err(flag("firmware", format!("{other:?} is not a firmware; write bios or uefi"))),
        });
    }
    if !args.boot_order.is_empty() {
        c.boot_order = args.boot_order;
    }
    if let Some(v) = args.initrd {
        c.initrd = Some(v);
    }
    if let Some(v) = args.cmdline {
        c.cmdline = v;
    }
    if let Some(v) = args.memory_mib {
        c.memory_mib = v;
    }
    if let Some(v) = args.vcpus {
        c.vcpus = v;
    }
    if let Some(v) = args.vm_id {
        c.vm_id = v;
    }
    if let Some(v) = args.api_socket {
        c.api_socket = Some(v);
    }
    if let Some(v) = args.vnc_socket {
        c.vnc_socket = Some(v);
    }
    for d in args.disk {
        // PATH, then any of the options `ro`, `cdrom` and `ide`.
        let (mut path, mut read_only, mut media) = (d.as_str(), false, DiskMedia::Disk);
        loop {
            if let Some(p) = path.strip_suffix(",ro") {
                (path, read_only) = (p, true);
            } else if let Some(p) = path.strip_suffix(",cdrom") {
                (path, read_only, media) = (p, true, DiskMedia::Cdrom);
            } else if let Some(p) = path.strip_suffix(",ide") {
                (path, media) = (p, DiskMedia::Ide);
            } else {
                break;
            }
        }
        c.disks.push(DiskConfig { path: path.into(), read_only, id: None, media });
    }
    for n in args.net {
        let mut tap = None;
        let mut mac = None;
        for part in n.split(',') {
            match part.split_once('=') {
                Some(("tap", v)) => tap = Some(v.to_string()),
                Some(("mac", v)) => mac = Some(v.to_string()),
                _ => return Err(flag("net", format!("cannot read {part:?}; write tap=NAME[,mac=52:54:00:12:34:56]"))),
            }
        }
        let tap = tap.ok_or_else(|| flag("net", "name the TAP device: tap=NAME"))?;
        c.nets.push(NetConfig { tap, mac });
    }
    match (args.no_jail, args.jail_uid.zip(args.jail_gid)) {
        (true, _) => c.jail = None,
        (false, Some((uid, gid))) => {
            c.jail = Some(JailConfig { uid, gid, cgroup: args.jail_cgroup.clone(), cpu_weight: args.jail_cpu_weight })
        }
        (false, None) if c.jail.is_none() => return Err(ConfigError::NoJail),
        (false, None) => {}
    }
    if let Some(s) = args.serial {
        c.serial = match s.as_str() {
            "stdio" => SerialConfig::Stdio,
            "none" => SerialConfig::None,
            _ => match s.strip_prefix("socket:") {
                Some(p) if !p.is_empty() => SerialConfig::Socket { path: p.into() },
                _ => return Err(flag("serial", "write stdio, none or socket:PATH")),
            },
        };
    }
    Ok(c)
}

/// What this host can give a VM: KVM's vCPU limit and the memory
/// available now.
fn host_limits() -> HostLimits {
    let max_vcpus =
        kvm_ioctls::Kvm::new().map(|k| k.get_max_vcpus() as u64).unwrap_or(1).min(kvmos_vmm::config::MAX_VCPUS);
    let available_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(u64::MAX / 1024);
    HostLimits { max_vcpus, available_mib: available_kib / 1024 }
}

/// Starting a VM, in order: the configuration; the jail's first stage (its
/// cgroup and PID namespace); the VM built (every file and device opened);
/// its sockets bound; the jail closed (see `kvmos_vmm::jail`); then the
/// VM runs, each thread under its seccomp filter, until it ends.
fn main() {
    let started = Instant::now();
    // RUST_LOG may name a level (e.g. `debug`, for the start-up timeline).
    let level = std::env::var("RUST_LOG").ok().and_then(|v| v.parse::<tracing::Level>().ok());
    tracing_subscriber::fmt()
        .with_max_level(level.unwrap_or(tracing::Level::INFO))
        .with_target(false)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let mut args = Args::parse();
    if let Some(Cmd::Ctl { api_socket, action, disk, iso }) = args.cmd.take() {
        std::process::exit(ctl(&api_socket, action, disk, iso));
    }
    let config = match config_from(args).and_then(|c| c.validate(&host_limits()).map(|_| c)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kvmos-vmm: {e}");
            std::process::exit(EXIT_BAD_CONFIG);
        }
    };
    timeline::mark(started, "configuration read");
    let mut end = End { config: &config, report: None };
    if let Some(j) = &config.jail {
        match jail::enter_pid_namespace(j, &config) {
            Ok(pipe) => end.report = Some(pipe),
            Err(e) => end.finish(EXIT_INTERNAL_ERROR, &format!("cannot jail the VMM: {e}")),
        }
        timeline::mark(started, "jail stage 1 (cgroup, PID namespace)");
    }
    let machine = match builder::build_vm(&config, started) {
        Ok(m) => m,
        Err(builder::BuildError::Config(e)) => end.finish(EXIT_BAD_CONFIG, &e.to_string()),
        Err(e) => end.finish(EXIT_INTERNAL_ERROR, &format!("cannot build the VM: {e}")),
    };
    let sockets = match runner::Sockets::bind(&config, &machine) {
        Ok(s) => s,
        Err(e) => end.finish(EXIT_INTERNAL_ERROR, &format!("cannot bind the VM's sockets: {e}")),
    };
    timeline::mark(started, "sockets bound");
    let filters = match &config.jail {
        Some(j) => {
            let filters = seccomp::Filters::new(kvmos_vmm::vstate::vcpu::kick_signal())
                .unwrap_or_else(|e| end.finish(EXIT_INTERNAL_ERROR, &e.to_string()));
            timeline::mark(started, "seccomp filters compiled");
            if let Err(e) = jail::lock_down(j, &config) {
                end.finish(EXIT_INTERNAL_ERROR, &format!("cannot jail the VMM: {e}"));
            }
            timeline::mark(started, "jail closed");
            Some(filters)
        }
        None => None,
    };
    tracing::info!(vm = %config.vm_id, "VM built in {:.1} ms; starting", started.elapsed().as_secs_f64() * 1000.0);
    let reason = runner::run(machine, sockets, &config, filters);
    tracing::info!(vm = %config.vm_id, "VM ended: {reason}");
    end.finish(reason.code(), &reason.to_string())
}

/// How the VMM ends: with its exit record written to the exit file, or,
/// in a jail, sent to the jail's parent, which writes it.
struct End<'a> {
    config: &'a VmConfig,
    report: Option<File>,
}

impl End<'_> {
    /// Reports why the VMM ends (on stderr and in the exit record) and exits.
    fn finish(&mut self, code: i32, reason: &str) -> ! {
        if code == EXIT_BAD_CONFIG || code == EXIT_INTERNAL_ERROR {
            eprintln!("kvmos-vmm: {reason}");
        }
        let record = ExitRecord { code, reason: reason.to_string() };
        match (&mut self.report, &self.config.exit_file) {
            (Some(pipe), _) => jail::report(pipe, &record),
            (None, Some(path)) => {
                if let Err(e) = record.write(path) {
                    eprintln!("kvmos-vmm: cannot write {}: {e}", path.display());
                }
            }
            (None, None) => {}
        }
        std::process::exit(code)
    }
}
