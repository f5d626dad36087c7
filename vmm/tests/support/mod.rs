//! A jailed kvmos-vmm booting a hand-assembled disk with SeaBIOS on this
//! host's /dev/kvm, as the panel runs it: the VNC and API sockets, the
//! serial console in a file, and an exit record.

#![allow(dead_code)] // each test binary uses its own part

use kvmos_vmm::jail::testing;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const VMM: &str = env!("CARGO_BIN_EXE_kvmos-vmm");

pub struct Vm {
    pub child: Child,
    dir: tempfile::TempDir,
}

impl Vm {
    /// Boots `image` as the jail user of `slot` ([`testing::uid`]).
    pub fn start(image: &[u8], slot: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        std::fs::write(&disk, image).unwrap();
        Self::start_in(dir, &[&disk.display().to_string()], slot)
    }

    /// Boots from `disk`, a `--disk` argument (`PATH[,ro][,cdrom][,ide]`).
    pub fn start_disk(disk: &str, slot: u32) -> Self {
        Self::start_disks(&[disk], slot)
    }

    /// Boots with these `--disk` arguments, from the first.
    pub fn start_disks(disks: &[&str], slot: u32) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), disks, slot)
    }

    fn start_in(dir: tempfile::TempDir, disks: &[&str], slot: u32) -> Self {
        let config = dir.path().join("vm.json");
        std::fs::write(&config, serde_json::json!({ "exit_file": dir.path().join("exit.json") }).to_string()).unwrap();
        let child = Command::new(VMM)
            .arg("--config")
            .arg(&config)
            .args(["--firmware", "bios", "--memory-mib", "64", "--serial", "stdio"])
            .args(testing::args(slot))
            .args(disks.iter().flat_map(|d| ["--disk", d]))
            .arg("--vnc-socket")
            .arg(dir.path().join("vnc.sock"))
            .arg("--api-socket")
            .arg(dir.path().join("api.sock"))
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(dir.path().join("console.out")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("vmm.err")).unwrap())
            .spawn()
            .unwrap();
        Self { child, dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.path("console.out")).unwrap_or_default()).into_owned()
    }

    /// Waits until the console has shown `needle` `times` times.
    pub fn wait_console(&self, needle: &str, times: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.console().matches(needle).count() < times {
            let err = std::fs::read_to_string(self.path("vmm.err")).unwrap_or_default();
            assert!(Instant::now() < deadline, "no {needle:?} on the console: {}\n{err}", self.console());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The jailed VMM, which runs the VM.
    pub fn jailed_pid(&self) -> u32 {
        testing::jailed_pid(self.child.id())
    }

    /// The (jailed) VMM's user + system CPU time so far, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.jailed_pid())).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    /// Types `bytes` on the guest's serial console.
    pub fn send_console(&mut self, bytes: &[u8]) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("the console's input");
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let (status, body) =
            kvmos_contract::control::Client::new(self.path("api.sock")).request(method, path, body).unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Waits for the process we started to end; its exit code and the
    /// exit record.
    pub fn wait_exit(&mut self) -> (i32, serde_json::Value) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "the VMM did not end");
            std::thread::sleep(Duration::from_millis(20));
        };
        let record = std::fs::read_to_string(self.path("exit.json")).expect("the exit record");
        (status.code().expect("an exit code, not a signal"), serde_json::from_str(&record).unwrap())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
