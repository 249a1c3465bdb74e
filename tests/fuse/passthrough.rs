//! FUSE passthrough: opens of task content that is a file on this machine
//! go straight to that file in the kernel. The same programs read the same
//! bytes with it on and off; with it on, the bytes never cross the mount
//! process (its `rchar` in /proc/PID/io stays put).

use std::path::Path;

use crate::common::ns::ls;
use crate::common::*;
use crate::harness::*;

/// Sequential, random, mmap and concurrent reads of `task`, each compared
/// with `src` byte for byte (python prints a line per check).
fn read_every_way(task: &Path, src: &Path) {
    sh_ok(&format!("cmp {} {}", q(src), q(task)));
    let code = r#"
import mmap, os, random, sys, threading
task, src = sys.argv[1], sys.argv[2]
want = open(src, 'rb').read()
size = len(want)
fd = os.open(task, os.O_RDONLY)
rng = random.Random(7)
for _ in range(400):
    off = rng.randrange(size)
    n = rng.choice([1, 4096, 5000, 1 << 20])
    assert os.pread(fd, n, off) == want[off:off + n], ('random', off, n)
print('random ok')
with open(task, 'rb') as f:
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    assert len(m) == size
    for _ in range(200):
        off = rng.randrange(size)
        assert m[off:off + 9000] == want[off:off + 9000], ('mmap', off)
    assert m[:] == want
print('mmap ok')
errors = []
def reader(seed):
    r = random.Random(seed)
    fd = os.open(task, os.O_RDONLY)
    try:
        for _ in range(100):
            off = r.randrange(size)
            if os.pread(fd, 65536, off) != want[off:off + 65536]:
                errors.append((seed, off))
    finally:
        os.close(fd)
threads = [threading.Thread(target=reader, args=(s,)) for s in range(8)]
for t in threads: t.start()
for t in threads: t.join()
assert not errors, errors
print('concurrent ok')
"#;
    let out = python(code, &[&task.to_string_lossy(), &src.to_string_lossy()]);
    let stdout = succeeded(&out, "python reads");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["random ok", "mmap ok", "concurrent ok"]
    );
}

/// Bytes the mount process has read (from sockets and files alike).
fn rchar(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|n| n.parse().ok())
        .expect("rchar in /proc/PID/io")
}

/// Reads `task` every way and returns how many bytes the mount process
/// read meanwhile.
fn mount_bytes_read_every_way(m: &Mounted, task: &Path, src: &Path) -> u64 {
    let before = rchar(m.pid());
    read_every_way(task, src);
    rchar(m.pid()) - before
}

#[test]
fn embedded_reads_are_byte_identical_with_passthrough_on_and_off_and_on_never_cross_the_mount() {
    let root = tempdir();
    let src = root.path().join("src.bin");
    let size = 24 * MIB + 12345;
    write_file(&src, size, 61);
    let id = {
        let m = Mounted::embedded(root.path(), &[]);
        sh_ok(&format!("cp {} {}", q(&src), q(&m.import("a"))));
        task_id_xattr(&m.import("a"))
    };

    let on = Mounted::embedded(root.path(), &[]);
    let through_on = mount_bytes_read_every_way(&on, &on.task(&id), &src);
    drop(on);
    let off = Mounted::embedded(root.path(), &["--passthrough", "never"]);
    let through_off = mount_bytes_read_every_way(&off, &off.task(&id), &src);

    // Off, every byte came over the daemon's socket into the mount; on,
    // none did (a few KiB: lookups and the daemon's stat).
    assert!(
        through_off >= size,
        "off: the mount read only {through_off} bytes"
    );
    assert!(
        through_on < size / 64,
        "on: the mount read {through_on} bytes of a {size}-byte task"
    );
}

#[test]
fn a_mount_that_the_kernel_refuses_backing_files_logs_it_and_reads_through_itself() {
    // In a user namespace the mount has CAP_SYS_ADMIN there but not in the
    // kernel's eyes: FUSE mounts, and backing files are refused (EPERM).
    let root = tempdir();
    let src = root.path().join("src.bin");
    write_file(&src, 9 * MIB + 7, 62);
    let id = {
        let m = Mounted::embedded(root.path(), &[]);
        sh_ok(&format!("cp {} {}", q(&src), q(&m.import("a"))));
        task_id_xattr(&m.import("a"))
    };
    let log = root.path().join("mount.log");
    let wrapper: Vec<String> = [
        "sh",
        "-c",
        &format!(
            "exec unshare -Urm --propagation private \"$0\" \"$@\" 2> {}",
            q(&log)
        ),
    ]
    .map(String::from)
    .to_vec();
    let store = root.path().join("store");
    let mnt = root.path().join("mnt");
    let m = Mounted::start_in(&wrapper, &mnt, &["--embedded", store.to_str().unwrap()]);
    // The namespace's mount is reached through the mount's own namespace.
    for _ in 0..2 {
        m.sh_ok(&format!("cmp {} {}", q(&src), q(&m.task(&id))));
    }
    let dd = |f: &Path| {
        format!(
            "dd if={} bs=4096 skip=1000 count=3 status=none | sha256sum",
            q(f)
        )
    };
    assert_eq!(m.sh_ok(&dd(&m.task(&id))), sh_ok(&dd(&src)));
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("the kernel refused a backing file")
            && log.contains("Operation not permitted"),
        "no log line says passthrough was refused:\n{log}"
    );
    assert_eq!(
        log.matches("the kernel refused a backing file").count(),
        1,
        "the refusal is logged once"
    );
}

