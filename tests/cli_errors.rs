//! Bad input: a clear message, a non-zero exit, and nothing created.

mod common;

use common::*;

struct Fixture {
    root: tempfile::TempDir,
    daemon: Daemon,
    src: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let root = tempdir();
    let daemon = Daemon::start(root.path());
    let src = root.path().join("src.bin");
    write_file(&src, 6 * MIB, 9);
    Fixture { root, daemon, src }
}

impl Fixture {
    fn s(&self) -> &str {
        self.src.to_str().unwrap()
    }

    /// The daemon holds no task and the work directory no stray file.
    fn assert_nothing_created(&self, expected_files: &[&str]) {
        assert!(self.daemon.ids().is_empty(), "a task was created");
        let mut names: Vec<String> = std::fs::read_dir(self.root.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "store" && n != "d.sock")
            .collect();
        names.sort();
        assert_eq!(names, expected_files);
    }
}

#[test]
fn unknown_task_id() {
    let f = fixture();
    let unknown = "0".repeat(64);
    let out = f.root.path().join("out.bin");
    for args in [
        vec!["stat", unknown.as_str()],
        vec!["rm", unknown.as_str()],
        vec!["export", unknown.as_str(), "-O", out.to_str().unwrap()],
        vec![
            "export",
            "--stream-mode",
            unknown.as_str(),
            "-O",
            out.to_str().unwrap(),
        ],
        vec![
            "export",
            "--transfer-from-dfdaemon",
            unknown.as_str(),
            "-O",
            out.to_str().unwrap(),
        ],
    ] {
        let err = failure(&f.daemon.cli(&args));
        assert!(err.contains("does not exist"), "{args:?}: {err}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: one sentence expected: {err}"
        );
    }
    // An id of the wrong shape is refused by the daemon before it looks
    // anything up (INVALID_ARGUMENT), and the sentence says why.
    let args = [
        "export",
        "--stream-mode",
        "not-an-id",
        "-O",
        out.to_str().unwrap(),
    ];
    let err = failure(&f.daemon.cli(&args));
    assert!(
        err.contains("not 64 lowercase hex digits"),
        "{args:?}: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    f.assert_nothing_created(&["src.bin"]);
}

#[test]
fn invalid_mapping() {
    let f = fixture();
    for (mapping, want) in [
        ("/a:b", "host path \"b\" is not absolute"),
        ("/a:/b,,/c:/d", "entry 2 is empty"),
        ("nocolon", "not of the form container:host"),
        ("/a:/b,/a:/c", "repeats the container prefix"),
    ] {
        let err = failure(&f.daemon.cli(&["import", "--path-mapping", mapping, f.s()]));
        assert!(err.contains(want), "{mapping}: {err}");
    }
    f.assert_nothing_created(&["src.bin"]);
}

#[test]
fn path_outside_the_mapping_is_refused_before_the_daemon() {
    let f = fixture();
    let root = f.root.path().to_str().unwrap().to_string();
    let err = failure(
        &f.daemon
            .cli(&["import", "--path-mapping", "/elsewhere:/host", f.s()]),
    );
    assert!(err.contains("under no mapped prefix"), "{err}");
    // `..` out of the prefix.
    let sneaky = format!("{root}/sub/../src.bin");
    std::fs::create_dir(f.root.path().join("sub")).unwrap();
    let mapping = format!("{root}/sub:/host/sub");
    let err = failure(
        &f.daemon
            .cli(&["import", "--path-mapping", &mapping, &sneaky]),
    );
    assert!(
        err.contains("under no mapped prefix") || err.contains("climbs out"),
        "{err}"
    );
    std::fs::remove_dir(f.root.path().join("sub")).unwrap();
    f.assert_nothing_created(&["src.bin"]);
}

#[test]
fn ttl_out_of_range() {
    let f = fixture();
    for ttl in ["4m", "8d", "0s", "soon"] {
        let err = failure(&f.daemon.cli(&["import", "--ttl", ttl, f.s()]));
        assert!(err.contains("--ttl"), "{ttl}: {err}");
    }
    f.assert_nothing_created(&["src.bin"]);
}

#[test]
fn piece_length_below_minimum() {
    let f = fixture();
    for len in ["1mib", "4194303", "3.9mib"] {
        let err =
            failure(
                &f.daemon
                    .cli(&["import", "--stream-mode", "--piece-length", len, f.s()]),
            );
        assert!(err.contains("below the minimum of 4mib"), "{len}: {err}");
    }
    f.assert_nothing_created(&["src.bin"]);
}

#[test]
fn directory_or_missing_input() {
    let f = fixture();
    let dir = f.root.path().join("adir");
    std::fs::create_dir(&dir).unwrap();
    for mode in [&["--stream-mode"][..], &[][..]] {
        let mut args = vec!["import", dir.to_str().unwrap()];
        args.extend_from_slice(mode);
        let err = failure(&f.daemon.cli(&args));
        assert!(err.contains("is a directory"), "{err}");
        let missing = f.root.path().join("missing.bin");
        let mut args = vec!["import", missing.to_str().unwrap()];
        args.extend_from_slice(mode);
        let err = failure(&f.daemon.cli(&args));
        assert!(err.contains("No such file"), "{err}");
    }
    f.assert_nothing_created(&["adir", "src.bin"]);
}

#[test]
fn existing_output_without_overwrite() {
    let f = fixture();
    let id = f.daemon.ok(&["import", "--stream-mode", f.s()]);
    let out = f.root.path().join("out.bin");
    std::fs::write(&out, b"keep me").unwrap();
    for mode in [
        &["--stream-mode"][..],
        &[][..],
        &["--transfer-from-dfdaemon"][..],
    ] {
        let mut args = vec!["export", id.as_str(), "-O", out.to_str().unwrap()];
        args.extend_from_slice(mode);
        let err = failure(&f.daemon.cli(&args));
        assert!(
            err.contains("already exists") && err.contains("--overwrite"),
            "{err}"
        );
        assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
        args.push("--overwrite");
        f.daemon.ok(&args);
        assert!(same_bytes(&f.src, &out));
        std::fs::write(&out, b"keep me").unwrap();
    }
    let err = failure(&f.daemon.cli(&[
        "export",
        &id,
        "-O",
        f.root.path().join("no/such/dir/x").to_str().unwrap(),
    ]));
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn export_to_a_full_disk_fails_and_leaves_nothing() {
    let f = fixture();
    let id = f.daemon.ok(&["import", "--stream-mode", f.s()]);
    // 6 MiB of task into 2 MiB of disk.
    let disk = Tmpfs::mount(f.root.path().join("disk"), "2m");
    for mode in [
        &["--stream-mode"][..],
        &[][..],
        &["--transfer-from-dfdaemon"][..],
    ] {
        let out = disk.0.join("out.bin");
        let mut args = vec!["export", id.as_str(), "-O", out.to_str().unwrap()];
        args.extend_from_slice(mode);
        let err = failure(&f.daemon.cli(&args));
        assert!(err.contains("No space left on device"), "{mode:?}: {err}");
        let left: Vec<_> = std::fs::read_dir(&disk.0).unwrap().flatten().collect();
        assert!(left.is_empty(), "{mode:?}: left behind: {left:?}");
    }
    // The task itself is untouched.
    assert_eq!(f.daemon.ids(), vec![id]);
}

#[test]
fn unreachable_daemon() {
    let root = tempdir();
    let src = root.path().join("src.bin");
    write_file(&src, 10, 1);
    let out = cli(
        &root.path().join("nobody.sock"),
        &["import", "--stream-mode", src.to_str().unwrap()],
    );
    let err = failure(&out);
    assert!(
        err.contains("cannot reach the daemon") && err.contains("nobody.sock"),
        "{err}"
    );
}
