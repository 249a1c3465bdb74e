//! `--path-mapping` across a real mount-namespace split. dfcache runs in a
//! "container" namespace that sees the shared volume at C (`root/container`)
//! only; a legacy daemon (`dfcache serve --legacy`, today's dfdaemon: it
//! imports and exports by path) runs in a "host" namespace that sees it at
//! H (`root/host`) only. The split is set up by `common::ns`; a path that is
//! not mapped right is one the daemon really cannot open.

mod common;

use std::path::Path;
use std::process::Output;

use common::ns::*;
use common::*;

const PIECE: u64 = 4 * MIB;
const FALLBACK_WARNING: &str = "does not implement the streaming RPCs";

/// A legacy daemon behind a namespace split. Fields drop in order: the
/// daemon is stopped before the directory goes.
struct Fixture {
    daemon: Daemon,
    split: Split,
    root: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let root = tempdir();
    let split = Split::new(root.path());
    let daemon = split.start_daemon(&["--legacy"]);
    Fixture {
        daemon,
        split,
        root,
    }
}

impl Fixture {
    fn socket(&self) -> &Path {
        &self.daemon.socket
    }

    /// The CLI in a new container namespace, against the legacy daemon.
    fn cli(&self, args: &[&str]) -> Output {
        self.split.cli(self.socket(), args)
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        self.split.cli_ok(self.socket(), args)
    }

