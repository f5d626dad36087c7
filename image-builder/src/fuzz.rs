//! The fuzzers' short run in the test command: every target in `fuzz/`
//! (cargo-fuzz, libFuzzer with AddressSanitizer, built as the appliance
//! ships its code: optimised, without debug assertions) runs for a fixed
//! time from its seed corpus in `fuzz/corpus/<target>/`. What it learns
//! goes to `target/fuzz-corpus/`, never into the repository; a crash fails
//! the run and leaves its input in `fuzz/artifacts/<target>/`.
//!
//! cargo-fuzz passes `-Z` flags (the sanitizer, coverage) that only a
//! nightly compiler takes. The machine's one toolchain is stable, and its
//! release ships the AddressSanitizer runtime, so the run sets
//! `RUSTC_BOOTSTRAP=1`: the stable compiler then accepts those flags. Only
//! the fuzz build (its own `fuzz/target`) sees that; the appliance is built
//! without it.
//!
//! Long runs are by hand (`RUSTC_BOOTSTRAP=1 cargo fuzz run -O TARGET`);
//! their figures are in BENCHMARKS.md.

use crate::Layout;
use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::process::Command;
use std::time::Instant;

/// Seconds each target runs.
pub const SECONDS_PER_TARGET: u32 = 10;
/// The cargo-fuzz release the run installs when it is missing.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// The targets, from `fuzz/Cargo.toml`'s `[[bin]]` sections.
pub fn targets(layout: &Layout) -> Result<Vec<String>> {
    let manifest = std::fs::read_to_string(layout.repo.join("fuzz/Cargo.toml")).context("fuzz/Cargo.toml")?;
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if let (true, Some(v)) = (in_bin, line.strip_prefix("name = ")) {
            names.push(v.trim_matches('"').to_string());
        }
    }
    Ok(names)
}

/// Builds every target, then runs each for [`SECONDS_PER_TARGET`].
pub fn smoke(layout: &Layout, cargo: &OsStr) -> Result<()> {
    ensure_cargo_fuzz(cargo)?;
    let dir = layout.repo.join("fuzz");
    eprintln!("==> fuzz: build the targets (RUSTC_BOOTSTRAP=1 cargo fuzz build -O)");
    let status = Command::new(cargo)
        .args(["fuzz", "build", "-O"])
        .env("RUSTC_BOOTSTRAP", "1")
        .current_dir(&dir)
        .status()
        .context("cannot run cargo fuzz")?;
    if !status.success() {
        bail!("the fuzz targets do not build ({status})");
    }
    for target in targets(layout)? {
        let learned = layout.repo.join("target/fuzz-corpus").join(&target);
        std::fs::create_dir_all(&learned)?;
        let started = Instant::now();
        let out = Command::new(cargo)
            .args(["fuzz", "run", "-O", &target])
            .env("RUSTC_BOOTSTRAP", "1")
            .arg(&learned)
            .arg(dir.join("corpus").join(&target))
            .arg("--")
            .arg(format!("-max_total_time={SECONDS_PER_TARGET}"))
            .args(["-rss_limit_mb=4096", "-print_final_stats=1"])
            .current_dir(&dir)
            .output()
            .context("cannot run cargo fuzz")?;
        let text = String::from_utf8_lossy(&out.stderr);
        let runs =
            text.lines().find_map(|l| l.strip_prefix("stat::number_of_executed_units:")).map(str::trim).unwrap_or("?");
        if !out.status.success() {
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "fuzz target {target} failed ({}): its input is in fuzz/artifacts/{target}/\n{}",
                out.status,
                tail.join("\n")
            );
        }
        eprintln!("    {target}: {runs} inputs in {:.0} s, no crash", started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// cargo-fuzz, installed from crates.io when it is missing.
fn ensure_cargo_fuzz(cargo: &OsStr) -> Result<()> {
    let has = |args: &[&str]| Command::new(cargo).args(args).output().is_ok_and(|o| o.status.success());
    if has(&["fuzz", "--version"]) {
        return Ok(());
    }
    eprintln!("==> cargo install cargo-fuzz --version {CARGO_FUZZ_VERSION} --locked");
    let status = Command::new(cargo)
        .args(["install", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION, "--locked"])
        .status()
        .context("cannot run cargo install")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_has_a_seed_corpus_and_a_source() {
        let layout = Layout::this_checkout();
        let targets = targets(&layout).unwrap();
        assert!(targets.len() >= 12, "{targets:?}");
        for t in &targets {
            let seeds = layout.repo.join("fuzz/corpus").join(t);
            assert!(std::fs::read_dir(&seeds).is_ok_and(|d| d.count() > 0), "no seeds in {}", seeds.display());
            assert!(layout.repo.join("fuzz/fuzz_targets").join(format!("{t}.rs")).is_file(), "{t}");
        }
    }
}
