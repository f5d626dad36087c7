//! `kvmos-image`: build the kvmos appliance, boot it under QEMU, or run every
//! test. See the README for the admin's view; the build itself is
//! `kvmos_image_builder::pipeline::build`.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use kvmos_image_builder::qemu::{self, Boot, QemuOptions, Serial};
use kvmos_image_builder::{disk, fuzz, host_tools, pipeline, Layout};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

#[derive(Parser)]
#[command(name = "kvmos-image", version, about = "Build the kvmos appliance image and boot it under QEMU")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the kernels, the initramfs and kvmos.img into target/kvmos/.
    Build(BuildArgs),
    /// Build if needed, then boot the appliance under QEMU on this terminal.
    Run(RunArgs),
    /// Install what the tests need, build, then run every test (QEMU ones included).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        cargo_test_args: Vec<String>,
    },
}

#[derive(Args, Clone)]
struct BuildArgs {
    /// Linux source tarball or tree [default: /usr/src/linux-source-6.1.tar.xz]
    #[arg(long, value_name = "PATH")]
    kernel_source: Option<PathBuf>,
    /// Add an empty partition labelled KVMOS_DATA of this size to kvmos.img (e.g. 8G)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    data_size: Option<u64>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    build: BuildArgs,
    /// Boot kvmos.img under OVMF (UEFI) instead of -kernel/-initrd
    #[arg(long)]
    uefi: bool,
    /// Host port forwarded to the panel's port 443 [default: 8443, or a free one]
    #[arg(long)]
    port: Option<u16>,
    /// Memory for the appliance, in MiB
    #[arg(long, default_value_t = 2048)]
    memory_mib: u32,
    /// Virtual CPUs for the appliance
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Extra kernel arguments (direct boot), e.g. "kvmos.debug"
    #[arg(long, default_value = "")]
    append: String,
    /// A raw disk file to attach as a second disk (e.g. a data disk)
    #[arg(long, value_name = "PATH")]
    disk: Vec<PathBuf>,
    /// No data disk: VMs and settings live in RAM and are gone at exit
    /// (by default a data disk is kept in target/kvmos/run/data.img)
    #[arg(long)]
    ram_only: bool,
}

/// The development data disk `run` attaches unless told otherwise.
const DEV_DATA_SIZE: u64 = 4 << 30;

fn parse_size(s: &str) -> Result<u64, String> {
    disk::parse_size(s).map_err(|e| e.to_string())
}

fn main() {
    let cli = Cli::parse();
    let layout = Layout::this_checkout();
    let result = match cli.command {
        Cmd::Build(args) => pipeline::build(&layout, &build_options(&args)).map(|_| ()),
        Cmd::Run(args) => run(&layout, args),
        Cmd::Test { cargo_test_args } => test(&layout, &cargo_test_args),
    };
    if let Err(e) = result {
        eprintln!("kvmos-image: error: {e:#}");
        std::process::exit(1);
    }
}

fn build_options(args: &BuildArgs) -> pipeline::Options {
    pipeline::Options { kernel_source: args.kernel_source.clone(), data_size: args.data_size }
}

