//! Builds (once) and prints the path of the Debian 12 test image that the
//! PC-machine tests and benchmarks boot (see `kvmos_qemu_test::debian`).

fn main() -> anyhow::Result<()> {
    println!("{}", kvmos_qemu_test::debian::image()?.display());
    Ok(())
}
