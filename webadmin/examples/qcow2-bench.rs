//! qcow2 → raw conversion speed: kvmos's converter (src/qcow2.rs) against
//! `qemu-img convert -O raw`, on the same images, alternating runs.
//!
//! `cargo run --release -p kvmos-webadmin --example qcow2-bench -- [runs]`
//! Makes a 1 GiB disk with 256 MiB of data (half pseudo-random, half text) and converts it as a plain and as a
//! zlib-compressed qcow2. Prints the median of each and the ratio. Both
//! sides are timed until the raw disk is on stable storage (fsync).

#[path = "../src/qcow2.rs"]
#[allow(dead_code)]
mod qcow2;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn qemu_img(args: &[&str]) {
    let ok = Command::new("qemu-img").args(args).status().expect("qemu-img (package qemu-utils)");
    assert!(ok.success(), "qemu-img {args:?}");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let dir = tempfile::tempdir_in(std::env::var("TMPDIR").unwrap_or("/var/tmp".into())).unwrap();
    let raw = dir.path().join("src.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(1 << 30).unwrap();
    // 64 data runs of 4 MiB, 12 MiB apart, from a xorshift stream.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut chunk = vec![0u8; 4 << 20];
    // Every other run is text, which zlib compresses, so the compressed
    // image has compressed clusters to decode.
    for i in 0..64u64 {
        for (j, b) in chunk.chunks_mut(8).enumerate() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let text = b"kvmos qcow";
            let bytes =
                if i % 2 == 0 { x.to_le_bytes() } else { [text[j % 10], b' ', b'a', b'b', b'c', b'd', b'e', b'\n'] };
            b.copy_from_slice(&bytes[..b.len()]);
        }
        f.write_all_at(&chunk, i * (16 << 20)).unwrap();
    }
    f.sync_all().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    println!("qcow2 → raw, 1 GiB disk with 256 MiB of data, page cache warm, {runs} alternating runs each");
    for (label, extra) in [("plain", None), ("zlib-compressed", Some("-c"))] {
        let q = dir.path().join(format!("{label}.qcow2"));
        let mut args = vec!["convert", "-O", "qcow2"];
        args.extend(extra);
        args.extend([raw.to_str().unwrap(), q.to_str().unwrap()]);
        qemu_img(&args);
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let out = dir.path().join("out.raw");
            let start = Instant::now();
            rt.block_on(qcow2::convert_to_raw(&q, &out, u64::MAX, |_, _| {})).unwrap();
            ours.push(start.elapsed());
            check_and_remove(&out, &raw);
            let start = Instant::now();
            qemu_img(&["convert", "-O", "raw", q.to_str().unwrap(), out.to_str().unwrap()]);
            // kvmos syncs the disk before it publishes it; so must the
            // reference, or it is timed into the page cache only.
            std::fs::File::open(&out).unwrap().sync_all().unwrap();
            theirs.push(start.elapsed());
            check_and_remove(&out, &raw);
        }
        let (a, b) = (median(ours), median(theirs));
        println!(
            "{label}: kvmos {:.3} s, qemu-img {:.3} s, ratio kvmos/qemu-img {:.2}",
            a.as_secs_f64(),
            b.as_secs_f64(),
            a.as_secs_f64() / b.as_secs_f64()
        );
    }
}

/// Both converters must give the same disk.
fn check_and_remove(out: &Path, want: &Path) {
    let (a, b) = (std::fs::File::open(out).unwrap(), std::fs::File::open(want).unwrap());
    assert_eq!(a.metadata().unwrap().len(), b.metadata().unwrap().len());
    let (mut x, mut y) = (vec![0u8; 16 << 20], vec![0u8; 16 << 20]);
    let mut at = 0;
    while at < b.metadata().unwrap().len() {
        a.read_exact_at(&mut x, at).unwrap();
        b.read_exact_at(&mut y, at).unwrap();
        assert!(x == y, "the converted disk differs at {at}");
        at += x.len() as u64;
    }
    std::fs::remove_file(out).unwrap();
}
