//! Everything else a user might try gets a sensible errno, and df works.

use crate::common::*;
use crate::harness::*;

#[test]
fn unsupported_operations_get_sensible_errnos() {
    let root = tempdir();
    let m = Mounted::embedded(root.path(), &[]);
    let src = root.path().join("src.bin");
    write_file(&src, 1000, 1);
    sh_ok(&format!("cp {} {}", q(&src), q(&m.import("f"))));
    let id = task_id_xattr(&m.import("f"));
    let errno = |r: std::io::Result<()>| r.unwrap_err().raw_os_error().unwrap();
    const EPERM: i32 = 1;
    const EACCES: i32 = 13;
    const EXDEV: i32 = 18;
    // Directories and links are for trees, in import/ only.
    assert_eq!(errno(std::fs::create_dir(m.path("tasks/d"))), EACCES);
    assert_eq!(errno(std::fs::create_dir(m.path("d"))), EACCES);
    assert_eq!(
        errno(std::os::unix::fs::symlink("/etc", m.path("tasks/l"))),
        EACCES
    );
    assert_eq!(
        errno(std::fs::hard_link(m.import("f"), m.import("h"))),
        EPERM
    );
    assert_eq!(errno(std::fs::write(m.path("tasks/new"), b"x")), EACCES);
    assert_eq!(errno(std::fs::write(m.path("new"), b"x")), EACCES);
    assert_eq!(errno(std::fs::write(m.task(&id), b"x")), EACCES);
    assert_eq!(errno(std::fs::remove_file(m.task(&id))), EACCES);
    assert_eq!(
        errno(std::fs::rename(m.import("f"), m.path("tasks/f"))),
        EXDEV
    );
    // A finished import is not appendable.
    let append = std::fs::OpenOptions::new()
        .append(true)
        .open(m.import("f"))
        .map(|_| ());
    assert_eq!(errno(append), EACCES);
    // The task is still intact.
    assert!(same_bytes(&src, &m.task(&id)));
    let df = sh_ok(&format!("df {}", q(&m.mnt)));
    assert!(df.contains("dfcache"), "{df}");
    let stat = sh_ok(&format!("stat -f -c %T {}", q(&m.mnt)));
    assert!(stat.contains("fuse"), "{stat}");
}

/// `df` in bytes: (used, available) for `path`'s file system.
fn df(path: &std::path::Path) -> (u64, u64) {
    let out = sh_ok(&format!("df -B1 --output=used,avail {}", q(path)));
    let line = out.lines().nth(1).unwrap_or_else(|| panic!("df: {out}"));
    let mut fields = line.split_whitespace().map(|f| f.parse::<u64>().unwrap());
    (fields.next().unwrap(), fields.next().unwrap())
}

#[test]
fn df_reports_the_free_space_imports_land_on() {
    // Embedded daemon: the free space of the store's disk, which python's
    // shutil.disk_usage (what downloaders check) sees too. The store has a
    // disk of its own (a 256 MiB tmpfs), so that no other writer on the
    // machine moves its free space between the two readings.
    let root = tempdir();
    let store_disk = Tmpfs::mount(root.path().join("store"), "256m");
    let m = Mounted::embedded(root.path(), &[]);
    let (_, store_free) = df(&store_disk.0);
    assert!(store_free <= 256 * MIB, "{store_free}");
    let (used, free) = df(&m.mnt);
    assert_eq!(used, 0);
    assert_eq!(free, store_free);
    let py = python(
        "import shutil, sys; print(shutil.disk_usage(sys.argv[1]).free)",
        &[&m.mnt.to_string_lossy()],
    );
    let py_free: u64 = succeeded(&py, "python disk_usage").parse().unwrap();
    assert_eq!(py_free, store_free);
    drop(m);

    // A spool (on a 64 MiB tmpfs): its free space, exactly.
    let root = tempdir();
    let spool = Tmpfs::mount(root.path().join("spool"), "64m");
    let daemon = Daemon::start(&root.path().join("daemon"));
    let spooled = Mounted::on(
        &daemon,
        root.path(),
        &["--spool", &spool.0.to_string_lossy()],
    );
    assert_eq!(df(&spooled.mnt).1, df(&spool.0).1);
    assert!(df(&spooled.mnt).1 <= 64 * MIB);
    drop(spooled);

    // A daemon fed over its socket, no spool: free space unknown, reported
    // as 1 PiB so that nothing refuses; used is the tasks' bytes.
    let other = tempdir();
    let m = Mounted::on(&daemon, other.path(), &[]);
    let src = other.path().join("src.bin");
    write_file(&src, 5000, 2);
    sh_ok(&format!("cp {} {}", q(&src), q(&m.import("f"))));
    assert_eq!(df(&m.mnt), (8192, 1 << 50));
}
