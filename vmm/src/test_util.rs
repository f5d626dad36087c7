//! Helpers the unit tests share.

/// The most memory this process has held so far (VmHWM), in KiB: a test
/// that a guest cannot make the VMM allocate what it asks for compares it
/// before and after (other tests in the process may add a little).
pub fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
