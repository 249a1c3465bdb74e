//! Faults a node under trouble has: a frozen daemon, fsync before a crash,
//! a mount killed mid-import, a daemon with fewer RPCs or that comes up
//! after the mount, and a task deleted while a program has it open.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::common;
use crate::common::*;
use crate::harness::*;

/// What each operation may take while the daemon is frozen, with
/// `--fetch-timeout 3s`: a lookup and a read are each bounded by it.
const FROZEN_BOUND: Duration = Duration::from_secs(20);

/// SIGSTOP of a daemon (its socket still accepts; nothing answers), undone
/// on drop so a failing test leaves no stopped process behind.
struct Frozen<'a>(&'a Daemon);

impl<'a> Frozen<'a> {
    fn freeze(daemon: &'a Daemon) -> Self {
        signal(&daemon.child, "-STOP");
        Frozen(daemon)
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        signal(&self.0.child, "-CONT");
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(sig)
        .arg(child.id().to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {}", child.id());
}

/// Runs `script` under a 60 s `timeout`; insists it failed within `bound`
/// with "Connection timed out" on stderr.
fn times_out_within(script: &str, bound: Duration) {
    let started = Instant::now();
    let out = sh(&format!("timeout 60 sh -c {}", shell_quote(script)));
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "`{script}` succeeded on a frozen daemon"
    );
    assert!(took < bound, "`{script}` took {took:?} (bound {bound:?})");
    assert!(err.contains("Connection timed out"), "`{script}`: {err}");
}

#[test]
fn a_frozen_daemon_fails_every_operation_within_the_fetch_timeout_and_the_mount_recovers() {
    let root = tempdir();
    let daemon = Daemon::start(root.path());
    let src = root.path().join("src.bin");
    write_file(&src, 9 * MIB, 41);
    let id = daemon.ok(&["import", "--stream-mode", src.to_str().unwrap()]);
    let m = Mounted::on(&daemon, root.path(), &["--fetch-timeout", "3s"]);
    let small = root.path().join("small.bin");
    write_file(&small, 100_000, 42);

    {
        let _frozen = Frozen::freeze(&daemon);
        times_out_within(&format!("ls -l {}", q(&m.path("tasks"))), FROZEN_BOUND);
        times_out_within(
            &format!("cat {} > /dev/null", q(&m.task(&id))),
            FROZEN_BOUND,
        );
        times_out_within(
            &format!("stat {}", q(&m.task(&"e".repeat(64)))),
            FROZEN_BOUND,
        );
        times_out_within(
            &format!("cp {} {}", q(&small), q(&m.import("x"))),
            FROZEN_BOUND,
        );
        // getattr of what the mount knows, and df, never ask the daemon.
        sh_ok(&format!(
            "stat {} && df {}",
            q(&m.path("import")),
            q(&m.mnt)
        ));
    }

    // Thawed: the same mount lists, reads and imports again.
    eventually("the mount to list the task again", 20, || {
        sh(&format!("ls {}", q(&m.path("tasks"))))
            .stdout
            .starts_with(id.as_bytes())
    });
    sh_ok(&format!("cmp {} {}", q(&src), q(&m.task(&id))));
    sh_ok(&format!("cp {} {}", q(&small), q(&m.import("y"))));
    assert_eq!(task_id_xattr(&m.import("y")), expected_id(&small));
    assert!(!m.import("x").exists(), "the timed-out import is listed");
}

/// Writes `src` into `dst` from python, fsyncs, checks that a write after
/// the fsync fails with EIO, then waits on stdin with the file open.
fn write_fsync_and_hold(src: &std::path::Path, dst: &std::path::Path) -> Python {
    let code = r#"
import errno, os, sys
data = open(sys.argv[1], 'rb').read()
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, data)
os.fsync(fd)
try:
    os.write(fd, b'late')
    print('late write accepted', flush=True)
except OSError as e:
    print('synced' if e.errno == errno.EIO else 'late write: %s' % e, flush=True)
sys.stdin.read()
"#;
    Python::start(code, &[src, dst])
}

