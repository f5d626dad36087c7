//! kvmos-vmm beside Firecracker, alternating in one run, with the same guest.
//! Firecracker is not part of kvmos: give the path of a static build (it
//! must run in a busybox initramfs for the nested figures) in
//! `FIRECRACKER`. Both run without an API socket, 1 vCPU, 128 MiB.
//!
//! - `host RUNS`: on this host's /dev/kvm, with the idle ELF guest of
//!   `kvmos_vmm::tiny_guest` (Linux guests cannot run here): VMM start →
//!   the guest's first line on the serial console, i.e. the vCPUs are
//!   running guest code. kvmos-vmm runs jailed, as the panel runs it, and
//!   without the jail (Firecracker here has no jailer).
//! - `nested PAIRS`: in one L1 under QEMU TCG (the harness of
//!   `kvmos_qemu_test::nested`), the same guest vmlinux (PVH) and busybox
//!   initramfs whose init prints its uptime and reboots, `quiet`: VMM
//!   start → exit in L1 time. kvmos-vmm runs jailed. Its own timeline
//!   (kernel read, VM built, vCPUs started, boot marker) is printed beside.
//! - `fresh PAIRS`: the same, but each VMM run in an L1 of its own, just
//!   booted (an L1 boot per sample), the order alternating each round: no
//!   run inherits what an earlier VM left in the L1 or in the L0's cache
//!   of translated code.
//!
//! Usage: `FIRECRACKER=/path/to/firecracker cargo run --release -p kvmos-qemu-test --bin firecracker-bench -- host 20`
//! and `… -- nested 10`. With `KVMOS_VMM_BASE=/path/to/another/kvmos-vmm`, the
//! nested runs take turns with that build too (to measure a change against
//! main in the same run).

use anyhow::{bail, Context, Result};
use kvmos_qemu_test::nested::{guest_initramfs, Nested};
use kvmos_qemu_test::stats::Spread;
use kvmos_qemu_test::timed::TimedOutput;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The kernel command line both VMMs give the guest.
const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off quiet";

/// The guest's command line: `FIRECRACKER_BENCH_CMDLINE` if set (to see
/// the guest's boot log, say, without `quiet`), else the default.
fn cmdline() -> String {
    std::env::var("FIRECRACKER_BENCH_CMDLINE").unwrap_or_else(|_| DEFAULT_CMDLINE.into())
}

fn firecracker() -> Result<PathBuf> {
    let path = std::env::var_os("FIRECRACKER")
        .map(PathBuf::from)
        .context("set FIRECRACKER to the path of a static Firecracker binary to compare with")?;
    if !path.is_file() {
        bail!("FIRECRACKER={} is not a file", path.display());
    }
    Ok(path)
}

/// Firecracker's configuration file for a run without its API.
fn firecracker_config(kernel: &str, initrd: Option<&str>) -> String {
    let mut boot = serde_json::json!({"kernel_image_path": kernel, "boot_args": cmdline()});
    if let Some(initrd) = initrd {
        boot["initrd_path"] = initrd.into();
    }
    serde_json::json!({
        "boot-source": boot, "drives": [],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        // Written when it stops: its vCPU exits among them.
        "metrics": {"metrics_path": "metrics.json"},
    })
    .to_string()
}

