//! A VMM's processes as its supervisor sees them. The process the panel
//! starts enters the jail's PID namespace by forking: its one child runs
//! the VM as the VM's own user, while it waits outside as root and writes
//! the exit record.

/// The jailed VMM of the process `started` (a supervisor's child): its one
/// child, which runs the VM while `started` waits outside the jail.
pub fn jailed_child(started: u32) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{started}/task/{started}/children")).ok()?;
    let mut pids = children.split_whitespace().filter_map(|p| p.parse().ok());
    match (pids.next(), pids.next()) {
        (Some(pid), None) => Some(pid),
        _ => None,
    }
}
