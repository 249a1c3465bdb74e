//! The mount against a legacy daemon (`dfcache serve --legacy`: imports by
//! path, exports as whole downloads whose pieces come in any order) across a
//! real mount-namespace split (see `common::ns`): the mount runs in a
//! "container" that sees the shared volume at C only, the daemon in a "host"
//! namespace that sees it at H only, so the spool must be mapped right.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::ns::*;
use crate::common::*;
use crate::harness::{listed_task, Mounted};

const PIECE: u64 = 4 * MIB;

/// `dfcache mount root/mnt -e SOCKET --spool C/spool --path-mapping C:H`,
/// in the container's namespace.
fn mount_in_container(split: &Split, socket: &Path) -> Mounted {
    mount_in_container_with(split, socket, &["--path-mapping", &split.mapping()])
}

/// `dfcache mount root/mnt -e SOCKET --spool C/spool EXTRA...`, in the
/// container's namespace.
fn mount_in_container_with(split: &Split, socket: &Path, extra: &[&str]) -> Mounted {
    let socket = socket.to_string_lossy();
    let spool = split.c("spool");
    let mut args = vec!["-e", &socket, "--spool", &spool];
    args.extend_from_slice(extra);
    Mounted::start_in(&split.container_prefix(), &split.root.join("mnt"), &args)
}

/// `rel` in the mount, quoted for the shell.
fn mq(m: &Mounted, rel: &str) -> String {
    sh_quote(&m.path(rel))
}

/// A legacy daemon (with `extra` flags) behind the split, and `len` bytes at
/// H/src.bin imported by mapped path from the container; returns the id.
fn legacy_with_task(root: &Path, extra: &[&str], len: u64, seed: u64) -> (Split, Daemon, String) {
    let split = Split::new(root);
    let mut flags = vec!["--legacy"];
    flags.extend_from_slice(extra);
    let daemon = split.start_daemon(&flags);
    write_file(&split.host.join("src.bin"), len, seed);
    let id = split.cli_ok(
        &daemon.socket,
        &[
            "import",
            "--path-mapping",
            &split.mapping(),
            &split.c("src.bin"),
        ],
    );
    assert_eq!(id, expected_id(&split.host.join("src.bin")));
    (split, daemon, id)
}

#[test]
fn legacy_cp_imports_through_the_mapped_spool_and_reads_back() {
    let root = tempdir();
    let split = Split::new(root.path());
    let daemon = split.start_daemon(&["--legacy"]);
    let len = 3 * PIECE + 123;
    let src = split.host.join("src.bin");
    write_file(&src, len, 11);
    let m = mount_in_container(&split, &daemon.socket);
    let c_src = sh_quote(&split.container.join("src.bin"));

    // cp into import/: spooled at C/spool, uploaded by its host path.
    m.sh_ok(&format!("cp {c_src} {}", mq(&m, "import/src.bin")));
    let id = m.sh_ok(&format!(
        "getfattr -n user.dfcache.task_id --only-values {}",
        mq(&m, "import/src.bin")
    ));
    assert_eq!(id, expected_id(&src));
    assert_eq!(daemon.ids(), vec![id.clone()]);
    assert_eq!(ls(&split.host.join("spool")), "", "spool file left behind");
    // The daemon stored the right bytes.
    let check = root.path().join("check.bin");
    daemon.ok(&[
        "export",
        "--transfer-from-dfdaemon",
        &id,
        "-O",
        check.to_str().unwrap(),
    ]);
    assert!(same_bytes(&src, &check));
    let listing = m.sh_ok(&format!("ls -l {}", mq(&m, "tasks")));
    listed_task(&listing, &id, len);

    // Read back through the mount: the legacy daemon sends the pieces out
    // of order, the reader gets the bytes in order.
    let task = mq(&m, &format!("tasks/{id}"));
    m.sh_ok(&format!("cmp {task} {c_src}"));
    let tail = |f: &str| format!("tail -c {} {f} | sha256sum", PIECE + 7);
    assert_eq!(m.sh_ok(&tail(&task)), m.sh_ok(&tail(&c_src)));
    let dd = |f: &str| format!("dd if={f} bs=4k skip=1500 count=100 status=none | sha256sum");
    assert_eq!(m.sh_ok(&dd(&task)), m.sh_ok(&dd(&c_src)));
    // The finished import reads the same.
    m.sh_ok(&format!("cmp {} {c_src}", mq(&m, "import/src.bin")));
}

#[test]
fn legacy_cp_without_mapping_fails_visibly() {
    // The daemon is handed C/spool/..., which it cannot see: cp fails,
    // and no import, task or spool file remains.
    let root = tempdir();
    let split = Split::new(root.path());
    let daemon = split.start_daemon(&["--legacy"]);
    write_file(&split.host.join("src.bin"), PIECE + 9, 13);
    let m = mount_in_container_with(&split, &daemon.socket, &[]);
    let c_src = sh_quote(&split.container.join("src.bin"));
    let out = nsenter(m.pid(), &format!("cp {c_src} {}", mq(&m, "import/src.bin")));
    assert!(!out.status.success(), "cp succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("src.bin"), "{err}");
    m.sh_ok(&format!("test ! -e {}", mq(&m, "import/src.bin")));
    assert!(daemon.ids().is_empty(), "a task was created");
    assert_eq!(ls(&split.host.join("spool")), "", "spool file left behind");
}

#[test]
fn legacy_first_bytes_arrive_before_the_last_piece() {
    // Pieces in order, each after 500 ms: the last is sent >= 5 s after
    // the download starts, which is after `start` below.
    let root = tempdir();
    let (split, daemon, id) = legacy_with_task(
        root.path(),
        &["--legacy-piece-delay", "500ms"],
        10 * PIECE,
        12,
    );
    let last_piece = Duration::from_secs(5);
    let m = mount_in_container(&split, &daemon.socket);
    let task = mq(&m, &format!("tasks/{id}"));
    let c_src = sh_quote(&split.container.join("src.bin"));

    let start = Instant::now();
    m.sh_ok(&format!(
        "dd if={task} bs=4k count=1 status=none | cmp -n 4096 - {c_src}"
    ));
    let first = start.elapsed();
    m.sh_ok(&format!("cmp {task} {c_src}"));
    let whole = start.elapsed();
    eprintln!("first 4 KiB after {first:?}, the whole task after {whole:?}");
    // The bound is the pacing's, not the machine's speed: a mount that
    // waited for the whole task would give its first bytes only after the
    // last piece was sent (a busy machine adds to `first` either way).
    assert!(
        first < last_piece,
        "the first 4 KiB took {first:?}, as long as the last piece"
    );
    assert!(
        whole >= Duration::from_millis(4500),
        "the whole task took only {whole:?}: were the pieces paced?"
    );
}