/// One start on this host: spawn → the guest's ready line on stdout.
fn start_to_guest(program: &Path, args: &[&str], dir: &Path) -> Result<f64> {
    let t0 = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let out = TimedOutput::read(child.stdout.take().context("stdout")?);
    let seen = out.when(0, kvmos_vmm::tiny_guest::READY_LINE, Duration::from_secs(10));
    // A jailed kvmos-vmm runs the VM in a child, which dies after the
    // jailer: wait for it too, so no run overlaps the last one's teardown
    // (this host's KVM refuses to run a new VM for a while then).
    let vm = kvmos_vmm::jail::jailed_child(child.id());
    let _ = child.kill();
    let _ = child.wait();
    if let Some(pid) = vm {
        let gone = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < gone {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok((seen? - t0).as_secs_f64() * 1000.0)
}

fn host(runs: usize) -> Result<()> {
    let fc = firecracker()?;
    let vmm = &kvmos_qemu_test::binaries()?.vmm;
    let dir = kvmos_qemu_test::work_dir("firecracker-bench")?;
    std::fs::write(dir.join("tiny.elf"), kvmos_vmm::tiny_guest::elf())?;
    std::fs::write(dir.join("fc.json"), firecracker_config("tiny.elf", None))?;
    let cmdline = cmdline();
    let kvmos = |jail: &[&'static str]| -> Vec<&str> {
        let mut a =
            vec!["--kernel", "tiny.elf", "--memory-mib", "128", "--vcpus", "1", "--serial", "stdio", "--cmdline"];
        a.push(&cmdline);
        a.extend_from_slice(jail);
        a
    };
    let jailed = kvmos(&["--jail-uid", "990000", "--jail-gid", "990000"]);
    let bare = kvmos(&["--no-jail"]);
    let fc_args = ["--no-api", "--config-file", "fc.json", "--level", "Error"];
    let (mut j, mut n, mut f) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        j.push(start_to_guest(vmm, &jailed, &dir)?);
        n.push(start_to_guest(vmm, &bare, &dir)?);
        f.push(start_to_guest(&fc, &fc_args, &dir)?);
    }
    let (j, n, f) = (Spread::of(&j), Spread::of(&n), Spread::of(&f));
    println!("this host's /dev/kvm; the idle tiny ELF guest, 1 vCPU, 128 MiB; {runs} alternating runs each");
    println!("VMM start → the guest's first line on the serial console, ms, median (min–max):");
    println!("| kvmos-vmm, jailed | kvmos-vmm, no jail | Firecracker | ratio jailed/FC | ratio no jail/FC |");
    println!("|---|---|---|---|---|");
    println!("| {j:.2} | {n:.2} | {f:.2} | {:.2} | {:.2} |", j.median / f.median, n.median / f.median);
    Ok(())
}

/// The L2 guest's init: its uptime, the boot marker, a reboot. With
/// `FIRECRACKER_BENCH_INITCALLS=1` it prints, after the marker, the 15
/// slowest initcalls from its kernel log (boot the guest with
/// `initcall_debug` in `FIRECRACKER_BENCH_CMDLINE`; `quiet` keeps them off
/// the console while it boots), to see where a guest's boot time goes.
fn l2_init() -> String {
    let initcalls = if std::env::var("FIRECRACKER_BENCH_INITCALLS").is_ok_and(|v| v == "1") {
        "dmesg | grep 'returned.*usecs' | sed 's/.*initcall \\([^ ]*\\) returned .* after \\([0-9]*\\) usecs/\\2 \\1/' \
         | sort -rn | head -15 | sed 's/^/L2-INITCALL /'\n"
    } else {
        ""
    };
    format!(
        "mount -t proc proc /proc\n\
         mount -t devtmpfs devtmpfs /dev\n\
         echo \"L2-UPTIME $(cut -d' ' -f1 /proc/uptime)\"\n\
         printf x | dd of=/dev/port bs=1 seek=1088 count=1 2>/dev/null\n\
         {initcalls}\
         reboot -f\n"
    )
}

/// The kvmos-vmm command line in the L1 (the binary given).
fn kvmos_command(binary: &str) -> String {
    format!(
        "env RUST_LOG=debug ./{binary} --jail-uid 1000 --jail-gid 1000 --kernel vmlinux --initrd l2.cpio.zst \
         --cmdline '{}' --memory-mib 128 --vcpus 1 --serial stdio",
        cmdline()
    )
}

/// One VMM run in an L1: which, its exit code, VMM start → exit in L1
/// seconds, what it printed, and the round it belongs to.
struct Run {
    vmm: String,
    exit: String,
    span: f64,
    text: String,
    round: usize,
}

/// The VMMs a round runs: kvmos-vmm, the base build if one is given, and
/// Firecracker, each as `(name, command)`.
fn vmm_commands(base: bool) -> Vec<(&'static str, String)> {
    let mut v = vec![("kvmos", kvmos_command("kvmos-vmm"))];
    if base {
        v.push(("base", kvmos_command("kvmos-vmm-base")));
    }
    v.push(("firecracker", "./firecracker --no-api --config-file fc.json --level Info".into()));
    v
}

/// Boots one L1 with the VMMs and the guest, which runs `runs` (each a
/// `(name, command)`) `times` times in turn; returns each run, in order.
fn l1_runs(runs: &[(&str, String)], times: usize, fc: &[u8], base: Option<&[u8]>) -> Result<Vec<Run>> {
    let round: String = runs.iter().map(|(name, cmd)| format!("run {name} {cmd}\n")).collect();
    let script = format!(
        "now() {{ cut -d' ' -f1 /proc/uptime; }}\n\
         run() {{ name=$1; shift; : > metrics.json; t0=$(now); \"$@\" < /dev/null > out 2> err; code=$?; t1=$(now)\n\
           cat out err; [ -s metrics.json ] && sed 's/^/FC-METRICS /' metrics.json\n\
           echo \"RUN vmm=$name exit=$code l1_start=$t0 l1_end=$t1\"; }}\n\
         for i in $(seq {times}); do\n{round}done\n"
    );
    let vmlinux = std::fs::read(&kvmos_qemu_test::image()?.guest_vmlinux)?;
    let mut l1 = Nested::new(&script)?
        .with_vmm()?
        .file("firecracker", fc.to_vec(), 0o755)?
        .file("fc.json", firecracker_config("vmlinux", Some("l2.cpio.zst")).into_bytes(), 0o644)?
        .file("vmlinux", vmlinux, 0o644)?
        .file("l2.cpio.zst", guest_initramfs(&l2_init())?, 0o644)?;
    if let Some(base) = base {
        l1 = l1.file("kvmos-vmm-base", base.to_vec(), 0o755)?;
    }
    let r = l1.run("firecracker-bench-nested", Duration::from_secs(3600))?;
    // Each run's output ends with its RUN line: split on those.
    let mut out = Vec::new();
    let mut text = String::new();
    for line in r.output.lines() {
        if let Some(rest) = line.strip_prefix("RUN ") {
            let field = |k: &str| rest.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap_or("").to_string();
            let span = field("l1_end=").parse::<f64>().unwrap_or(f64::NAN)
                - field("l1_start=").parse::<f64>().unwrap_or(f64::NAN);
            let round = out.len() / runs.len() + 1;
            out.push(Run { vmm: field("vmm="), exit: field("exit="), span, text: std::mem::take(&mut text), round });
        } else {
            text.push_str(line);
            text.push('\n');
        }
    }
    if out.len() != runs.len() * times {
        bail!("the L1 ran {} of {} VMM runs:\n{}", out.len(), runs.len() * times, r.output);
    }
    Ok(out)
}

/// Firecracker's binary, and a second kvmos-vmm build to compare with
/// (e.g. main's) if `KVMOS_VMM_BASE` names one.
fn vmm_binaries() -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    let fc = std::fs::read(firecracker()?)?;
    let base = std::env::var_os("KVMOS_VMM_BASE").map(std::fs::read).transpose().context("KVMOS_VMM_BASE")?;
    Ok((fc, base))
}

