//! Where the PC machine's firmware is installed: the appliance keeps it in
//! `/usr/share/kvmos/firmware`; a development host has Debian's `seabios`
//! and `ovmf` packages. The VMM loads it from there when a configuration
//! names none, and the panel copies a new UEFI VM's variable store from
//! there.

use std::path::{Path, PathBuf};

/// Where the appliance keeps its firmware, then where Debian's packages put
/// it on a development host.
const SEARCH_DIRS: [&str; 3] = ["/usr/share/kvmos/firmware", "/usr/share/seabios", "/usr/share/OVMF"];
pub const SEABIOS_FILE: &str = "bios-256k.bin";
pub const OVMF_CODE_FILE: &str = "OVMF_CODE_4M.fd";
pub const OVMF_VARS_FILE: &str = "OVMF_VARS_4M.fd";

/// The first existing `file` in the firmware directories.
pub fn find(file: &str) -> Option<PathBuf> {
    SEARCH_DIRS.iter().map(|d| Path::new(d).join(file)).find(|p| p.is_file())
}
