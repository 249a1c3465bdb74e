//! `cp F mnt/import/` makes the task `dfcache import F` makes.

use crate::common::*;
use crate::harness::*;

const PIECE: u64 = 4 * MIB;

#[test]
fn cp_into_import_creates_the_task() {
    let root = tempdir();
    let daemon = Daemon::start(root.path());
    let m = Mounted::on(&daemon, root.path(), &[]);
    for (i, len) in [0, 1, PIECE - 1, PIECE, PIECE + 1, 100 * MIB]
        .into_iter()
        .enumerate()
    {
        let src = root.path().join(format!("src{i}.bin"));
        write_file(&src, len, 100 + i as u64);
        let dst = m.import(&format!("f{i}.bin"));
        sh_ok(&format!("cp {} {}", q(&src), q(&dst)));
        let id = task_id_xattr(&dst);
        assert_eq!(
            id,
            daemon.ok(&["import", "--stream-mode", src.to_str().unwrap()]),
            "{len} bytes"
        );
        assert!(same_bytes(&src, &m.task(&id)), "{len} bytes");
        let ls = sh_ok(&format!("ls -l {}", q(&m.path("tasks"))));
        let line = listed_task(&ls, &id, len);
        assert!(line.starts_with("-r--r--r--"), "{line}");
        // The finished import is a read-only file with the task's size and bytes.
        let meta = std::fs::metadata(&dst).unwrap();
        assert_eq!(meta.len(), len);
        assert!(meta.permissions().readonly());
        assert!(same_bytes(&src, &dst));
    }
}

