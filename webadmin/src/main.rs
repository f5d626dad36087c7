//! kvmos-webadmin is the appliance's control plane: the admin panel and
//! its REST API over HTTPS (axum and rustls).
//!
//! - [`server`]: the HTTPS server, the HTTP redirect, the orderly stop;
//! - [`api`]: the REST API and its OpenAPI document; [`ui`]: the web pages;
//! - [`auth`]: setup code, password, sessions, CSRF, API tokens;
//! - [`vms`]: VM definitions; [`supervisor`]: the kvmos-vmm processes;
//!   [`console`]: the serial console and the screen over WebSocket;
//!   [`switch`]: the KVM switch (every screen on one page) and [`keys`];
//! - [`images`]: kernels, initrds and disks; [`host`]: the host overview,
//!   settings and power; [`audit`]: the audit log;
//! - [`store`]: atomic files; [`tls`]: the certificate;
//! - [`privsep`]: the panel's own user, and the launcher that keeps root.

mod api;
mod app;
mod audit;
mod auth;
mod cloud_init;
mod connections;
mod console;
mod download;
mod host;
mod images;
mod keys;
mod privsep;
mod qcow2;
mod server;
mod store;
mod supervisor;
mod switch;
mod tasks;
#[cfg(test)]
mod test_https;
#[cfg(test)]
mod tests;
mod tls;
mod ui;
mod vms;

use anyhow::{Context, Result};
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser, Debug, Clone)]
#[command(name = "kvmos-webadmin", version, about = "The kvmos admin panel and REST API")]
pub struct Args {
    /// Where persistent state lives (the data disk in the appliance)
    #[arg(long, env = "KVMOS_DATA_DIR", default_value = "/var/lib/kvmos")]
    pub data_dir: PathBuf,
    /// The HTTPS address to listen on
    #[arg(long, env = "KVMOS_LISTEN", default_value = "0.0.0.0:443")]
    pub listen: SocketAddr,
    /// Plain HTTP here redirects to HTTPS ("none" to turn it off)
    #[arg(long, default_value = "0.0.0.0:80")]
    pub redirect_from: String,
    /// kvmos-init's status file (addresses, data disk state)
    #[arg(long, default_value = "/run/kvmos/status.json")]
    pub status_file: PathBuf,
    /// Where the first-boot setup code is written for the console
    #[arg(long, default_value = kvmos_contract::panel::SETUP_CODE_FILE)]
    pub setup_code_file: PathBuf,
    /// Runtime directories of running VMs
    #[arg(long, default_value = kvmos_contract::panel::VMS_RUN_DIR)]
    pub run_dir: PathBuf,
    /// The first of the users the VMMs' jails run as, one per running VM
    /// (several panels on one development host need ranges of their own)
    #[arg(long, value_name = "UID", default_value_t = supervisor::VM_UID_BASE)]
    pub vm_uids: u32,
    /// Bundled guests
    #[arg(long, default_value = "/usr/share/kvmos/guests")]
    pub guests_dir: PathBuf,
    /// The VMM binary (default: kvmos-vmm next to this program)
    #[arg(long)]
    pub vmm: Option<PathBuf>,
    /// The bridge VM NICs join
    #[arg(long, default_value = "br0")]
    pub bridge: String,
    /// The largest image upload, in MiB
    #[arg(long, default_value_t = 16384)]
    pub max_upload_mib: u64,
    /// The data directory is in RAM: nothing survives a reboot
    #[arg(long, env = "KVMOS_RAM_ONLY")]
    pub ram_only: bool,
    /// Run as this user and group (numbers), with only the capabilities the
    /// panel needs; a small launcher keeps root to start VMMs (kvmos-init
    /// gives 990:990)
    #[arg(long, value_name = "UID:GID", value_parser = privsep::parse_user)]
    pub user: Option<(u32, u32)>,
}

fn main() {
    let args = Args::parse();
    // Plain text: the appliance console is a serial line, not a colour terminal.
    tracing_subscriber::fmt().with_target(false).with_ansi(false).with_writer(std::io::stderr).init();
    if let Err(e) = separate_privileges(&args).and_then(|launcher| run(args, launcher)) {
        eprintln!("kvmos-webadmin: error: {e:#}");
        std::process::exit(1);
    }
}

