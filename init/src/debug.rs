//! Test hooks, enabled only by `kvmos.debug` on the kernel command line.
//!
//! The appliance has no shell. With `kvmos.debug`, PID 1 reads commands from
//! the serial console so the QEMU tests can look inside and break things on
//! purpose. Every command line starts with `kvmos-debug`; answers start with
//! `kvmos-debug:`.
//!
//! | command | effect |
//! |---|---|
//! | `kvmos-debug kill-webadmin` | SIGKILL kvmos-webadmin (the supervisor restarts it) |
//! | `kvmos-debug write PATH TEXT` | write TEXT to the file PATH |
//! | `kvmos-debug cat PATH` | print the file PATH, then `end of PATH` |
//! | `kvmos-debug ls DIR` | list DIR on one line (`name->target` for links), then `end of DIR` |
//! | `kvmos-debug ps` | list processes with their state (zombies show `Z`) |
//! | `kvmos-debug orphans N` | start N processes that orphan a child each, which PID 1 must reap |
//! | `kvmos-debug status` | print the console screen again |
//! | `kvmos-debug reboot` | send PID 1 the reboot signal (SIGUSR1), as the panel does |

use std::io::BufRead;

/// A parsed debug command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    KillWebadmin,
    Write { path: String, text: String },
    Cat { path: String },
    Ls { path: String },
    Ps,
    Orphans(u32),
    Status,
    Reboot,
}

pub fn parse(line: &str) -> Option<Result<Command, String>> {
    let rest = line.trim().strip_prefix("kvmos-debug")?;
    if !rest.is_empty() && !rest.starts_with(' ') {
        return None;
    }
    let rest = rest.trim();
    let (cmd, args) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(match cmd {
        "kill-webadmin" => Ok(Command::KillWebadmin),
        "write" => match args.split_once(' ') {
            Some((path, text)) => Ok(Command::Write { path: path.into(), text: text.into() }),
            None => Err("usage: kvmos-debug write PATH TEXT".into()),
        },
        "cat" if !args.is_empty() => Ok(Command::Cat { path: args.trim().into() }),
        "ls" if !args.is_empty() => Ok(Command::Ls { path: args.trim().into() }),
        "ps" => Ok(Command::Ps),
        "orphans" => args.trim().parse().map(Command::Orphans).map_err(|_| "usage: kvmos-debug orphans N".into()),
        "status" => Ok(Command::Status),
        "reboot" => Ok(Command::Reboot),
        _ => Err(format!("unknown command {rest:?}; see init/src/debug.rs")),
    })
}

/// Reads console lines on a thread and hands each command to `handle`.
pub fn listen(handle: impl Fn(Result<Command, String>) + Send + 'static) -> std::io::Result<()> {
    let console = std::fs::File::open("/dev/console")?;
    std::thread::Builder::new().name("debug-console".into()).spawn(move || {
        for line in std::io::BufReader::new(console).lines() {
            let Ok(line) = line else { break };
            if let Some(cmd) = parse(&line) {
                handle(cmd);
            }
        }
    })?;
    Ok(())
}

/// `ps`: every process with its state letter from /proc/PID/stat.
pub fn processes() -> Vec<(i32, String, char)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // "PID (comm) S ...": comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let comm = stat[open + 1..close].to_string();
        let state = stat[close + 1..].trim_start().chars().next().unwrap_or('?');
        out.push((pid, comm, state));
    }
    out.sort();
    out
}

/// argv[1] of kvmos-init when it runs as a helper for `orphans`.
pub const ORPHAN_PARENT: &str = "debug-orphan-parent";
pub const ORPHAN_CHILD: &str = "debug-orphan-child";

/// Helper modes of the kvmos-init binary (not PID 1): the parent starts a
/// child and exits at once, so the child is reparented to PID 1; the child
/// exits a second later and must be reaped by PID 1.
/// A directory's entries, sorted, with symbolic links' targets
/// (`/proc/PID/ns/net->net:[4026531840]`).
pub fn list(dir: &str) -> std::io::Result<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            match std::fs::read_link(e.path()) {
                Ok(target) => format!("{name}->{}", target.display()),
                Err(_) => name,
            }
        })
        .collect();
    names.sort();
    Ok(names.join(" "))
}

pub fn run_helper(mode: &str) -> Option<i32> {
    match mode {
        ORPHAN_PARENT => {
            let me = std::env::current_exe().ok()?;
            let spawned = std::process::Command::new(me).arg(ORPHAN_CHILD).spawn().is_ok();
            Some(if spawned { 0 } else { 1 })
        }
        ORPHAN_CHILD => {
            std::thread::sleep(std::time::Duration::from_secs(1));
            Some(0)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse("kvmos-debug kill-webadmin"), Some(Ok(Command::KillWebadmin)));
        assert_eq!(
            parse("  kvmos-debug write /var/lib/kvmos/x hello world\r"),
            Some(Ok(Command::Write { path: "/var/lib/kvmos/x".into(), text: "hello world".into() }))
        );
        assert_eq!(parse("kvmos-debug orphans 3"), Some(Ok(Command::Orphans(3))));
        assert!(matches!(parse("kvmos-debug frobnicate"), Some(Err(_))));
        assert_eq!(parse("ls -l"), None, "other console input is not ours");
        assert_eq!(parse("kvmos-debug ls /proc/1/ns"), Some(Ok(Command::Ls { path: "/proc/1/ns".into() })));
        let dir = std::env::temp_dir().join(format!("kvmos-debug-ls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("b"), "").unwrap();
        let _ = std::os::unix::fs::symlink("/x", dir.join("a"));
        assert_eq!(list(dir.to_str().unwrap()).unwrap(), "a->/x b");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(parse("kvmos-debugger"), None);
    }

    #[test]
    fn ps_reads_this_process() {
        let me = std::process::id() as i32;
        let found = processes().into_iter().find(|p| p.0 == me).unwrap();
        assert!(found.2 == 'R' || found.2 == 'S', "{found:?}");
    }
}
