//! Round trips through `dfcache serve` with the real CLI binary.

mod common;

use common::*;

fn round_trip(len: u64) {
    let root = tempdir();
    let daemon = Daemon::start(root.path());
    let src = root.path().join("src.bin");
    write_file(&src, len, len + 7);
    let src_s = src.to_str().unwrap();

    let id = daemon.ok(&["import", "--stream-mode", src_s]);
    assert_eq!(id, expected_id(&src), "streamed id for {len} bytes");

    // The same bytes by another path, and without streaming: the same id.
    let copy = root.path().join("elsewhere.bin");
    std::fs::copy(&src, &copy).unwrap();
    assert_eq!(
        daemon.ok(&["import", copy.to_str().unwrap()]),
        id,
        "path import of {len} bytes"
    );
    assert_eq!(daemon.ids(), vec![id.clone()], "stored once");

    let out = root.path().join("out.bin");
    daemon.ok(&["export", "--stream-mode", &id, "-O", out.to_str().unwrap()]);
    assert!(same_bytes(&src, &out), "streamed export of {len} bytes");

    let out2 = root.path().join("out2.bin");
    daemon.ok(&["export", &id, "-O", out2.to_str().unwrap()]);
    assert!(same_bytes(&src, &out2), "path export of {len} bytes");

    let out3 = root.path().join("out3.bin");
    daemon.ok(&[
        "export",
        "--transfer-from-dfdaemon",
        &id,
        "-O",
        out3.to_str().unwrap(),
    ]);
    assert!(same_bytes(&src, &out3), "piece export of {len} bytes");
    assert!(daemon.leftovers().is_empty());
}

#[test]
fn empty_file() {
    round_trip(0);
}

#[test]
fn one_byte() {
    round_trip(1);
}

#[test]
fn piece_boundaries() {
    for len in [4 * MIB - 1, 4 * MIB, 4 * MIB + 1] {
        round_trip(len);
    }
}

#[test]
fn one_gibibyte() {
    round_trip(1024 * MIB);
}

#[test]
fn digest_is_verified_on_export() {
    let root = tempdir();
    let daemon = Daemon::start(root.path());
    let src = root.path().join("src.bin");
    write_file(&src, 5 * MIB, 1);
    let id = daemon.ok(&["import", "--stream-mode", src.to_str().unwrap()]);
    let sha = std::process::Command::new("sha256sum")
        .arg(&src)
        .output()
        .unwrap();
    let good = format!("sha256:{}", &String::from_utf8_lossy(&sha.stdout)[..64]);
    let bad = format!("sha256:{}", "0".repeat(64));
    for mode in [
        &["--stream-mode"][..],
        &[][..],
        &["--transfer-from-dfdaemon"][..],
    ] {
        let out = root.path().join("ok.bin");
        let mut args = vec![
            "export",
            &id,
            "-O",
            out.to_str().unwrap(),
            "--digest",
            &good,
        ];
        args.extend_from_slice(mode);
        daemon.ok(&args);
        assert!(same_bytes(&src, &out));
        std::fs::remove_file(&out).unwrap();

        let mut args = vec!["export", &id, "-O", out.to_str().unwrap(), "--digest", &bad];
        args.extend_from_slice(mode);
        let err = failure(&daemon.cli(&args));
        assert!(err.contains("mismatch"), "{mode:?}: {err}");
        assert!(
            !out.exists(),
            "{mode:?}: a failed export left {}",
            out.display()
        );
    }
    let dir_entries: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        dir_entries
            .iter()
            .all(|n| !n.to_string_lossy().contains(".part")),
        "temporary files left: {dir_entries:?}"
    );
}

#[test]
fn tag_application_and_piece_length_change_the_id() {
    let root = tempdir();
    let daemon = Daemon::start(root.path());
    let src = root.path().join("src.bin");
    write_file(&src, 100, 3);
    let s = src.to_str().unwrap();
    let plain = daemon.ok(&["import", "--stream-mode", s]);
    let tagged = daemon.ok(&["import", "--stream-mode", "--tag", "v1", s]);
    let tagged_legacy = daemon.ok(&["import", "--tag", "v1", s]);
    let with_piece = daemon.ok(&["import", "--stream-mode", "--piece-length", "8mib", s]);
    let custom = daemon.ok(&[
        "import",
        "--stream-mode",
        "--content-for-calculating-task-id",
        "my-model",
        s,
    ]);
    assert_ne!(plain, tagged);
    assert_eq!(tagged, tagged_legacy);
    assert_ne!(plain, with_piece);
    let sha = |input: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s' '{input}' | sha256sum"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)[..64].to_string()
    };
    assert_eq!(custom, sha("my-model"));
    let content = std::fs::read(&src).unwrap();
    let mut tagged_input = content.clone();
    tagged_input.extend_from_slice(b"v1PERSISTENT_CACHE");
    let p = root.path().join("tagged-input");
    std::fs::write(&p, &tagged_input).unwrap();
    let out = std::process::Command::new("sha256sum")
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(
        tagged,
        String::from_utf8_lossy(&out.stdout)[..64].to_string()
    );
    let stat = daemon.ok(&["stat", &with_piece]);
    assert!(stat.contains("(8388608 bytes)"), "{stat}");
}

#[test]
fn stat_ls_and_rm() {
    let root = tempdir();
    let daemon = Daemon::start(root.path());
    let src = root.path().join("src.bin");
    write_file(&src, 9 * MIB, 4);
    let id = daemon.ok(&[
        "import",
        "--stream-mode",
        "--ttl",
        "2h",
        src.to_str().unwrap(),
    ]);
    let stat = daemon.ok(&["stat", &id]);
    for want in [
        id.as_str(),
        "9437184 bytes",
        "Piece count:      3",
        "TTL:              2h",
        "Succeeded",
    ] {
        assert!(stat.contains(want), "stat lacks {want:?}:\n{stat}");
    }
    let ls = daemon.ok(&["ls"]);
    assert!(
        ls.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with(&id) && l.contains("9.0 MiB")),
        "{ls}"
    );
    daemon.ok(&["rm", &id]);
    assert!(daemon.ids().is_empty());
    let err = failure(&daemon.cli(&["rm", &id]));
    assert!(err.contains("does not exist"), "{err}");
}
