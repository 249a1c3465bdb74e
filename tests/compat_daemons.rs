//! The CLI against the daemons it meets in the field, played by the
//! embedded daemon's emulations: today's released dfdaemon (`--legacy`) and
//! one built on dragonfly-api 2.1.12 (streaming without extensions).

mod common;

use common::*;

const FALLBACK_WARNING: &str = "does not implement the streaming RPCs";

#[test]
fn legacy_daemon_gets_legacy_rpcs_with_one_warning() {
    let root = tempdir();
    let current = Daemon::start(&root.path().join("current").tap_mkdir());
    let legacy = Daemon::start_with(&root.path().join("legacy").tap_mkdir(), &["--legacy"]);
    let src = root.path().join("src.bin");
    write_file(&src, 13 * MIB + 11, 21);
    let s = src.to_str().unwrap();
    let streamed_id = current.ok(&["import", "--stream-mode", s]);

    let out = legacy.cli(&["import", "--stream-mode", s]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), streamed_id);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches(FALLBACK_WARNING).count(), 1, "{stderr}");

    // Export: streaming falls back to the daemon writing the path.
    let o1 = root.path().join("o1.bin");
    let out = legacy.cli(&[
        "export",
        "--stream-mode",
        &streamed_id,
        "-O",
        o1.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr)
            .matches(FALLBACK_WARNING)
            .count(),
        1
    );
    assert!(same_bytes(&src, &o1));

    // Pieces arrive out of order and are placed by offset.
    let o2 = root.path().join("o2.bin");
    legacy.ok(&[
        "export",
        "--transfer-from-dfdaemon",
        &streamed_id,
        "-O",
        o2.to_str().unwrap(),
    ]);
    assert!(same_bytes(&src, &o2));

    let err = failure(&legacy.cli(&["rm", &streamed_id]));
    assert!(err.contains("does not support deleting tasks"), "{err}");
    assert_eq!(legacy.ids(), vec![streamed_id]);
}

#[test]
fn api_2_1_12_daemon_streams_without_extensions() {
    let root = tempdir();
    let old = Daemon::start_with(root.path(), &["--emulate-api", "2.1.12"]);
    let src = root.path().join("src.bin");
    write_file(&src, 9 * MIB + 1, 22);
    let id = old.ok(&["import", "--stream-mode", src.to_str().unwrap()]);
    assert_eq!(id, expected_id(&src));
    let out = root.path().join("out.bin");
    let run = old.cli(&["export", "--stream-mode", &id, "-O", out.to_str().unwrap()]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(!String::from_utf8_lossy(&run.stderr).contains(FALLBACK_WARNING));
    assert!(same_bytes(&src, &out));
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}