/// The mount's open descriptors of the file `path`: their access modes
/// (O_RDONLY, O_WRONLY, O_RDWR as 0, 1, 2).
fn access_modes_of_fds_on(pid: u32, path: &Path) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::metadata(path).unwrap();
    let mut modes = vec![];
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        let Ok(meta) = std::fs::metadata(entry.path()) else {
            continue;
        };
        if meta.dev() != target.dev() || meta.ino() != target.ino() {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            entry.file_name().to_string_lossy()
        ))
        .unwrap();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .expect("flags in fdinfo");
        modes.push(flags & 0o3);
    }
    modes
}

fn nlink(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().nlink()
}

#[test]
fn a_released_dfdaemon_links_its_file_for_the_mount_which_never_writes_it_and_later_opens_pass_through(
) {
    let root = tempdir();
    let daemon = Daemon::start_with(root.path(), &["--legacy"]);
    let src = root.path().join("src.bin");
    let size = 21 * MIB + 3;
    write_file(&src, size, 63);
    // The daemon imports by hard link: give it a copy, so its content file
    // is not `src` itself.
    let given = root.path().join("given.bin");
    std::fs::copy(&src, &given).unwrap();
    let id = daemon.ok(&["import", "--piece-length", "4mib", given.to_str().unwrap()]);
    std::fs::remove_file(&given).unwrap();
    let content = daemon.dir.join("tasks").join(format!("{id}.data"));
    let links_before = nlink(&content);
    let mtime_before = std::fs::metadata(&content).unwrap().modified().unwrap();

    let spool = root.path().join("spool");
    let m = Mounted::on(&daemon, root.path(), &["--spool", spool.to_str().unwrap()]);
    // The daemon holds the task: it is linked and complete within the
    // first open, which already passes through.
    let before = rchar(m.pid());
    sh_ok(&format!("cmp {} {}", q(&src), q(&m.task(&id))));
    let first = rchar(m.pid()) - before;
    assert!(
        first < size / 64,
        "the first open's reads crossed the mount: {first} bytes"
    );
    // The mount holds the daemon's file read-only, under no name.
    let modes = access_modes_of_fds_on(m.pid(), &content);
    assert!(
        !modes.is_empty(),
        "the mount holds no descriptor of the daemon's file"
    );
    assert!(
        modes.iter().all(|&m| m == 0),
        "opened for writing: {modes:?}"
    );
    assert_eq!(ls(&spool), "", "a download name is left in the spool");
    assert_eq!(nlink(&content), links_before);

    // Later opens pass through to the file too.
    let through = mount_bytes_read_every_way(&m, &m.task(&id), &src);
    assert!(through < size / 64, "the mount read {through} bytes");

    drop(m);
    assert_eq!(
        std::fs::metadata(&content).unwrap().modified().unwrap(),
        mtime_before
    );
    assert!(same_bytes(&content, &src), "the daemon's file changed");
    assert_eq!(nlink(&content), links_before);
}

#[test]
fn download_names_of_a_killed_mount_are_removed_by_the_next_one() {
    let root = tempdir();
    let daemon = Daemon::start_with(root.path(), &["--legacy"]);
    let src = root.path().join("src.bin");
    write_file(&src, 6 * MIB, 64);
    let id = daemon.ok(&["import", "--piece-length", "4mib", src.to_str().unwrap()]);
    let spool = root.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    // A name the daemon linked for a mount killed before it removed it.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let stale = spool.join(format!(".dfcache-download-{dead_pid}-0"));
    std::fs::hard_link(daemon.dir.join("tasks").join(format!("{id}.data")), &stale).unwrap();

    let mut m = Mounted::on(&daemon, root.path(), &["--spool", spool.to_str().unwrap()]);
    assert!(!stale.exists(), "the stale download name is still there");
    sh_ok(&format!("cmp {} {}", q(&src), q(&m.task(&id))));
    m.crash();
    assert_eq!(ls(&spool), "", "a killed mount left a name in the spool");
}

#[test]
fn a_daemon_that_cannot_link_into_the_spool_sends_piece_content_and_the_mount_says_so_once() {
    let root = tempdir();
    let daemon = Daemon::start_with(root.path(), &["--legacy"]);
    let (a, b) = (root.path().join("a.bin"), root.path().join("b.bin"));
    write_file(&a, 9 * MIB + 1, 65);
    write_file(&b, 5 * MIB + 2, 66);
    let ids =
        [&a, &b].map(|f| daemon.ok(&["import", "--piece-length", "4mib", f.to_str().unwrap()]));
    // A spool on another file system than the daemon's store: no hard
    // link can cross, so the daemon refuses (force_hard_link).
    let spool = Tmpfs::mount(root.path().join("spool"), "64m");
    let log = root.path().join("mount.log");
    let wrapper: Vec<String> = ["sh", "-c", &format!("exec \"$0\" \"$@\" 2> {}", q(&log))]
        .map(String::from)
        .to_vec();
    let args = [
        "-e",
        daemon.socket.to_str().unwrap(),
        "--spool",
        spool.0.to_str().unwrap(),
    ];
    let mnt = root.path().join("mnt");
    let m = Mounted::start_in(&wrapper, &mnt, &args);
    for (src, id) in [(&a, &ids[0]), (&b, &ids[1]), (&a, &ids[0])] {
        sh_ok(&format!("cmp {} {}", q(src), q(&m.task(id))));
    }
    assert_eq!(ls(&spool.0), "", "a download file is visible in the spool");
    drop(m);
    let log = std::fs::read_to_string(&log).unwrap();
    let line = "cannot hard-link its task files into the spool";
    assert_eq!(log.matches(line).count(), 1, "logged once:\n{log}");
}