fn run(layout: &Layout, args: RunArgs) -> Result<()> {
    host_tools::ensure(host_tools::RUN)?;
    let out = pipeline::build(layout, &build_options(&args.build))?;
    let port = match args.port {
        Some(p) => p,
        None if std::net::TcpListener::bind(("127.0.0.1", 8443)).is_ok() => 8443,
        None => qemu::free_port()?,
    };
    let boot = if args.uefi {
        Boot::Uefi { disk: out.disk_image.clone() }
    } else {
        Boot::Direct { kernel: out.bz_image.clone(), initrd: out.initramfs.clone() }
    };
    let mut opts = QemuOptions::new(boot, &layout.out_dir.join("run"));
    opts.memory_mib = args.memory_mib;
    opts.cpus = args.cpus;
    opts.panel_host_port = Some(port);
    opts.append = args.append;
    let mut drives = args.disk;
    let image_has_data = args.uefi && args.build.data_size.is_some();
    let dev_disk = layout.out_dir.join("run/data.img");
    if drives.is_empty() && !args.ram_only && !image_has_data {
        if !dev_disk.exists() {
            std::fs::create_dir_all(layout.out_dir.join("run"))?;
            disk::write_data_disk(&dev_disk, DEV_DATA_SIZE)?;
        }
        drives.push(dev_disk.clone());
    }
    let data_note = if drives.contains(&dev_disk) {
        format!("{} (kept between runs; delete it to start over)", dev_disk.display())
    } else if drives.is_empty() && !image_has_data {
        "none: RAM only, nothing survives".to_string()
    } else {
        "as given".to_string()
    };
    opts.drives = drives;
    opts.serial = Serial::Terminal;
    let mut cmd = opts.command()?;
    eprintln!();
    eprintln!("kvmos is booting under QEMU (TCG, -cpu max: VMs run nested inside).");
    eprintln!(
        "  Panel:   https://localhost:{port}/   (forwarded to the appliance's port 443; self-signed certificate)"
    );
    eprintln!("  Data:    {data_note}");
    eprintln!("  Console: this terminal. Ctrl-A X quits QEMU, Ctrl-A C switches to the QEMU monitor.");
    eprintln!();
    let err = cmd.exec();
    bail!("cannot start {}: {err}", qemu::QEMU)
}

/// rustfmt and clippy, which the test command runs, come with rustup's
/// default profile but not its minimal one: added with rustup when missing.
fn ensure_rust_components(cargo: &std::ffi::OsStr) -> Result<()> {
    let missing: Vec<&str> = [("fmt", "rustfmt"), ("clippy", "clippy")]
        .into_iter()
        .filter(|(sub, _)| !Command::new(cargo).args([*sub, "--version"]).output().is_ok_and(|o| o.status.success()))
        .map(|(_, component)| component)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("==> rustup component add {}", missing.join(" "));
    let status = Command::new("rustup")
        .arg("component")
        .arg("add")
        .args(&missing)
        .status()
        .context("cargo fmt/clippy are missing and rustup is not there to add them: install rustfmt and clippy")?;
    if !status.success() {
        bail!("rustup component add {} failed ({status})", missing.join(" "));
    }
    Ok(())
}

fn test(layout: &Layout, cargo_test_args: &[String]) -> Result<()> {
    host_tools::ensure(host_tools::BUILD)?;
    host_tools::ensure(host_tools::RUN)?;
    host_tools::ensure(host_tools::TEST)?;
    // Build first, with progress on the terminal: the tests reuse the cached
    // result instead of building silently under the test harness.
    pipeline::build(layout, &pipeline::Options::default())?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    ensure_rust_components(&cargo)?;
    // Split the caller's arguments at `--` into cargo's and the harness's.
    let split = cargo_test_args.iter().position(|a| a == "--").unwrap_or(cargo_test_args.len());
    let (cargo_args, harness_args) = cargo_test_args.split_at(split);
    let mut test_args: Vec<String> = ["test", "--workspace", "--locked"].map(String::from).to_vec();
    test_args.extend(cargo_args.iter().cloned());
    test_args.push("--".into());
    // Two at a time: each QEMU boot keeps a core busy under TCG.
    test_args.push("--test-threads=2".into());
    test_args.extend(harness_args.iter().skip(1).cloned());
    let steps: Vec<(&str, Vec<String>)> = vec![
        ("format check", vec!["fmt".into(), "--all".into(), "--check".into()]),
        (
            "clippy",
            ["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"].map(String::from).to_vec(),
        ),
        ("tests", test_args),
    ];
    for (name, args) in steps {
        eprintln!("==> {name}: cargo {}", args.join(" "));
        let status = Command::new(&cargo)
            .current_dir(&layout.repo)
            .args(&args)
            .status()
            .with_context(|| format!("cannot run cargo for the {name}"))?;
        if !status.success() {
            bail!("{name} failed ({status})");
        }
    }
    // A filter means a partial run (`cargo kvmos test -- --test boot`): the
    // fuzzers run in the whole one.
    if cargo_test_args.is_empty() {
        fuzz::smoke(layout, &cargo)?;
    }
    Ok(())
}
