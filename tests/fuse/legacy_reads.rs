//! Reads of tasks/ from a daemon without range reads (`serve --legacy`):
//! whole-task downloads in a bounded on-disk cache, out-of-order pieces.

use crate::common::*;
use crate::harness::*;

fn import(daemon: &Daemon, src: &std::path::Path) -> String {
    daemon.ok(&["import", "--piece-length", "4mib", src.to_str().unwrap()])
}

#[test]
fn reads_come_from_whole_task_downloads_bounded_by_task_cache_size() {
    let root = tempdir();
    let daemon = Daemon::start_with(root.path(), &["--legacy"]);
    let (a, b, big) = (
        root.path().join("a.bin"),
        root.path().join("b.bin"),
        root.path().join("big.bin"),
    );
    write_file(&a, 13 * MIB + 5, 1);
    write_file(&b, 11 * MIB + 7, 2);
    write_file(&big, 30 * MIB, 3);
    let (id_a, id_b, id_big) = (
        import(&daemon, &a),
        import(&daemon, &b),
        import(&daemon, &big),
    );
    let spool = root.path().join("spool");
    // Room for one of a and b at a time: reading b evicts a, and a comes
    // back by downloading it again.
    let m = Mounted::on(
        &daemon,
        root.path(),
        &[
            "--spool",
            spool.to_str().unwrap(),
            "--task-cache-size",
            "20mib",
        ],
    );
    for (src, id) in [(&a, &id_a), (&b, &id_b), (&a, &id_a)] {
        sh_ok(&format!("cmp {} {}", q(src), q(&m.task(id))));
        // Random reads across piece boundaries, served from the download.
        let dd = |f: &str| format!("dd if={f} bs=7777 skip=800 count=300 status=none | sha256sum");
        assert_eq!(sh_ok(&dd(&q(&m.task(id)))), sh_ok(&dd(&q(src))));
    }
    // A task larger than the whole cache cannot be read: EFBIG, not a hang.
    let out = sh(&format!("cat {} > /dev/null", q(&m.task(&id_big))));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("too large"), "{err}");
    // Download files are unlinked at once: nothing visible in the spool.
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
}

#[test]
fn an_unknown_task_is_enoent_and_a_dead_daemon_is_eio() {
    let root = tempdir();
    let mut daemon = Daemon::start_with(root.path(), &["--legacy"]);
    let src = root.path().join("src.bin");
    write_file(&src, 9 * MIB, 4);
    let id = import(&daemon, &src);
    let spool = root.path().join("spool");
    let m = Mounted::on(&daemon, root.path(), &["--spool", spool.to_str().unwrap()]);
    let out = sh(&format!("cat {}", q(&m.task(&"0".repeat(64)))));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such file"));
    // The daemon dies before the task was read: the read fails with EIO
    // instead of hanging or returning zeros.
    let task = m.task(&id);
    let _ = std::fs::metadata(&task).unwrap();
    daemon.kill();
    let out = sh(&format!("cat {} > /dev/null", q(&task)));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Input/output error"));
}
