//! `import --recursive` and `export --recursive`: one id for a whole tree,
//! the same on every daemon and by every transfer, and a tree recreated
//! byte for byte, or nothing at all.

mod common;

use std::path::Path;

use common::tree::{assert_same_tree, make_tree};
use common::*;

#[test]
fn a_tree_has_one_id_by_path_by_stream_and_on_another_daemon_and_exports_byte_for_byte() {
    let root = tempdir();
    let tree = root.path().join("model");
    make_tree(&tree, 1000);
    let a = Daemon::start(root.path());
    let t = tree.to_str().unwrap();
    let by_path = a.ok(&["import", "--recursive", t]);
    let by_stream = a.ok(&["import", "-r", "--stream-mode", t]);
    assert_eq!(by_path, by_stream);
    assert!(by_path.len() == 64 && !by_path.contains('\n'), "{by_path}");

    let other = root.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let b = Daemon::start(&other);
    assert_eq!(b.ok(&["import", "-r", "--stream-mode", t]), by_path);

    for (daemon, mode) in [(&b, "--stream-mode"), (&a, "--transfer-from-dfdaemon")] {
        let out = root.path().join(format!("out{mode}"));
        daemon.ok(&["export", "-r", &by_path, "-O", out.to_str().unwrap(), mode]);
        assert_same_tree(&tree, &out);
    }
}

#[test]
fn a_released_dfdaemon_imports_and_exports_the_same_tree_under_the_same_id() {
    let root = tempdir();
    let tree = root.path().join("model");
    make_tree(&tree, 20);
    let current = Daemon::start(root.path());
    let id = current.ok(&["import", "-r", "--stream-mode", tree.to_str().unwrap()]);
    let legacy_root = root.path().join("legacy");
    std::fs::create_dir_all(&legacy_root).unwrap();
    let legacy = Daemon::start_with(&legacy_root, &["--legacy"]);
    // By path, as a released dfdaemon imports (it hard-links the files).
    assert_eq!(legacy.ok(&["import", "-r", tree.to_str().unwrap()]), id);
    let out = root.path().join("out");
    legacy.ok(&[
        "export",
        "-r",
        &id,
        "-O",
        out.to_str().unwrap(),
        "--stream-mode",
    ]);
    assert_same_tree(&tree, &out);
}

/// Nothing named like the output, nor a temporary tree, is left in `dir`.
fn assert_only(dir: &Path, names: &[&str]) {
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    names.sort();
    assert_eq!(found, names);
}

#[test]
fn an_id_that_is_no_manifest_or_a_manifest_that_lies_is_refused_and_leaves_nothing() {
    let root = tempdir();
    let daemon = Daemon::start(root.path());
    let work = root.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let data = work.join("data.bin");
    write_file(&data, 5000, 83);
    let data_id = daemon.ok(&["import", "--stream-mode", data.to_str().unwrap()]);
    let out = work.join("out");
    let o = out.to_str().unwrap();

    let err = failure(&daemon.cli(&["export", "-r", &data_id, "-O", o]));
    assert!(err.contains("is not a tree manifest"), "{err}");

    // A manifest that says the file has 4999 bytes; the task has 5000.
    let lying = format!(
        r#"{{"entries":[{{"kind":"file","mode":420,"name":"data.bin","size":4999,"task_id":"{data_id}"}}],"version":1}}"#
    );
    let hostile = [
        (lying, "the manifest says 4999 bytes, but task"),
        (
            format!(
                r#"{{"entries":[{{"kind":"file","mode":420,"name":"..","size":5000,"task_id":"{data_id}"}}],"version":1}}"#
            ),
            "is . or ..",
        ),
        (
            format!(
                r#"{{"entries":[{{"kind":"file","mode":420,"name":"a/b","size":5000,"task_id":"{data_id}"}}],"version":1}}"#
            ),
            "contains /",
        ),
    ];
    for (i, (manifest, reason)) in hostile.iter().enumerate() {
        let path = root.path().join(format!("manifest{i}.json"));
        std::fs::write(&path, manifest).unwrap();
        let id = daemon.ok(&["import", "--stream-mode", path.to_str().unwrap()]);
        let err = failure(&daemon.cli(&["export", "-r", &id, "-O", o]));
        assert!(err.contains(reason), "{reason}: {err}");
        assert_only(&work, &["data.bin"]);
    }

    // An existing output is refused before the daemon is asked.
    std::fs::create_dir(&out).unwrap();
    let tree = root.path().join("tree");
    make_tree(&tree, 3);
    let id = daemon.ok(&["import", "-r", "--stream-mode", tree.to_str().unwrap()]);
    let err = failure(&daemon.cli(&["export", "-r", &id, "-O", o]));
    assert!(err.contains("already exists"), "{err}");
    assert_only(&out, &[]);
}
