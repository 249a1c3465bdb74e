//! The mount against a legacy daemon (`dfcache serve --legacy`: imports by
//! path, exports as whole downloads whose pieces come in any order) across a
//! real mount-namespace split (see `common::ns`): the mount runs in a
//! "container" that sees the shared volume at C only, the daemon in a "host"
//! namespace that sees it at H only, so the spool must be mapped right.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::ns::*;
use crate::common::*;
use crate::harness::listed_task;

const PIECE: u64 = 4 * MIB;

/// `dfcache mount` in its own container namespace; unmounted (SIGTERM)
/// when dropped, and the namespace goes with it.
struct NsMount {
    process: Guard,
    mnt: PathBuf,
}

impl NsMount {
    /// `dfcache mount root/mnt -e SOCKET --spool C/spool --path-mapping C:H`.
    fn start(split: &Split, socket: &Path) -> NsMount {
        Self::start_with(split, socket, &["--path-mapping", &split.mapping()])
    }

    /// `dfcache mount root/mnt -e SOCKET --spool C/spool EXTRA...`.
    fn start_with(split: &Split, socket: &Path, extra: &[&str]) -> NsMount {
        let mnt = split.root.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let mut command = Command::new(split.container_prefix()[0].clone());
        command
            .args(&split.container_prefix()[1..])
            .arg(bin())
            .arg("mount")
            .arg(&mnt)
            .arg("-e")
            .arg(socket)
            .args(["--spool", &split.c("spool")])
            .args(extra)
            .env(
                "DFCACHE_LOG_LEVEL",
                std::env::var("DFCACHE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let process = Guard::new(command.spawn().expect("spawn dfcache mount"));
        let mut m = NsMount { process, mnt };
        m.wait_mounted();
        m
    }

    fn wait_mounted(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.process.exited() {
                panic!("dfcache mount (or its namespace set-up) exited early: {status}");
            }
            if mounted_in(self.pid(), &self.mnt, "fuse") {
                self.sh_ok(&format!("test -d {}", sh_quote(&self.path("tasks"))));
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} was not mounted", self.mnt.display());
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    fn q(&self, rel: &str) -> String {
        sh_quote(&self.path(rel))
    }

    /// `sh -c script` in the mount's namespace; insists it succeeded.
    fn sh_ok(&self, script: &str) -> String {
        nsenter_ok(self.pid(), script)
    }
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
    let m = NsMount::start(&split, &daemon.socket);
    let c_src = sh_quote(&split.container.join("src.bin"));

    // cp into import/: spooled at C/spool, uploaded by its host path.
    m.sh_ok(&format!("cp {c_src} {}", m.q("import/src.bin")));
    let id = m.sh_ok(&format!(
        "getfattr -n user.dfcache.task_id --only-values {}",
        m.q("import/src.bin")
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
    let listing = m.sh_ok(&format!("ls -l {}", m.q("tasks")));
    listed_task(&listing, &id, len);

    // Read back through the mount: the legacy daemon sends the pieces out
    // of order, the reader gets the bytes in order.
    let task = m.q(&format!("tasks/{id}"));
    m.sh_ok(&format!("cmp {task} {c_src}"));
    let tail = |f: &str| format!("tail -c {} {f} | sha256sum", PIECE + 7);
    assert_eq!(m.sh_ok(&tail(&task)), m.sh_ok(&tail(&c_src)));
    let dd = |f: &str| format!("dd if={f} bs=4k skip=1500 count=100 status=none | sha256sum");
    assert_eq!(m.sh_ok(&dd(&task)), m.sh_ok(&dd(&c_src)));
    // The finished import reads the same.
    m.sh_ok(&format!("cmp {} {c_src}", m.q("import/src.bin")));
}

#[test]
fn legacy_cp_without_mapping_fails_visibly() {
    // The daemon is handed C/spool/..., which it cannot see: cp fails,
    // and no import, task or spool file remains.
    let root = tempdir();
    let split = Split::new(root.path());
    let daemon = split.start_daemon(&["--legacy"]);
    write_file(&split.host.join("src.bin"), PIECE + 9, 13);
    let m = NsMount::start_with(&split, &daemon.socket, &[]);
    let c_src = sh_quote(&split.container.join("src.bin"));
    let out = nsenter(m.pid(), &format!("cp {c_src} {}", m.q("import/src.bin")));
    assert!(!out.status.success(), "cp succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("src.bin"), "{err}");
    m.sh_ok(&format!("test ! -e {}", m.q("import/src.bin")));
    assert!(daemon.ids().is_empty(), "a task was created");
    assert_eq!(ls(&split.host.join("spool")), "", "spool file left behind");
}

#[test]
fn legacy_first_bytes_arrive_before_the_last_piece() {
    // Pieces in order, each after 500 ms: the last lands >= 5 s after the
    // download starts.
    let root = tempdir();
    let (split, daemon, id) = legacy_with_task(
        root.path(),
        &["--legacy-piece-delay", "500ms"],
        10 * PIECE,
        12,
    );
    let m = NsMount::start(&split, &daemon.socket);
    let task = m.q(&format!("tasks/{id}"));
    let c_src = sh_quote(&split.container.join("src.bin"));

    let start = Instant::now();
    m.sh_ok(&format!(
        "dd if={task} bs=4k count=1 status=none | cmp -n 4096 - {c_src}"
    ));
    let first = start.elapsed();
    m.sh_ok(&format!("cmp {task} {c_src}"));
    let whole = start.elapsed();
    eprintln!("first 4 KiB after {first:?}, the whole task after {whole:?}");
    assert!(
        first < Duration::from_secs(3),
        "the first 4 KiB took {first:?}"
    );
    assert!(
        whole >= Duration::from_millis(4500),
        "the whole task took only {whole:?}: were the pieces paced?"
    );
}