#[test]
fn fsync_of_an_import_commits_it_so_a_mount_killed_right_after_loses_nothing() {
    for spool in [false, true] {
        let root = tempdir();
        let daemon = Daemon::start(root.path());
        let spool_dir = root.path().join("spool");
        let spool_arg = spool_dir.to_string_lossy().into_owned();
        let extra: Vec<&str> = if spool {
            vec!["--spool", &spool_arg]
        } else {
            vec![]
        };
        let mut m = Mounted::on(&daemon, root.path(), &extra);
        let src = root.path().join("src.bin");
        write_file(&src, 8 * MIB, 43 + spool as u64);

        let mut writer = write_fsync_and_hold(&src, &m.import("f"));
        assert_eq!(writer.line(), "synced", "spool: {spool}");
        // fsync returned 0: the task is there even if the mount dies now
        // (and its holder: nothing takes it over).
        m.crash_with_holder();
        drop(writer);

        let id = expected_id(&src);
        assert!(daemon.ids().contains(&id), "spool: {spool}: no task");
        let out = root.path().join("out.bin");
        daemon.ok(&["export", "--stream-mode", &id, "-O", out.to_str().unwrap()]);
        assert!(same_bytes(&src, &out), "spool: {spool}");
    }
}

#[test]
fn a_mount_killed_mid_cp_fails_cp_keeps_no_task_and_a_new_mount_works_at_once() {
    // The holder went with it: nothing to take over, the mount is dead.
    for mode in ["streaming", "spool", "embedded"] {
        let root = tempdir();
        let spool = root.path().join("spool");
        let spool_arg = spool.to_string_lossy().into_owned();
        let daemon = (mode != "embedded").then(|| Daemon::start(root.path()));
        let extra: Vec<&str> = if mode == "spool" {
            vec!["--spool", &spool_arg]
        } else {
            vec![]
        };
        let start = |extra: &[&str]| match &daemon {
            Some(d) => Mounted::on(d, root.path(), extra),
            None => Mounted::embedded(root.path(), extra),
        };
        let mut m = start(&extra);
        let (cp, writer) = cp_in_progress(root.path(), &m);
        if mode == "spool" {
            eventually("the spool file to fill", 10, || {
                std::fs::read_dir(&spool).is_ok_and(|d| d.count() > 0)
            });
        }
        m.crash_with_holder();
        drop(writer);
        let out = cp.wait_with_output().unwrap();
        assert!(
            !out.status.success(),
            "{mode}: cp succeeded on a dead mount"
        );

        // A new mount at the same place works at once, and cleans up.
        let m = start(&extra);
        let small = root.path().join("small.bin");
        write_file(&small, 3 * MIB, 44);
        sh_ok(&format!("cp {} {}", q(&small), q(&m.import("small"))));
        let id = task_id_xattr(&m.import("small"));
        assert_eq!(id, expected_id(&small), "{mode}");
        let socket = match &daemon {
            Some(d) => d.socket.clone(),
            None => root.path().join("store/dfdaemon.sock"),
        };
        eventually("the daemon to drop the broken import", 20, || {
            let ids = succeeded(&cli(&socket, &["ls", "-q"]), "ls");
            ids.lines().collect::<Vec<_>>() == vec![id.as_str()]
                && std::fs::read_dir(root.path().join("store/tmp")).is_ok_and(|d| d.count() == 0)
        });
        if mode == "spool" {
            let left: Vec<_> = std::fs::read_dir(&spool).unwrap().flatten().collect();
            assert!(left.is_empty(), "spool leftovers: {left:?}");
        }
    }
}

#[test]
fn a_daemon_with_only_the_streaming_rpcs_shows_imports_at_their_size_and_lists_what_the_mount_knows(
) {
    let root = tempdir();
    let daemon = Daemon::start_with(root.path(), &["--emulate-api", "2.1.12"]);
    let m = Mounted::on(&daemon, root.path(), &[]);
    let src = root.path().join("src.bin");
    write_file(&src, 5 * MIB + 3, 45);
    sh_ok(&format!("cp {} {}", q(&src), q(&m.import("f"))));
    let id = task_id_xattr(&m.import("f"));
    assert_eq!(id, expected_id(&src));
    assert_eq!(
        sh_ok(&format!("stat -c %s {}", q(&m.import("f")))),
        (5 * MIB + 3).to_string()
    );
    sh_ok(&format!("cmp {} {}", q(&src), q(&m.import("f"))));
    let listing = sh_ok(&format!("ls -l {}", q(&m.path("tasks"))));
    listed_task(&listing, &id, 5 * MIB + 3);
    sh_ok(&format!("cmp {} {}", q(&src), q(&m.task(&id))));
    // An id the mount never saw cannot be asked about: not found.
    let out = sh(&format!("stat {}", q(&m.task(&"d".repeat(64)))));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such file"));
}

