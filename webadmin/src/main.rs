//! kvmos-webadmin is the appliance's control plane: the HTTPS panel and REST
//! API that manage VMs (see the web admin issue).
//!
//! It is not written yet. Until it is, the binary exists so the image layout
//! is final, and it says plainly that there is no panel.

fn main() {
    if std::env::args().any(|a| a == "--version") {
        println!("kvmos-webadmin {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    eprintln!("kvmos-webadmin {}: this build has no admin panel yet", env!("CARGO_PKG_VERSION"));
    std::process::exit(2);
}