/// First, while the process has one thread: the panel's directories to
/// its user, the launcher forked (it keeps root), then the panel becomes
/// its own user with only its two capabilities (see [`privsep`]).
fn separate_privileges(args: &Args) -> Result<Arc<privsep::Launcher>> {
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let panel_uid = args.user.map_or(me, |(uid, _)| uid);
    if let Some((uid, gid)) = args.user {
        let own = [args.run_dir.as_path(), args.setup_code_file.parent().unwrap_or(&args.run_dir)];
        privsep::hand_over(&own, &args.data_dir, uid, gid).context("cannot hand the panel's files to its user")?;
    }
    let scope = privsep::Scope {
        run_dir: args.run_dir.clone(),
        vmm_bin: vmm_bin(args)?,
        cgroup_slice: supervisor::CGROUP_SLICE.into(),
        panel_uid,
    };
    let launcher = Arc::new(privsep::Launcher::fork(scope)?);
    // Whatever the panel makes is its user's alone.
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(0o077) };
    if let Some((uid, gid)) = args.user {
        privsep::drop_privileges(uid, gid).context("cannot become the panel's own user")?;
        tracing::info!(uid, gid, "running as the panel's own user with CAP_NET_BIND_SERVICE and CAP_NET_ADMIN only");
    }
    Ok(launcher)
}

/// The VMM binary: `--vmm`, or kvmos-vmm next to this program.
fn vmm_bin(args: &Args) -> Result<PathBuf> {
    match &args.vmm {
        Some(p) => Ok(p.clone()),
        None => Ok(std::env::current_exe()?.with_file_name("kvmos-vmm")),
    }
}

/// Start-up, in order: TLS, state from the data disk, re-attach to running
/// VMMs, autostart, serve.
fn run(args: Args, launcher: Arc<privsep::Launcher>) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let tls = tls::load_or_create(&args.data_dir, &args.status_file)
            .await
            .context("cannot set up the TLS certificate")?;
        tls::spawn_refresh(args.data_dir.clone(), args.status_file.clone(), tls.clone());
        let state = Arc::new(load_state(&args, tls, launcher)?);
        state.supervisor.reattach(&state);
        autostart(&state).await;
        let redirect = if args.redirect_from == "none" {
            None
        } else {
            Some(args.redirect_from.parse().context("--redirect-from: give ADDR:PORT or none")?)
        };
        server::serve(state, args.listen, redirect).await
    })
}

pub fn load_state(
    args: &Args,
    tls: axum_server::tls_rustls::RustlsConfig,
    launcher: Arc<privsep::Launcher>,
) -> Result<app::AppState> {
    let vmm_bin = vmm_bin(args)?;
    let paths = app::Paths {
        data_dir: args.data_dir.clone(),
        run_dir: args.run_dir.clone(),
        status_file: args.status_file.clone(),
        setup_code_file: args.setup_code_file.clone(),
        guests_dir: args.guests_dir.clone(),
        vmm_bin: vmm_bin.clone(),
        bridge: args.bridge.clone(),
        ram_only: args.ram_only,
    };
    std::fs::create_dir_all(&args.run_dir).with_context(|| format!("cannot create {}", args.run_dir.display()))?;
    Ok(app::AppState {
        auth: auth::Auth::load(&args.data_dir, &args.setup_code_file)?,
        audit: audit::AuditLog::new(&args.data_dir),
        images: images::Images::new(&args.data_dir, &args.guests_dir, args.max_upload_mib << 20)?,
        vms: vms::VmStore::load(&args.data_dir)?,
        supervisor: supervisor::Supervisor::new(&args.run_dir, &vmm_bin, &args.bridge, args.vm_uids, launcher.clone()),
        launcher,
        tls,
        paths,
    })
}

/// Starts the autostart VMs once per boot: the marker lives in the run
/// directory (tmpfs), so a panel restart does not start VMs the admin
/// stopped.
async fn autostart(state: &app::State) {
    let marker = state.paths.run_dir.join(".autostarted");
    if marker.exists() {
        return;
    }
    let _ = std::fs::write(&marker, b"");
    for vm in state.vms.list().into_iter().filter(|v| v.spec.autostart) {
        let st = state.clone();
        let id = vm.id.clone();
        let r = tokio::task::spawn_blocking(move || st.supervisor.start(&st, &id)).await;
        match r {
            Ok(Ok(())) => tracing::info!(vm = %vm.spec.name, "autostarted"),
            Ok(Err(e)) => tracing::error!(vm = %vm.spec.name, "autostart failed: {}", e.message),
            Err(e) => tracing::error!(vm = %vm.spec.name, "autostart failed: {e}"),
        }
    }
}
