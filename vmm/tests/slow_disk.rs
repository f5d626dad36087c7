//! A disk whose reads never end holds up nothing but itself. The disk is a
//! file on a FUSE file system served by this test that answers no read, as
//! a hung network file system or a dying drive behaves. The guest (SeaBIOS
//! on this host's /dev/kvm, booting a hand-made boot sector) reads it; the
//! disk's I/O thread waits in the kernel for ever. The VMM must still
//! answer its control API at once, and a stop must end it within seconds,
//! not wait for the read.

mod support;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, LockOwner, MountOption, OpenFlags,
    ReplyAttr, ReplyData, ReplyEntry, Request, SessionACL,
};
use kvmos_vmm::tiny_guest;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

const DISK: &str = "disk.img";
const DISK_SIZE: u64 = 1 << 20;
const TTL: Duration = Duration::from_secs(60);

/// One read-only file whose reads are counted and never answered.
struct HungDisk {
    reads: Arc<AtomicUsize>,
    held: Mutex<Vec<ReplyData>>,
}

fn attr(ino: u64, kind: FileType, size: u64, perm: u16) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size / 512,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind,
        perm,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        flags: 0,
        blksize: 512,
    }
}

impl Filesystem for HungDisk {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name == DISK {
            reply.entry(&TTL, &attr(2, FileType::RegularFile, DISK_SIZE, 0o444), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match u64::from(ino) {
            1 => reply.attr(&TTL, &attr(1, FileType::Directory, 0, 0o755)),
            2 => reply.attr(&TTL, &attr(2, FileType::RegularFile, DISK_SIZE, 0o444)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.held.lock().unwrap().push(reply);
    }
}

#[test]
fn a_disk_whose_reads_never_end_holds_up_neither_the_api_nor_a_stop() {
    let mnt = tempfile::tempdir().unwrap();
    let reads = Arc::new(AtomicUsize::new(0));
    let fs = HungDisk { reads: Arc::clone(&reads), held: Mutex::new(Vec::new()) };
    let mut config = fuser::Config::default();
    config.mount_options = vec![MountOption::RO, MountOption::FSName("kvmos-hung-disk".into())];
    config.acl = SessionACL::All;
    let session = fuser::spawn_mount(fs, mnt.path(), &config).expect("a FUSE mount (/dev/fuse, as root)");

    let dir = tempfile::tempdir().unwrap();
    let reader = dir.path().join("reader.img");
    std::fs::write(&reader, tiny_guest::disk_label_reader("reading the hung disk")).unwrap();
    let hung = format!("{},ro", mnt.path().join(DISK).display());
    let mut vm =
        support::Vm::start_disks(&[&reader.display().to_string(), &hung], kvmos_vmm::jail::testing::next_slot());
    // Dropped before the VM if the test fails: unmounting ends the hung read,
    // so the VM's drop (kill and wait) cannot hang on it.
    let _unmount_first = session;
    vm.wait_console("reading the hung disk", 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while reads.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the guest never read the disk: {}", vm.console());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(!vm.console().contains(tiny_guest::CDROM_READ), "the read cannot have ended: {}", vm.console());

    let asked = Instant::now();
    let (status, body) = vm.api("GET", "/vm", None);
    assert_eq!(status, 200, "{body}");
    assert!(asked.elapsed() < Duration::from_secs(1), "the API answered in {:?}", asked.elapsed());

    let asked = Instant::now();
    assert_eq!(vm.api("PUT", "/actions", Some(r#"{"action":"stop"}"#)).0, 204);
    let (code, record) = vm.wait_exit();
    assert_eq!(code, kvmos_vmm::exit::EXIT_STOPPED, "{record}");
    // The disk's thread gets 5 s to finish its request, then is left.
    assert!(asked.elapsed() < Duration::from_secs(10), "stopped in {:?}", asked.elapsed());
    let log = std::fs::read_to_string(vm.path("vmm.err")).unwrap();
    assert!(log.contains("is still blocked"), "the log names the thread left behind: {log}");
}
