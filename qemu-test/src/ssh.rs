//! OpenSSH's client, for logging in to a VM the way its admin would: with
//! a key, as the user cloud-init made, through a forwarded port or on a
//! network the client is on.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A new ed25519 key pair in `dir` (`id_ed25519`, no passphrase): the
/// private key's path and the public key's line.
pub fn new_key(dir: &Path) -> Result<(PathBuf, String)> {
    let key = dir.join("id_ed25519");
    let _ = std::fs::remove_file(&key);
    let _ = std::fs::remove_file(key.with_extension("pub"));
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "admin@laptop", "-f"])
        .arg(&key)
        .status()
        .context("cannot run ssh-keygen (package openssh-client)")?;
    if !status.success() {
        bail!("ssh-keygen failed ({status})");
    }
    let public = std::fs::read_to_string(key.with_extension("pub"))?.trim().to_string();
    Ok((key, public))
}

/// Where and as whom to log in.
pub struct Ssh {
    pub key: PathBuf,
    pub host: String,
    pub port: u16,
    pub user: String,
}

impl Ssh {
    /// Runs `command` in the VM; its output, or ssh's error with its
    /// output. Host keys are not checked: each VM makes new ones.
    pub fn run(&self, command: &str) -> Result<String> {
        let out = Command::new("ssh")
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "ConnectTimeout=30", "-o", "ServerAliveInterval=15", "-o", "LogLevel=ERROR"])
            .arg("-i")
            .arg(&self.key)
            .args(["-p", &self.port.to_string(), &format!("{}@{}", self.user, self.host), command])
            .stdin(Stdio::null())
            .output()
            .context("cannot run ssh (package openssh-client)")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!("ssh: {} ({}){text}", String::from_utf8_lossy(&out.stderr).trim(), out.status);
        }
        Ok(text)
    }

    /// Runs `command` once the VM answers on SSH, trying every 5 s until
    /// `timeout`.
    pub fn wait(&self, command: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.run(command) {
                Ok(out) => return Ok(out),
                Err(e) if Instant::now() > deadline => bail!("no SSH login within {timeout:?}: {e:#}"),
                Err(_) => std::thread::sleep(Duration::from_secs(5)),
            }
        }
    }
}