    /// The daemon holds no task, and its store not a single file (but the
    /// daemon's lock file, which exists while the store is open).
    fn assert_store_empty(&self) {
        assert!(self.daemon.ids().is_empty(), "a task was created");
        let store = self.root.path().join("store");
        let files = sh_lines(&format!(
            "find {} -type f ! -path {}",
            sh_quote(&store),
            sh_quote(&store.join("lock"))
        ));
        assert!(files.is_empty(), "files in the store: {files:?}");
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn sh_lines(script: &str) -> Vec<String> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(out.status.success(), "{script}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The task id dfdaemon computes for `path`'s content imported with
/// `--piece-length` `piece_length` (the piece length is part of the id).
fn expected_id_with_piece_length(path: &Path, piece_length: u64) -> String {
    let out = sh_lines(&format!(
        "(cat {}; printf {piece_length}PERSISTENT_CACHE) | sha256sum",
        sh_quote(path)
    ));
    out[0][..64].to_string()
}

fn sha256(path: &Path) -> String {
    sh_lines(&format!("sha256sum {}", sh_quote(path)))[0][..64].to_string()
}

#[test]
fn import_by_mapped_path_gets_the_streamed_id() {
    let f = fixture();
    let s = &f.split;
    write_file(&s.host.join("file.bin"), 2 * PIECE + 4321, 1);
    // The same bytes streamed into a normal daemon that sees them directly.
    let other = tempdir();
    let normal = Daemon::start(other.path());
    let streamed = normal.ok(&["import", "--stream-mode", &s.h("file.bin")]);
    assert_eq!(streamed, expected_id(&s.host.join("file.bin")));

    let map = s.mapping();
    // Default mode: the daemon is handed H/file.bin and opens it itself.
    let out = f.cli(&["import", "--path-mapping", &map, &s.c("file.bin")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout(&out), streamed);
    // --stream-mode: UNIMPLEMENTED, one warning, then upload by path.
    let out = f.cli(&[
        "import",
        "--stream-mode",
        "--path-mapping",
        &map,
        &s.c("file.bin"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout(&out), streamed);
    assert_eq!(stderr.matches(FALLBACK_WARNING).count(), 1, "{stderr}");
    // The mapping is also read from DFCACHE_PATH_MAPPING.
    let out = s
        .container_command(bin(), &["import", "--no-progress", &s.c("file.bin")])
        .env("DFCACHE_ENDPOINT", f.socket())
        .env("DFCACHE_PATH_MAPPING", &map)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout(&out), streamed);

    // A symlink inside C to another path in C (as the container names it)
    // is resolved by dfcache: the daemon, following H/alias itself, would
    // land in its own empty C.
    std::os::unix::fs::symlink(s.container.join("file.bin"), s.host.join("alias")).unwrap();
    assert_eq!(
        f.cli_ok(&["import", "--path-mapping", &map, &s.c("alias")]),
        streamed
    );
    assert_eq!(f.daemon.ids(), vec![streamed.clone()]);
}

#[test]
fn import_without_mapping_names_the_path_the_daemon_cannot_open() {
    let f = fixture();
    let s = &f.split;
    write_file(&s.host.join("file.bin"), PIECE + 1, 2);
    let c_file = s.c("file.bin");
    for stream in [false, true] {
        let mut args = vec!["import", c_file.as_str()];
        if stream {
            args.insert(1, "--stream-mode");
        }
        let out = f.cli(&args);
        let err = failure(&out);
        assert!(err.contains(&c_file), "{args:?}: {err}");
        assert!(
            err.to_lowercase().contains("no such file or directory"),
            "{args:?}: {err}"
        );
        assert!(err.contains("as the daemon sees it"), "{args:?}: {err}");
        assert!(stdout(&out).is_empty(), "{args:?}");
    }
    f.assert_store_empty();
}

#[test]
fn export_by_mapped_path_lands_where_the_container_sees_it() {
    let f = fixture();
    let s = &f.split;
    let map = s.mapping();
    // Several pieces, the last one short: the legacy daemon sends them out
    // of order with --transfer-from-dfdaemon.
    let src = s.host.join("src.bin");
    write_file(&src, 3 * PIECE + 123, 3);
    let id = f.cli_ok(&[
        "import",
        "--piece-length",
        "4mib",
        "--path-mapping",
        &map,
        &s.c("src.bin"),
    ]);
    assert_eq!(id, expected_id_with_piece_length(&src, PIECE));
    let stat = f.daemon.ok(&["stat", &id]);
    assert!(stat.contains(&(3 * PIECE + 123).to_string()), "{stat}");

    // The daemon writes H/out.bin; the container finds C/out.bin.
    f.cli_ok(&["export", "--path-mapping", &map, &id, "-O", &s.c("out.bin")]);
    s.sh_ok(&format!("cmp {} {}", s.c("src.bin"), s.c("out.bin")));
    assert!(same_bytes(&src, &s.host.join("out.bin")));
    assert!(!s.container.join("out.bin").exists(), "written outside H");

    // Pieces over the socket, placed by offset and verified by digest.
    f.cli_ok(&[
        "export",
        "--transfer-from-dfdaemon",
        "--path-mapping",
        &map,
        "--digest",
        &format!("sha256:{}", sha256(&src)),
        &id,
        "-O",
        &s.c("out2.bin"),
    ]);
    s.sh_ok(&format!("cmp {} {}", s.c("src.bin"), s.c("out2.bin")));
    // It needs no mapping: dfcache writes the file itself.
    f.cli_ok(&[
        "export",
        "--transfer-from-dfdaemon",
        &id,
        "-O",
        &s.c("out3.bin"),
    ]);
    s.sh_ok(&format!("cmp {} {}", s.c("src.bin"), s.c("out3.bin")));

    // An output that is a symlink staying in the volume is fine (named as
    // the container sees it, so it dangles for the daemon).
    std::os::unix::fs::symlink(s.container.join("out.bin"), s.host.join("latest")).unwrap();
    f.cli_ok(&[
        "export",
        "--overwrite",
        "--path-mapping",
        &map,
        &id,
        "-O",
        &s.c("latest"),
    ]);
    s.sh_ok(&format!("cmp {} {}", s.c("src.bin"), s.c("latest")));

    // Without the mapping the daemon writes C/out4.bin in its own
    // namespace, which the container never sees: a clear failure.
    let out = f.cli(&["export", &id, "-O", &s.c("out4.bin")]);
    let err = failure(&out);
    assert!(err.contains(&s.c("out4.bin")), "{err}");
    assert!(err.contains("--path-mapping"), "{err}");
    s.sh_ok(&format!("test ! -e {}", s.c("out4.bin")));
    assert!(!s.host.join("out4.bin").exists());
}

#[test]
fn a_container_prefix_through_a_symlink_maps_like_its_target() {
    // As `/var/run` is a link to `/run`: the mapping names the volume by a
    // link, and dfcache resolves the paths it maps.
    let f = fixture();
    let s = &f.split;
    let link = s.root.join("volume-link");
    std::os::unix::fs::symlink(&s.container, &link).unwrap();
    let map = format!("{}:{}", link.display(), s.host.display());
    let src = s.host.join("file.bin");
    write_file(&src, PIECE + 77, 4);
    let by_link = |rel: &str| link.join(rel).to_string_lossy().into_owned();

    // Named through the link, and by the directory it leads to.
    let id = f.cli_ok(&["import", "--path-mapping", &map, &by_link("file.bin")]);
    assert_eq!(id, expected_id(&src));
    assert_eq!(
        f.cli_ok(&["import", "--path-mapping", &map, &s.c("file.bin")]),
        id
    );
    f.cli_ok(&[
        "export",
        "--path-mapping",
        &map,
        &id,
        "-O",
        &by_link("out.bin"),
    ]);
    assert!(same_bytes(&src, &s.host.join("out.bin")));
    // `..` out of the volume is still refused.
    write_file(&s.root.join("outside.bin"), 10, 5);
    let out = f.cli(&["import", "--path-mapping", &map, &by_link("../outside.bin")]);
    assert_refused(&out, "`..` through the link");
    assert_eq!(f.daemon.ids(), vec![id]);
}

/// A mapping refusal, not a connection error, with a non-zero exit.
fn assert_refused(out: &Output, what: &str) {
    let err = failure(out);
    assert!(
        err.contains("under no mapped prefix") || err.contains("climbs out of the mapped prefix"),
        "{what}: not a mapping refusal: {err}"
    );
    assert!(
        !err.contains("cannot reach the daemon"),
        "{what}: reached for the daemon: {err}"
    );
    assert!(stdout(out).is_empty(), "{what}");
}

#[test]
fn mapping_escapes_are_refused_before_anything_reaches_the_daemon() {
    let f = fixture();
    let s = &f.split;
    let root = f.root.path();
    let map = s.mapping();
    write_file(&s.host.join("file.bin"), 1000, 4);
    std::fs::write(root.join("secret.txt"), b"not for the daemon").unwrap();
    // C/link -> /etc (the daemon would follow H/link to the host's /etc).
    std::os::unix::fs::symlink("/etc", s.host.join("link")).unwrap();
    // Prefixes that match C only in part of a component.
    for sibling in ["container-other", "containerx"] {
        std::fs::create_dir(root.join(sibling)).unwrap();
        write_file(&root.join(sibling).join("file.bin"), 1000, 5);
    }
    let c = s.container.to_string_lossy();
    // C/../../.. up to / and down to /etc/passwd.
    let depth = s.container.components().count() - 1;
    let to_slash = format!("{c}/{}", "../".repeat(depth));
    let imports = [
        format!("{c}/../secret.txt"),
        format!("{to_slash}etc/passwd"),
        s.c("link/passwd"),
        root.join("container-other/file.bin")
            .to_string_lossy()
            .into_owned(),
        root.join("containerx/file.bin")
            .to_string_lossy()
            .into_owned(),
    ];
    // The container really sees each of them: only the mapping stops them.
    for path in &imports {
        s.sh_ok(&format!("test -f {path}"));
    }

    let nowhere = root.join("absent.sock");
    // Control: a path that maps fine does go for the (absent) daemon.
    let out = s.cli(
        &nowhere,
        &["import", "--path-mapping", &map, &s.c("file.bin")],
    );
    let err = failure(&out);
    assert!(err.contains("cannot reach the daemon"), "{err}");

    for path in &imports {
        let out = s.cli(&nowhere, &["import", "--path-mapping", &map, path]);
        assert_refused(&out, path);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("cannot hand {path} to the daemon")),
            "{path}: {err}"
        );
        // The same against the real daemon: refused, nothing stored.
        let out = f.cli(&["import", "--path-mapping", &map, path]);
        assert_refused(&out, path);
        // --stream-mode falls back to upload by path, and is refused too.
        let out = f.cli(&["import", "--stream-mode", "--path-mapping", &map, path]);
        assert_refused(&out, path);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("has no path it can open"), "{path}: {err}");
    }
    f.assert_store_empty();

    // Exports: an output path that escapes is refused the same way.
    let outside = root.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, s.host.join("outlink")).unwrap();
    let id = f.cli_ok(&["import", "--path-mapping", &map, &s.c("file.bin")]);
    // The output file itself a symlink out of C: dangling, and (with
    // --overwrite) to an existing file. A daemon that follows it would
    // write outside the volume.
    std::os::unix::fs::symlink(outside.join("new.bin"), s.host.join("evil")).unwrap();
    std::fs::write(outside.join("victim.txt"), b"keep me").unwrap();
    std::os::unix::fs::symlink(outside.join("victim.txt"), s.host.join("evil2")).unwrap();
    let outputs = [
        format!("{c}/../out.bin"),
        s.c("outlink/out.bin"),
        root.join("containerx/out.bin")
            .to_string_lossy()
            .into_owned(),
        s.c("evil"),
        s.c("evil2"),
    ];
    for output in &outputs {
        for socket in [nowhere.as_path(), f.socket()] {
            let out = s.cli(
                socket,
                &[
                    "export",
                    "--overwrite",
                    "--path-mapping",
                    &map,
                    &id,
                    "-O",
                    output,
                ],
            );
            assert_refused(&out, output);
            // Named as typed, not only as resolved.
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(output.as_str()), "{err}");
            if output.contains("evil") {
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(err.contains("is a symbolic link"), "{err}");
            }
        }
    }
    assert_eq!(ls(&outside), "victim.txt");
    assert_eq!(
        std::fs::read(outside.join("victim.txt")).unwrap(),
        b"keep me"
    );
    for link in ["evil", "evil2"] {
        let meta = std::fs::symlink_metadata(s.host.join(link)).unwrap();
        assert!(meta.file_type().is_symlink(), "{link} was replaced");
    }
    assert!(!root.join("out.bin").exists());
    assert!(!root.join("containerx/out.bin").exists());
}
