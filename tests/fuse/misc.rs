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
    assert_eq!(errno(std::fs::create_dir(m.import("d"))), EPERM);
    assert_eq!(errno(std::fs::create_dir(m.path("tasks/d"))), EPERM);
    assert_eq!(
        errno(std::os::unix::fs::symlink("/etc", m.import("l"))),
        EPERM
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
