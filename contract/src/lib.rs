//! The contract between kvmos's three programs, typed once so that each
//! side reads exactly what the other writes:
//!
//! - [`vm`]: `vm.json`, one VM's configuration, which the panel writes and
//!   kvmos-vmm reads (`--config`);
//! - [`exit`]: the VMM's exit codes and its exit record (`exit.json`);
//! - [`control`]: the VMM's control API on its Unix socket (the requests,
//!   the answers, and the client the panel and `kvmos-vmm ctl` use);
//! - [`host`]: `config/host.json` on the data disk, the host settings the
//!   panel saves and kvmos-init applies at boot;
//! - [`status`]: `/run/kvmos/status.json`, what kvmos-init knows about the
//!   machine (network, data disk), which the panel shows;
//! - [`firmware`]: where the PC machine's firmware files are installed;
//! - [`panel`]: the panel's user and runtime files, as init runs it;
//! - [`process`]: how a VMM's processes look from the outside (the one its
//!   supervisor started, and the jailed child that runs the VM).
//!
//! Behaviour stays with its program: the VMM validates a configuration
//! against the host, init turns settings into its boot plan, the panel
//! decides what to write. This crate holds the shapes and the wire format,
//! with round-trip tests on both sides of each file.

pub mod control;
pub mod exit;
pub mod firmware;
pub mod host;
pub mod panel;
pub mod process;
pub mod status;
pub mod vm;

/// A JSON file one program wrote for another; `Ok(None)` when there is
/// none (yet).
fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