/// `nested PAIRS`: every round in one L1.
fn nested(pairs: usize) -> Result<()> {
    let (fc, base) = vmm_binaries()?;
    let runs = l1_runs(&vmm_commands(base.is_some()), pairs, &fc, base.as_deref())?;
    println!("nested: QEMU TCG -cpu max, L1 1024 MiB, 2 vCPUs; L2 the guest vmlinux (PVH) + busybox initramfs,");
    println!("1 vCPU, 128 MiB, `{}`; {pairs} alternating rounds in one L1. kvmos-vmm runs jailed.", cmdline());
    report(&runs)
}

/// `fresh PAIRS`: each VMM run in an L1 of its own, just booted, so no run
/// inherits what an earlier VM left in the L1 or in the L0's translation
/// cache; which VMM goes first alternates from round to round.
fn fresh(pairs: usize) -> Result<()> {
    let (fc, base) = vmm_binaries()?;
    let mut all = Vec::new();
    for round in 1..=pairs {
        let mut order = vmm_commands(base.is_some());
        if round % 2 == 0 {
            order.reverse();
        }
        for vmm in order {
            let mut r = l1_runs(std::slice::from_ref(&vmm), 1, &fc, base.as_deref())?;
            for run in &mut r {
                run.round = round;
            }
            eprintln!("round {round}: {} {:.2} s", vmm.0, r[0].span);
            all.extend(r);
        }
    }
    println!("nested, one fresh L1 per run: QEMU TCG -cpu max, L1 1024 MiB, 2 vCPUs; L2 the guest vmlinux (PVH) +");
    println!(
        "busybox initramfs, 1 vCPU, 128 MiB, `{}`; {pairs} rounds, the order alternating. kvmos-vmm runs jailed.",
        cmdline()
    );
    report(&all)
}