#[test]
fn shell_redirection_and_python_writes_import_once() {
    // `cat F > x` closes a descriptor before writing (dup2): that close
    // must not commit an empty task.
    let root = tempdir();
    let m = Mounted::embedded(root.path(), &[]);
    let src = root.path().join("src.bin");
    write_file(&src, 3 * MIB + 5, 7);
    sh_ok(&format!("cat {} > {}", q(&src), q(&m.import("redirected"))));
    let id = task_id_xattr(&m.import("redirected"));
    assert_eq!(id, expected_id(&src));
    let out = python(
        "import sys\nwith open(sys.argv[1], 'wb') as f:\n    for _ in range(3):\n        f.write(b'x' * 1000003)\n",
        &[m.import("py").to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let py_src = root.path().join("py.bin");
    std::fs::write(&py_src, vec![b'x'; 3 * 1000003]).unwrap();
    assert_eq!(task_id_xattr(&m.import("py")), expected_id(&py_src));
    // Only those two tasks exist: no empty task from the redirection.
    let listed = sh_ok(&format!("ls {}", q(&m.path("tasks"))));
    assert_eq!(listed.lines().count(), 2, "{listed}");
}

#[test]
fn non_sequential_writes_need_a_spool() {
    let code = "import os, sys\nfd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)\n\
                os.pwrite(fd, b'b' * 4096, 4096)\nos.pwrite(fd, b'a' * 4096, 0)\nos.close(fd)\n";
    let root = tempdir();
    {
        let m = Mounted::embedded(root.path(), &[]);
        let out = python(code, &[m.import("backwards").to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("Errno 22") || err.contains("Invalid argument"),
            "{err}"
        );
    }
    let root = tempdir();
    let spool = root.path().join("spool");
    let m = Mounted::embedded(root.path(), &["--spool", spool.to_str().unwrap()]);
    // Back to front, in 1 MiB blocks, 5 MiB + 3 bytes.
    let code = "import os, sys\nsize = 5 * 1048576 + 3\ndata = bytes((i * 7 + i // 4096) % 251 for i in range(size))\n\
                fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)\nend = size\n\
                while end > 0:\n    start = max(0, end - 1048576)\n    os.pwrite(fd, data[start:end], start)\n    end = start\n\
                os.close(fd)\nopen(sys.argv[2], 'wb').write(data)\n";
    let expected = root.path().join("expected.bin");
    let out = python(
        code,
        &[
            m.import("backwards").to_str().unwrap(),
            expected.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = task_id_xattr(&m.import("backwards"));
    assert_eq!(id, expected_id(&expected));
    assert!(same_bytes(&expected, &m.task(&id)));
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "spool files left"
    );
}

#[test]
fn unlink_of_an_unfinished_import_cancels_it() {
    let root = tempdir();
    let daemon = Daemon::start(root.path());
    let m = Mounted::on(&daemon, root.path(), &[]);
    let code = "import os, sys\nfd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)\n\
                os.write(fd, b'z' * (3 * 1048576))\nos.unlink(sys.argv[1])\n\
                print(os.path.exists(sys.argv[1]))\nos.close(fd)\n";
    let out = python(code, &[m.import("gone").to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "False");
    // The unlink cancelled the daemon's write; its removal of the partial
    // file trails the unlink (late on a busy machine). A write that was
    // finished instead would have been renamed into a task by then.
    eventually("the daemon to discard the cancelled write", 20, || {
        daemon.leftovers().is_empty()
    });
    assert!(daemon.ids().is_empty(), "a cancelled import left a task");
}

#[test]
fn rename_chmod_utimes_cp_p_and_install_work() {
    let root = tempdir();
    let m = Mounted::embedded(root.path(), &[]);
    let src = root.path().join("src.bin");
    write_file(&src, 1_000_000, 8);
    sh_ok(&format!("touch -d '2020-01-02 03:04:05' {}", q(&src)));
    sh_ok(&format!("cp -p {} {}", q(&src), q(&m.import("kept"))));
    let mtime = sh_ok(&format!("stat -c %Y {}", q(&m.import("kept"))));
    assert_eq!(mtime, sh_ok(&format!("stat -c %Y {}", q(&src))));
    sh_ok(&format!("chmod 600 {}", q(&m.import("kept"))));
    sh_ok(&format!("touch {}", q(&m.import("kept"))));
    sh_ok(&format!(
        "install -m 644 {} {}",
        q(&src),
        q(&m.import("installed"))
    ));
    sh_ok(&format!(
        "mv {} {}",
        q(&m.import("installed")),
        q(&m.import("renamed"))
    ));
    assert!(!m.import("installed").exists());
    let id = task_id_xattr(&m.import("renamed"));
    assert_eq!(id, expected_id(&src));
    assert_eq!(task_id_xattr(&m.import("kept")), id);
    // rsync writes a temporary name, sets mode and times, then renames.
    sh_ok(&format!("rsync -a {} {}/", q(&src), q(&m.path("import"))));
    assert_eq!(task_id_xattr(&m.import("src.bin")), id);
    assert_eq!(
        sh_ok(&format!("stat -c %Y {}", q(&m.import("src.bin")))),
        mtime
    );
    // Importing the same name again replaces the file (a new import).
    sh_ok(&format!("cp {} {}", q(&src), q(&m.import("kept"))));
    assert_eq!(task_id_xattr(&m.import("kept")), id);
    let names = sh_ok(&format!("ls {}", q(&m.path("import"))));
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        vec!["kept", "renamed", "src.bin"]
    );
}

#[test]
fn a_legacy_daemon_needs_a_spool_and_gets_imports_by_path() {
    let root = tempdir();
    let daemon = Daemon::start_with(root.path(), &["--legacy"]);
    // Without a spool the mount refuses, saying why.
    let out = std::process::Command::new(bin())
        .args(["mount", "-e", daemon.socket.to_str().unwrap()])
        .arg(root.path().join("mnt"))
        .output()
        .unwrap();
    let err = failure(&out);
    assert!(
        err.contains("--spool") && err.contains("no streaming RPCs"),
        "{err}"
    );
    assert!(!is_mounted(&root.path().join("mnt")));

    let spool = root.path().join("spool");
    let m = Mounted::on(&daemon, root.path(), &["--spool", spool.to_str().unwrap()]);
    let src = root.path().join("src.bin");
    write_file(&src, 9 * MIB + 3, 77);
    sh_ok(&format!("cp {} {}", q(&src), q(&m.import("f"))));
    assert_eq!(task_id_xattr(&m.import("f")), expected_id(&src));
    assert_eq!(daemon.ids(), vec![expected_id(&src)]);
    // The daemon linked the spool file into its store; the mount only
    // unlinked its name, so the task's bytes are intact.
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "spool files left"
    );
    let out = root.path().join("out.bin");
    daemon.ok(&[
        "export",
        "--transfer-from-dfdaemon",
        &expected_id(&src),
        "-O",
        out.to_str().unwrap(),
    ]);
    assert!(same_bytes(&src, &out));
}
