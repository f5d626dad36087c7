//! The kernel's free-memory reserve, sized for a host that runs VMs.
//!
//! With transparent huge pages, khugepaged raises `vm.min_free_kbytes` at
//! boot to keep eleven 2 MiB blocks free (22 MiB). The kernel's watermarks
//! follow from that figure, and so does how many free pages each CPU keeps
//! on its own list (the zone's low watermark, split between the CPUs).
//! Together they take about 60 MiB of a 2 GiB host out of `MemAvailable`:
//! memory no VM can have. The kernel's own formula, 4·√(RAM in KiB), which
//! every kernel without THP uses, asks for 5.6 MiB there. On a large
//! server the two are close (at 64 GiB in two zones khugepaged asks for 44
//! MiB, the formula for 32), and from about 128 GiB up the formula asks
//! for more, so this changes nothing there. Huge pages for guest RAM still
//! work: a freshly booted host has nearly all of its memory in free 2 MiB
//! blocks, and the reserve only keeps a few back for later.

use std::path::Path;

const MIN_FREE: &str = "/proc/sys/vm/min_free_kbytes";

/// The kernel's default `min_free_kbytes` for this much memory
/// (`calculate_min_free_kbytes` in mm/page_alloc.c: √(16·KiB), within
/// 128 KiB and 256 MiB).
pub fn kernel_default_min_free_kbytes(mem_total_kib: u64) -> u64 {
    (mem_total_kib.saturating_mul(16)).isqrt().clamp(128, 262_144)
}

/// `MemTotal` in KiB from the text of /proc/meminfo.
fn mem_total_kib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What to do with the reserve: `Some(kib)` to lower it to that, `None` to
/// leave it (already at or below the kernel's default).
pub fn plan(meminfo: &str, current_kib: u64) -> Result<Option<u64>, String> {
    let total = mem_total_kib(meminfo).ok_or("no MemTotal in /proc/meminfo")?;
    let target = kernel_default_min_free_kbytes(total);
    Ok((current_kib > target).then_some(target))
}

/// Lowers the reserve to the kernel's default when huge pages raised it.
pub fn size_reserve() -> Result<String, String> {
    let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("cannot read {p}: {e}"));
    let meminfo = read("/proc/meminfo")?;
    let current: u64 = read(MIN_FREE)?.trim().parse().map_err(|e| format!("{MIN_FREE}: {e}"))?;
    match plan(&meminfo, current)? {
        None => Ok(format!("free-memory reserve {current} KiB (the kernel's default)")),
        Some(to) => {
            std::fs::write(Path::new(MIN_FREE), to.to_string()).map_err(|e| format!("cannot write {MIN_FREE}: {e}"))?;
            Ok(format!(
                "free-memory reserve {current} → {to} KiB (the kernel's default for this RAM; huge pages had raised it)"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_lowered_only_where_huge_pages_raised_it() {
        // The 2 GiB test appliance: khugepaged's 22528 KiB against the
        // kernel's 5.6 MiB.
        let two_gib = "MemTotal:        2012336 kB\nMemFree:         1900000 kB\n";
        assert_eq!(kernel_default_min_free_kbytes(2_012_336), 5674);
        assert_eq!(plan(two_gib, 22528).unwrap(), Some(5674));
        assert_eq!(plan(two_gib, 5674).unwrap(), None);
        // 64 GiB: the kernel's own figure is already above khugepaged's.
        assert_eq!(plan("MemTotal:       65000000 kB\n", 32249).unwrap(), None);
        // The kernel's bounds.
        assert_eq!(kernel_default_min_free_kbytes(100), 128);
        assert_eq!(kernel_default_min_free_kbytes(u64::MAX), 262_144);
        assert!(plan("nothing here", 1).is_err());
    }
}
