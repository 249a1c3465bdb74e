//! One store, one owner; one socket, one daemon: a second `dfcache serve`
//! on a store or socket in use is refused at once and disturbs nothing.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs `dfcache serve` expecting it to exit by itself within 10 s (it is
/// killed and the test fails if it keeps running, i.e. was not refused).
/// Whether `child` exits within `limit` (polled).
fn exits_within(child: &mut std::process::Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn serve_expecting_exit(socket: &Path, dir: &Path) -> Output {
    let mut child = Command::new(bin())
        .args(["serve", "--socket"])
        .arg(socket)
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if exits_within(&mut child, Duration::from_secs(10)) {
        return child.wait_with_output().unwrap();
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the second daemon kept running instead of being refused");
}

#[test]
fn a_second_daemon_on_a_store_in_use_is_refused_naming_the_holder_and_the_first_keeps_importing() {
    let root = tempdir();
    let daemon = Daemon::start(root.path());

    // A slow streaming import in progress: bytes through a FIFO that stays
    // open until the second daemon has been refused.
    let fifo = root.path().join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let import = Command::new(bin())
        .args(["import", "--stream-mode", "--no-progress"])
        .arg(&fifo)
        .env("DFCACHE_ENDPOINT", &daemon.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let first_half = vec![3u8; 6 << 20];
    writer.write_all(&first_half).unwrap();
    eventually("the daemon to receive data", 10, || {
        !daemon.leftovers().is_empty()
    });

    let started = Instant::now();
    let out = serve_expecting_exit(&root.path().join("second.sock"), &daemon.dir);
    let err = failure(&out);
    assert!(started.elapsed() < Duration::from_secs(5), "refused slowly");
    let pid = daemon.child.id().to_string();
    assert!(
        err.contains("in use") && err.contains(&pid),
        "stderr names neither the conflict nor pid {pid}: {err}"
    );
    assert!(
        !root.path().join("second.sock").exists(),
        "the refused daemon left a socket"
    );

    // The first daemon's import finishes as if nothing happened.
    writer.write_all(&vec![4u8; 3 << 20]).unwrap();
    drop(writer);
    let id = succeeded(&import.wait_with_output().unwrap(), "the slow import");
    let expected = root.path().join("expected");
    let mut content = first_half;
    content.extend(vec![4u8; 3 << 20]);
    std::fs::write(&expected, &content).unwrap();
    assert_eq!(id, expected_id(&expected));
    let exported = root.path().join("exported");
    daemon.ok(&[
        "export",
        "--stream-mode",
        &id,
        "-O",
        exported.to_str().unwrap(),
    ]);
    assert!(same_bytes(&expected, &exported));
}

#[test]
fn a_second_daemon_on_a_live_socket_exits_non_zero_and_the_socket_keeps_working() {
    let root = tempdir();
    let daemon = Daemon::start(root.path());
    let f = root.path().join("f");
    write_file(&f, MIB, 1);
    let id = daemon.ok(&["import", "--stream-mode", f.to_str().unwrap()]);

    let out = serve_expecting_exit(&daemon.socket, &root.path().join("other-store"));
    let err = failure(&out);
    assert!(err.contains("in use"), "{err}");

    assert!(
        daemon.socket.exists(),
        "the refused daemon removed the socket"
    );
    assert_eq!(daemon.ids(), vec![id]);
}

#[test]
fn a_stale_socket_of_a_killed_daemon_is_replaced() {
    let root = tempdir();
    let mut daemon = Daemon::start(root.path());
    let f = root.path().join("f");
    write_file(&f, MIB, 2);
    let id = daemon.ok(&["import", "--stream-mode", f.to_str().unwrap()]);
    daemon.kill();
    assert!(
        daemon.socket.exists(),
        "SIGKILL should leave the socket file"
    );

    // Same store (its lock died with the process), same socket path.
    let daemon = Daemon::start(root.path());
    assert_eq!(daemon.ids(), vec![id]);
}

#[test]
fn a_daemon_that_lost_its_socket_path_to_another_leaves_it_on_shutdown() {
    // The first daemon's socket file is replaced behind its back (as by a
    // second daemon that raced it at start); stopping the first must not
    // unlink the newcomer's socket.
    let root = tempdir();
    let first = Daemon::start(root.path());
    let socket = first.socket.clone();
    std::fs::remove_file(&socket).unwrap();
    let other_root = root.path().join("other");
    std::fs::create_dir_all(&other_root).unwrap();
    let second = Command::new(bin())
        .args(["serve", "--socket"])
        .arg(&socket)
        .arg("--dir")
        .arg(other_root.join("store"))
        .env("DFCACHE_LOG_LEVEL", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    eventually("the second daemon to listen", 20, || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    drop(first); // SIGTERM, waits for the exit
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_ok(),
        "the first daemon removed the second's socket on shutdown"
    );
    terminate(second);
}

#[test]
fn a_mount_with_an_embedded_daemon_on_a_store_in_use_is_refused_naming_the_holder() {
    let root = tempdir();
    let daemon = Daemon::start(root.path());
    let mountpoint = root.path().join("mnt");
    let mut child = Command::new(bin())
        .arg("mount")
        .arg(&mountpoint)
        .arg("--embedded")
        .arg(&daemon.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if !exits_within(&mut child, Duration::from_secs(10)) {
        // It mounted: unmount before failing, so no mount outlives the test.
        let _ = Command::new("umount").arg(&mountpoint).status();
        let _ = child.kill();
        let _ = child.wait();
        panic!("mount --embedded started on a store in use");
    }
    let err = failure(&child.wait_with_output().unwrap());
    let pid = daemon.child.id().to_string();
    assert!(err.contains("in use") && err.contains(&pid), "{err}");
    assert!(daemon.ids().is_empty());
}