#[test]
fn a_mount_started_before_a_released_daemon_uses_its_rpcs_once_it_answers() {
    let root = tempdir();
    let socket = root.path().join("d.sock");
    let spool = root.path().join("spool");
    // No daemon yet: both mounts start, on the same socket.
    let with_spool = Mounted::start_at(
        &root.path().join("mnt-spool"),
        &[
            "-e",
            socket.to_str().unwrap(),
            "--spool",
            spool.to_str().unwrap(),
        ],
    );
    let without = Mounted::start_at(&root.path().join("mnt"), &["-e", socket.to_str().unwrap()]);

    let daemon = Daemon::start_with(root.path(), &["--legacy"]);
    let src = root.path().join("src.bin");
    write_file(&src, 6 * MIB, 46);
    let id = daemon.ok(&["import", src.to_str().unwrap()]);
    // The first read already goes through the daemon's own RPCs.
    sh_ok(&format!("cmp {} {}", q(&src), q(&with_spool.task(&id))));
    sh_ok(&format!("cp {} {}", q(&src), q(&with_spool.import("copy"))));
    assert_eq!(task_id_xattr(&with_spool.import("copy")), id);

    // Without a spool the import cannot work: cp says so at close.
    let out = sh(&format!("cp {} {}", q(&src), q(&without.import("x"))));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Operation not supported"), "{err}");
    assert!(!without.import("x").exists());
}

#[test]
fn a_task_deleted_while_open_reads_what_was_cached_then_estale_and_stops_resolving() {
    let root = tempdir();
    let daemon = Daemon::start(root.path());
    let src = root.path().join("src.bin");
    write_file(&src, 12 * MIB, 47);
    let id = daemon.ok(&[
        "import",
        "--stream-mode",
        "--piece-length",
        "4mib",
        src.to_str().unwrap(),
    ]);
    let m = Mounted::on(&daemon, root.path(), &["--read-ahead", "0"]);
    let code = r#"
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
first = os.pread(fd, 4096, 0)
print('open', flush=True)
sys.stdin.readline()
again = os.pread(fd, 4096, 0)
try:
    os.pread(fd, 4096, 8 << 20)
    print('read', first == again, flush=True)
except OSError as e:
    print('estale' if e.errno == errno.ESTALE else e, first == again, flush=True)
"#;
    let mut reader = Python::start(code, &[&m.task(&id)]);
    assert_eq!(reader.line(), "open");

    daemon.ok(&["rm", &id]);
    reader.send("go");
    assert_eq!(reader.line(), "estale True", "cached bytes then ESTALE");
    drop(reader);

    let listing = sh_ok(&format!("ls {}", q(&m.path("tasks"))));
    assert!(!listing.contains(&id), "{listing}");
    eventually("stat to say the task is gone", 15, || {
        !sh(&format!("stat {}", q(&m.task(&id)))).status.success()
    });
}

#[test]
fn an_import_whose_close_returned_survives_a_power_loss_of_the_embedded_store() {
    let root = tempdir();
    // The image and its mount point under disk/, apart from the FUSE mnt/.
    let disk = root.path().join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let mut fs = common::ext4::Ext4::create(&disk);
    let store = fs.mount.join("store");
    let mut m = Mounted::start_at(
        &root.path().join("mnt"),
        &["--embedded", store.to_str().unwrap()],
    );
    let src = root.path().join("src.bin");
    write_file(&src, 7 * MIB + 5, 48);
    sh_ok(&format!("cp {} {}", q(&src), q(&m.import("f"))));
    let id = task_id_xattr(&m.import("f"));

    // Power cut right after close() returned; the mount dies with it.
    fs.go_down_without_flushing();
    m.crash_with_holder();
    drop(m);
    fs.unmount();
    fs.mount();

    let daemon = Daemon::start_on(&root.path().join("d.sock"), &store, &[], &[]);
    assert_eq!(daemon.ids(), vec![id.clone()], "after the power loss");
    let out = root.path().join("out.bin");
    daemon.ok(&["export", "--stream-mode", &id, "-O", out.to_str().unwrap()]);
    assert!(same_bytes(&src, &out));
}