/// Prints each run, kvmos-vmm's timeline and the medians; fails if a VMM
/// did not end as a reboot ends it.
fn report(runs: &[Run]) -> Result<()> {
    let after = |text: &str, marker: &str| -> String {
        text.lines()
            .find_map(|l| l.split(marker).nth(1)?.split_whitespace().next().map(str::to_string))
            .unwrap_or_else(|| "-".into())
    };
    println!("| round | VMM | exit | L2 uptime at init (s) | kvmos: VM built (ms) | vCPUs started (ms) | boot marker (ms) | exits to the VMM: port I/O, MMIO | VMM start → exit, L1 (s) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let show = std::env::var("FIRECRACKER_BENCH_SHOW").is_ok_and(|v| v == "1");
    for r in runs {
        if show {
            println!("----- round {} {} -----\n{}", r.round, r.vmm, r.text);
        }
        let ours = r.vmm != "firecracker";
        let mine = |marker: &str| if ours { after(&r.text, marker) } else { String::new() };
        let exits = vmm_exits(r).map_or("-".into(), |(io, mmio)| format!("{io}, {mmio}"));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {exits} | {:.2} |",
            r.round,
            r.vmm,
            r.exit,
            after(&r.text, "L2-UPTIME "),
            mine("VM built in "),
            mine("starting the vCPUs "),
            mine("guest boot marker: "),
            r.span
        );
        let expected = if ours { "3" } else { "0" };
        if r.exit != expected {
            bail!("{} ended with exit code {} (a reboot gives {expected}):\n{}", r.vmm, r.exit, r.text);
        }
    }
    // kvmos-vmm's own timeline (its debug log): each step's median.
    let mut steps: Vec<(String, Vec<f64>)> = Vec::new();
    for r in runs.iter().filter(|r| r.vmm == "kvmos") {
        for line in r.text.lines() {
            let Some((head, _)) = line.split_once(" ms after VMM start") else { continue };
            let Some((step, ms)) = head.rsplit_once(' ') else { continue };
            let step = step.split_once(" DEBUG ").or(step.split_once(" INFO ")).map_or(step, |s| s.1);
            let step = step.trim_end_matches(':').trim().to_string();
            let Ok(ms) = ms.parse::<f64>() else { continue };
            match steps.iter_mut().find(|s| s.0 == step) {
                Some(s) => s.1.push(ms),
                None => steps.push((step, vec![ms])),
            }
        }
    }
    println!("kvmos-vmm's timeline, ms after VMM start, median (min–max) over its runs:");
    for (step, ms) in &steps {
        println!("  {step}: {:.1}", Spread::of(ms));
    }
    // Firecracker's own: its first log line to "Successfully started".
    let fc_started: Vec<f64> = runs
        .iter()
        .filter(|r| r.vmm == "firecracker")
        .filter_map(|r| {
            let at = |needle: &str| -> Option<f64> {
                let line = r.text.lines().find(|l| l.contains(needle))?;
                let time = line.split_whitespace().next()?.split('T').nth(1)?;
                let mut hms = time.split(':').map(|v| v.parse::<f64>().ok());
                Some(hms.next()?? * 3600.0 + hms.next()?? * 60.0 + hms.next()??)
            };
            Some((at("Successfully started")? - at("Running Firecracker")?) * 1000.0)
        })
        .collect();
    println!("Firecracker, its first log line → \"Successfully started microvm\", ms: {:.1}", Spread::of(&fc_started));
    let spans = |vmm: &str| Spread::of(&runs.iter().filter(|r| r.vmm == vmm).map(|r| r.span).collect::<Vec<_>>());
    let f = spans("firecracker");
    println!("VMM start → exit, L1 seconds, median (min–max):");
    for vmm in ["kvmos", "base"].into_iter().filter(|v| runs.iter().any(|r| r.vmm == *v)) {
        let k = spans(vmm);
        println!("  kvmos-vmm ({vmm}) {k:.2}: {:.2}× Firecracker's {f:.2}", k.median / f.median);
    }
    Ok(())
}

/// How often the guest's vCPU left KVM for the VMM's process, for port
/// I/O and for MMIO: kvmos-vmm's debug log, Firecracker's metrics.
fn vmm_exits(r: &Run) -> Option<(u64, u64)> {
    if r.vmm == "firecracker" {
        // One line per flush (each minute and at the end), each counting
        // what happened since the one before.
        let flushes: Vec<serde_json::Value> = r
            .text
            .lines()
            .filter_map(|l| l.strip_prefix("FC-METRICS "))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if flushes.is_empty() {
            return None;
        }
        let v = |k: &str| flushes.iter().map(|m| m["vcpu"][k].as_u64().unwrap_or(0)).sum::<u64>();
        return Some((v("exit_io_in") + v("exit_io_out"), v("exit_mmio_read") + v("exit_mmio_write")));
    }
    let line = r.text.lines().find(|l| l.contains("left the guest for this process"))?;
    let number_after = |k: &str| line.split(k).nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok();
    Some((number_after("port I/O ")?, number_after("MMIO ")?))
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let count = args.next().map(|s| s.parse::<usize>()).transpose().context("the count must be a number")?;
    match mode.as_str() {
        "host" => host(count.unwrap_or(20)),
        "nested" => nested(count.unwrap_or(10)),
        "fresh" => fresh(count.unwrap_or(10)),
        _ => bail!("usage: FIRECRACKER=PATH firecracker-bench host [RUNS] | nested [PAIRS] | fresh [PAIRS]"),
    }
}
