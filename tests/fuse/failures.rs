//! A daemon that goes away: cp fails, cat fails with EIO instead of
//! hanging, and the same mount works again once the daemon is back. A
//! daemon whose disk is full: cp fails with ENOSPC and nothing is kept.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::harness::*;

#[test]
fn daemon_killed_during_cp_fails_cp_and_leaves_no_task() {
    let root = tempdir();
    let mut daemon = Daemon::start(root.path());
    let m = Mounted::on(&daemon, root.path(), &[]);
    let (cp, mut writer) = cp_in_progress(root.path(), &m);
    eventually("the daemon to receive data", 10, || {
        !daemon.leftovers().is_empty()
    });
    daemon.kill();
    // Whatever cp still writes fails now or at close.
    let _ = writer.write_all(&vec![3u8; 4 << 20]);
    drop(writer);
    let out = cp.wait_with_output().unwrap();
    assert!(!out.status.success(), "cp succeeded against a dead daemon");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Input/output error"), "{err}");
    assert!(!m.import("big").exists(), "a failed import is still listed");

    let daemon = Daemon::start(root.path());
    assert!(daemon.ids().is_empty(), "a partial task survived");
    // The same mount imports again.
    let src = root.path().join("small.bin");
    write_file(&src, 2 * MIB, 1);
    sh_ok(&format!("cp {} {}", q(&src), q(&m.import("again"))));
    assert_eq!(task_id_xattr(&m.import("again")), expected_id(&src));
}

#[test]
fn daemon_killed_during_cat_gives_eio_then_the_mount_recovers() {
    let root = tempdir();
    let mut daemon = Daemon::start(root.path());
    let src = root.path().join("src.bin");
    write_file(&src, 160 * MIB, 9);
    let id = daemon.ok(&[
        "import",
        "--stream-mode",
        "--piece-length",
        "4mib",
        src.to_str().unwrap(),
    ]);
    let m = Mounted::on(
        &daemon,
        root.path(),
        &[
            "--cache-size",
            "16mib",
            "--read-ahead",
            "8mib",
            "--fetch-timeout",
            "10s",
        ],
    );

    // cat writes into a pipe we read slowly, so it is mid-file when the
    // daemon dies.
    let mut cat = Command::new("cat")
        .arg(m.task(&id))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = cat.stdout.take().unwrap();
    let mut buf = vec![0u8; 8 << 20];
    out.read_exact(&mut buf).unwrap();
    daemon.kill();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = out.read_to_end(&mut rest);
    let status = cat.wait().unwrap();
    let mut err = String::new();
    cat.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(
        !status.success(),
        "cat read the whole task without a daemon"
    );
    assert!(err.contains("Input/output error"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "cat took {:?} to fail",
        started.elapsed()
    );

    // Back: the same mount serves the task again.
    let _daemon = Daemon::start(root.path());
    sh_ok(&format!("cmp {} {}", q(&src), q(&m.task(&id))));
}

#[test]
fn a_crashed_mount_is_replaced_by_the_next() {
    let root = tempdir();
    let mut m = Mounted::embedded(root.path(), &[]);
    let src = root.path().join("src.bin");
    write_file(&src, MIB, 2);
    sh_ok(&format!("cp {} {}", q(&src), q(&m.import("f"))));
    let id = task_id_xattr(&m.import("f"));
    // Its holder dies too (a reboot of the holder, an OOM kill of both):
    // nothing is left to take over.
    m.crash_with_holder();
    assert!(is_mounted(&m.mnt), "the crash should leave a dead mount");
    let dead = std::fs::read_dir(&m.mnt).map(|_| ()).unwrap_err();
    assert_eq!(dead.raw_os_error(), Some(107), "ENOTCONN expected: {dead}");
    let log = root.path().join("again.log");
    let again = m.restart(&[], Some(&log));
    sh_ok(&format!("cmp {} {}", q(&src), q(&again.task(&id))));
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("no takeover: no holder answers at")
            && said.contains("replacing a dead mount left by a crashed dfcache"),
        "{said}"
    );
    drop(again);
    drop(m);
    assert!(!is_mounted(&root.path().join("mnt")));
}

#[test]
fn sigterm_unmounts_cleanly() {
    let root = tempdir();
    let mut m = Mounted::embedded(root.path(), &[]);
    let status = m.stop().unwrap();
    assert!(status.success(), "{status}");
    assert!(!is_mounted(&m.mnt));
}

#[test]
fn a_full_store_fails_cp_with_enospc_and_keeps_nothing() {
    let root = tempdir();
    // Dropped last: the daemon and the mount go first.
    let store = Tmpfs::mount(root.path().join("store"), "24m");
    let daemon = Daemon::start(root.path());
    let m = Mounted::on(&daemon, root.path(), &[]);
    let big = root.path().join("big.bin");
    write_file(&big, 40 * MIB, 5);

    let out = sh(&format!("cp {} {}", q(&big), q(&m.import("big"))));
    assert!(!out.status.success(), "cp into a full store succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(!m.import("big").exists(), "a failed import is still listed");
    assert!(daemon.ids().is_empty(), "a partial task was kept");
    assert!(daemon.leftovers().is_empty(), "{:?}", daemon.leftovers());

    // The CLI says so in a sentence, and keeps nothing either.
    let out = daemon.cli(&["import", "--stream-mode", &big.to_string_lossy()]);
    let err = failure(&out);
    assert!(err.to_lowercase().contains("no space"), "{err}");
    assert!(out.stdout.is_empty());
    assert!(daemon.ids().is_empty(), "a partial task was kept");
    assert!(daemon.leftovers().is_empty(), "{:?}", daemon.leftovers());

    // The space came back: what fits imports.
    let small = root.path().join("small.bin");
    write_file(&small, 4 * MIB, 6);
    sh_ok(&format!("cp {} {}", q(&small), q(&m.import("small"))));
    assert_eq!(task_id_xattr(&m.import("small")), expected_id(&small));
    assert!(same_bytes(&small, &m.task(&expected_id(&small))));
    drop(m);
    drop(daemon);
    drop(store);
}
