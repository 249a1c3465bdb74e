//! Interrupted imports never leave a task that looks complete.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

fn mkfifo(path: &std::path::Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

/// Starts `dfcache import --stream-mode FIFO` and feeds it `len` bytes,
/// leaving the import unfinished (the FIFO stays open).
fn start_fifo_import(
    daemon: &Daemon,
    fifo: &std::path::Path,
    len: usize,
) -> (std::process::Child, std::fs::File) {
    mkfifo(fifo);
    let child = Command::new(bin())
        .args(["import", "--stream-mode", "--no-progress"])
        .arg(fifo)
        .env("DFCACHE_ENDPOINT", &daemon.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut writer = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
    writer.write_all(&vec![7u8; len]).unwrap();
    (child, writer)
}

#[test]
fn client_killed_mid_import_leaves_no_task() {
    let root = tempdir();
    let daemon = Daemon::start(root.path());
    let (mut child, writer) = start_fifo_import(&daemon, &root.path().join("fifo"), 12 << 20);
    eventually("the daemon to receive data", 10, || {
        !daemon.leftovers().is_empty()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    drop(writer);
    eventually("the partial write to be discarded", 10, || {
        daemon.leftovers().is_empty()
    });
    assert!(daemon.ids().is_empty(), "a task appeared");
}

#[test]
fn source_closed_early_is_a_complete_shorter_file() {
    // Control for the test above: the same FIFO import, closed normally,
    // does make a task of exactly the bytes written.
    let root = tempdir();
    let daemon = Daemon::start(root.path());
    let (child, writer) = start_fifo_import(&daemon, &root.path().join("fifo"), 5 << 20);
    drop(writer);
    let out = child.wait_with_output().unwrap();
    let id = succeeded(&out, "the FIFO import");
    let stat = daemon.ok(&["stat", &id]);
    assert!(stat.contains("(5242880 bytes)"), "{stat}");
}

#[test]
fn daemon_killed_mid_import_keeps_earlier_tasks_only() {
    let root = tempdir();
    let mut daemon = Daemon::start(root.path());
    let earlier = root.path().join("earlier.bin");
    write_file(&earlier, 9 * MIB, 5);
    let earlier_id = daemon.ok(&["import", "--stream-mode", earlier.to_str().unwrap()]);

    let (child, writer) = start_fifo_import(&daemon, &root.path().join("fifo"), 12 << 20);
    eventually("the daemon to receive data", 10, || {
        !daemon.leftovers().is_empty()
    });
    daemon.kill();
    drop(writer);
    let out = child.wait_with_output().unwrap();
    let err = failure(&out);
    assert!(
        err.contains("import of") && err.contains("failed") && err.contains("daemon"),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "an id was printed for a failed import"
    );

    // Restart on the same store: the partial write is gone, the earlier
    // task is intact.
    let daemon = Daemon::start(root.path());
    assert!(
        daemon.leftovers().is_empty(),
        "leftovers survived the restart"
    );
    assert_eq!(daemon.ids(), vec![earlier_id.clone()]);
    let out = root.path().join("out.bin");
    daemon.ok(&[
        "export",
        "--stream-mode",
        &earlier_id,
        "-O",
        out.to_str().unwrap(),
    ]);
    assert!(same_bytes(&earlier, &out));
}

#[test]
fn restart_keeps_every_finished_task_and_socket_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempdir();
    let mut ids = Vec::new();
    let mut files = Vec::new();
    {
        let daemon = Daemon::start(root.path());
        let mode = std::fs::metadata(&daemon.socket)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        for (i, len) in [0, 1, 5 * MIB].into_iter().enumerate() {
            let f = root.path().join(format!("f{i}"));
            write_file(&f, len, i as u64);
            ids.push(daemon.ok(&["import", "--stream-mode", f.to_str().unwrap()]));
            files.push(f);
        }
    }
    let daemon = Daemon::start(root.path());
    let mut listed = daemon.ids();
    listed.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(listed, want);
    for (id, f) in ids.iter().zip(&files) {
        let out = root.path().join(format!("{id}.out"));
        daemon.ok(&["export", "--stream-mode", id, "-O", out.to_str().unwrap()]);
        assert!(same_bytes(f, &out));
    }
}

#[test]
fn a_second_daemon_on_a_live_socket_is_refused() {
    let root = tempdir();
    let daemon = Daemon::start(root.path());
    let out = Command::new(bin())
        .args(["serve", "--socket"])
        .arg(&daemon.socket)
        .arg("--dir")
        .arg(root.path().join("other"))
        .output()
        .unwrap();
    let err = failure(&out);
    assert!(err.contains("in use"), "{err}");
    assert!(daemon.ids().is_empty());
}
