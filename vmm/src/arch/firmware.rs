//! Firmware for the PC machine: Debian's SeaBIOS (legacy BIOS) and OVMF
//! (UEFI), checked before the VM is built and mapped where a PC has its
//! boot flash.
//!
//! The image sits just below 4 GiB in a read-only memory slot (writes exit
//! to the VMM instead of changing it, as with a flash chip in read mode).
//! Its last 128 KiB are also copied into RAM at 0xE0000-0xFFFFF, the
//! legacy BIOS area, which is what a PC's chipset shows there at reset.
//! OVMF's variable store goes right below the code; see
//! [`crate::devices::flash`].

use std::path::Path;

/// The end of the firmware: 4 GiB.
pub const FLASH_END: u64 = 1 << 32;
/// The legacy BIOS area that aliases the firmware's end.
pub const BIOS_AREA_START: u64 = 0xe_0000;
pub const BIOS_AREA_LEN: u64 = 0x2_0000;
/// QEMU's limit for a BIOS image.
const MAX_BIOS: u64 = 16 << 20;

pub use kvmos_contract::firmware::{find, OVMF_CODE_FILE, OVMF_VARS_FILE, SEABIOS_FILE};

#[derive(Debug, displaydoc::Display, thiserror::Error, PartialEq, Eq)]
pub enum FirmwareError {
    /// cannot read {0}: {1}
    Read(String, String),
    /// {0} is {1} bytes; a BIOS image is a multiple of 64 KiB up to 16 MiB (use SeaBIOS's bios-256k.bin)
    BiosSize(String, u64),
    /// {0} is not a firmware image: it has no x86 reset vector (a jump in its last 16 bytes)
    NoResetVector(String),
    /// {0} is not an OVMF code image: it has no firmware volume header ("_FVH"); use OVMF_CODE_4M.fd
    NotOvmfCode(String),
    /// {0} is not an OVMF variable store: it has no firmware volume header ("_FVH"); copy OVMF_VARS_4M.fd
    NotOvmfVars(String),
    /// {0} is {1} bytes, but with this OVMF code ({2} bytes) the variable store must be {3} bytes; copy the OVMF_VARS file that comes with the code
    VarsSize(String, u64, u64, u64),
}

fn read(path: &Path) -> Result<Vec<u8>, FirmwareError> {
    std::fs::read(path).map_err(|e| FirmwareError::Read(path.display().to_string(), e.to_string()))
}

/// The reset vector at 0xFFFFFFF0 must be a jump: a far jump (SeaBIOS), or
/// a near or short one after NOPs (edk2's reset vector).
fn has_reset_vector(image: &[u8]) -> bool {
    let Some(tail) = image.len().checked_sub(16).map(|at| &image[at..]) else { return false };
    let first = tail.iter().position(|&b| b != 0x90).unwrap_or(16);
    first < 4 && matches!(tail[first], 0xe9..=0xeb)
}

/// A firmware volume starts with a 16-byte zero vector, a GUID, a length,
/// then "_FVH" at offset 40.
fn has_fv_header(image: &[u8]) -> bool {
    image.get(40..44) == Some(b"_FVH")
}

/// Reads and checks a legacy BIOS image.
pub fn load_bios(path: &Path) -> Result<Vec<u8>, FirmwareError> {
    let image = read(path)?;
    let shown = path.display().to_string();
    let len = image.len() as u64;
    if len == 0 || !len.is_multiple_of(64 << 10) || len > MAX_BIOS {
        return Err(FirmwareError::BiosSize(shown, len));
    }
    if !has_reset_vector(&image) {
        return Err(FirmwareError::NoResetVector(shown));
    }
    Ok(image)
}

/// Reads and checks OVMF's code image.
pub fn load_uefi_code(path: &Path) -> Result<Vec<u8>, FirmwareError> {
    let image = read(path)?;
    let shown = path.display().to_string();
    if !has_fv_header(&image) || !image.len().is_multiple_of(4096) {
        return Err(FirmwareError::NotOvmfCode(shown));
    }
    if !has_reset_vector(&image) {
        return Err(FirmwareError::NoResetVector(shown));
    }
    Ok(image)
}

/// The size the variable store must have beside `code_len` bytes of code:
/// the two fill a flash of a whole number of MiB (2 or 4 MiB for Debian's
/// builds), as QEMU's two pflash devices do.
pub fn vars_len_for(code_len: u64) -> u64 {
    let mib = 1u64 << 20;
    code_len.div_ceil(mib).next_power_of_two() * mib - code_len
}

/// Checks a VM's variable store against its code image.
pub fn check_uefi_vars(path: &Path, code_len: u64) -> Result<(), FirmwareError> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| FirmwareError::Read(shown.clone(), e.to_string()))?;
    let want = vars_len_for(code_len);
    if meta.len() != want {
        return Err(FirmwareError::VarsSize(shown, meta.len(), code_len, want));
    }
    let mut head = [0u8; 44];
    use std::io::Read;
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| FirmwareError::Read(shown.clone(), e.to_string()))?;
    if !has_fv_header(&head) {
        return Err(FirmwareError::NotOvmfVars(shown));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn bios_images_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut good = vec![0u8; 256 << 10];
        let n = good.len();
        good[n - 16..n - 11].copy_from_slice(&[0xea, 0x5b, 0xe0, 0x00, 0xf0]);
        assert!(load_bios(&write(dir.path(), "bios.bin", &good)).is_ok());
        let truncated = &good[..100_000];
        assert!(matches!(load_bios(&write(dir.path(), "t.bin", truncated)), Err(FirmwareError::BiosSize(_, 100_000))));
        // Random bytes of the right size: no reset vector.
        let random = crate::tiny_guest::noise(0x1234_5678, 256 << 10);
        assert!(matches!(load_bios(&write(dir.path(), "r.bin", &random)), Err(FirmwareError::NoResetVector(_))));
        assert!(matches!(load_bios(&dir.path().join("missing")), Err(FirmwareError::Read(..))));
    }

    #[test]
    fn vars_sizes_follow_the_code() {
        // Debian's OVMF_CODE_4M.fd and OVMF_VARS_4M.fd.
        assert_eq!(vars_len_for(0x37_c000), 0x8_4000);
        // The 2 MiB build: 1920 KiB of code and 128 KiB of variables.
        assert_eq!(vars_len_for(0x1e_0000), 0x2_0000);
    }

    #[test]
    fn debian_firmware_passes_when_installed() {
        // The packages are installed by the project's host tools; here only
        // what is present is checked against the rules above.
        if let Some(p) = find(SEABIOS_FILE) {
            load_bios(&p).unwrap();
        }
        if let (Some(code), Some(vars)) = (find(OVMF_CODE_FILE), find(OVMF_VARS_FILE)) {
            let c = load_uefi_code(&code).unwrap();
            check_uefi_vars(&vars, c.len() as u64).unwrap();
        }
    }
}
