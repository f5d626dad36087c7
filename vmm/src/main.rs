//! kvmos-vmm runs one virtual machine per process on KVM (see the VMM issue
//! for what it will hold: rust-vmm based boot, virtio devices, a control API).
//!
//! It is not written yet. Until it is, the binary exists so the image layout
//! is final, and it says plainly that it cannot run a VM.

fn main() {
    if std::env::args().any(|a| a == "--version") {
        println!("kvmos-vmm {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    eprintln!("kvmos-vmm {}: this build has no VMM yet; it cannot run virtual machines", env!("CARGO_PKG_VERSION"));
    std::process::exit(2);
}
