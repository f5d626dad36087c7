//! kvmos-webadmin is the appliance's control plane: an HTTPS server (axum
//! over rustls) that will carry the admin panel and the REST API.
//!
//! Today it is the foundation the panel grows on: it makes (on first start)
//! or loads the TLS certificate kept on the data disk ([`tls`]), serves
//! HTTPS on the configured address with a health endpoint ([`server`]), and
//! exits cleanly on SIGTERM, which is how kvmos-init stops it at shutdown.
//! Login, VMs, images and the UI come with the web admin issue.

mod server;
mod tls;

use anyhow::{Context, Result};
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug, Clone)]
#[command(name = "kvmos-webadmin", version, about = "The kvmos admin panel and REST API")]
pub struct Args {
    /// Where persistent state lives (the data disk in the appliance)
    #[arg(long, default_value = "/var/lib/kvmos")]
    pub data_dir: PathBuf,
    /// The HTTPS address to listen on
    #[arg(long, default_value = "0.0.0.0:443")]
    pub listen: SocketAddr,
    /// kvmos-init's status file (addresses, data disk state)
    #[arg(long, default_value = "/run/kvmos/status.json")]
    pub status_file: PathBuf,
    /// The data directory is in RAM: nothing survives a reboot
    #[arg(long)]
    pub ram_only: bool,
}

fn main() {
    let args = Args::parse();
    // Plain text: the appliance console is a serial line, not a colour terminal.
    tracing_subscriber::fmt().with_target(false).with_ansi(false).with_writer(std::io::stderr).init();
    if let Err(e) = run(args) {
        eprintln!("kvmos-webadmin: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let config = tls::load_or_create(&args.data_dir, &args.status_file)
            .await
            .context("cannot set up the TLS certificate")?;
        server::serve(&args, config).await
    })
}
