//! Builds (once) and prints the path of a Debian 12 image that the
//! PC-machine tests and benchmarks boot (see `kvmos_qemu_test::debian`):
//! the test image, or with `cloud` the cloud-style image.

use kvmos_qemu_test::debian::{image_of, Flavour};

fn main() -> anyhow::Result<()> {
    let flavour = match std::env::args().nth(1).as_deref() {
        None | Some("test") => Flavour::Test,
        Some("cloud") => Flavour::Cloud,
        Some(other) => anyhow::bail!("no Debian image flavour {other:?}: give `test` (the default) or `cloud`"),
    };
    println!("{}", image_of(flavour)?.display());
    Ok(())
}
