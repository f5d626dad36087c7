//! Vendors the front-end packages at build time: `npm ci` from the npm
//! registry against the committed `ui/package-lock.json`, then the files
//! the panel serves (ours from `ui/`, xterm.js and noVNC from
//! `node_modules`) are copied to `$OUT_DIR/ui`, which rust-embed bakes into
//! the binary. noVNC is ES modules, so its `core` and `vendor` trees are
//! copied whole.

use std::path::{Path, PathBuf};
use std::process::Command;

/// (source under ui/, name served under /assets/)
const FILES: &[(&str, &str)] = &[
    ("index.html", "index.html"),
    ("app.js", "app.js"),
    ("app.css", "app.css"),
    ("favicon.svg", "favicon.svg"),
    ("screen.js", "screen.js"),
    ("switch.js", "switch.js"),
    ("node_modules/@xterm/xterm/lib/xterm.js", "vendor/xterm.js"),
    ("node_modules/@xterm/xterm/css/xterm.css", "vendor/xterm.css"),
    ("node_modules/@xterm/addon-fit/lib/addon-fit.js", "vendor/addon-fit.js"),
    ("node_modules/@novnc/novnc/LICENSE.txt", "vendor/novnc/LICENSE.txt"),
];

/// Directories copied whole: (source under ui/, name under /assets/).
const DIRS: &[(&str, &str)] = &[
    ("node_modules/@novnc/novnc/core", "vendor/novnc/core"),
    ("node_modules/@novnc/novnc/vendor", "vendor/novnc/vendor"),
];

fn main() {
    let ui = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("ui");
    for f in [
        "package.json",
        "package-lock.json",
        "index.html",
        "app.js",
        "app.css",
        "favicon.svg",
        "screen.js",
        "switch.js",
    ] {
        println!("cargo:rerun-if-changed=ui/{f}");
    }
    if !installed(&ui) {
        let status = Command::new("npm")
            .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&ui)
            .status()
            .unwrap_or_else(|e| panic!("cannot run npm (install Node.js and npm: apt-get install npm): {e}"));
        assert!(status.success(), "npm ci failed in {}", ui.display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("ui");
    for (src, dst) in FILES {
        let to = out.join(dst);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(ui.join(src), &to).unwrap_or_else(|e| panic!("cannot copy ui/{src}: {e}"));
    }
    for (src, dst) in DIRS {
        copy_tree(&ui.join(src), &out.join(dst));
    }
}

/// Copies the `.js` files (and licences) of a tree.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("cannot read {}: {e}", from.display())) {
        let entry = entry.unwrap();
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&path, &to.join(entry.file_name()));
        } else if path.extension().is_some_and(|e| e == "js" || e == "md" || e == "txt") {
            std::fs::copy(&path, to.join(entry.file_name())).unwrap();
        }
    }
}

/// node_modules matches the lockfile (npm writes its own copy of the lock
/// there after an install).
fn installed(ui: &Path) -> bool {
    let lock = std::fs::read(ui.join("package-lock.json")).ok();
    let hidden = std::fs::read(ui.join("node_modules/.package-lock.json")).ok();
    let (Some(lock), Some(hidden)) = (lock, hidden) else { return false };
    let packages = |b: &[u8]| -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(b).ok()?;
        let mut p = v.get("packages")?.as_object()?.clone();
        p.remove("");
        let versions: Vec<String> =
            p.iter().map(|(k, v)| format!("{k}@{}", v.get("version").and_then(|x| x.as_str()).unwrap_or(""))).collect();
        Some(versions.join(","))
    };
    packages(&lock).is_some() && packages(&lock) == packages(&hidden)
}
