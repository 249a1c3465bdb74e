//! `dfcache mount` by a user who is not root, through fusermount3: the
//! files are that user's, other users (root included) are kept out unless
//! `--allow-other`, and then the kernel holds them to `--file-mode` and
//! `--dir-mode` (default_permissions); on root's `--legacy` daemon, the
//! mount's imports and reads go through with the user's rights. Each test
//! creates its own user and removes it, also on failure.

use std::path::Path;
use std::process::Command;

use crate::common::user::{as_ids, ok_as, sh_as, TestUser};
use crate::common::*;
use crate::harness::*;

/// The user everyone else is: nobody, who is in no group of the test user.
const OTHER: (u32, u32) = (65534, 65534);

/// Insists `script` failed as `prefix`'s user with "Permission denied".
fn refused_as(prefix: &[String], script: &str) {
    let out = sh_as(prefix, script);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Permission denied"),
        "`{script}` as {prefix:?} was not refused: {err}"
    );
}

/// A test directory the user owns, with the mount point in it (fusermount3
/// mounts only where the user may write).
fn home_of(user: &TestUser) -> tempfile::TempDir {
    let dir = tempdir();
    std::fs::create_dir(dir.path().join("mnt")).unwrap();
    sh_ok(&format!(
        "chown -R {}:{} {}",
        user.uid,
        user.gid,
        q(dir.path())
    ));
    dir
}

/// /dev/fuse open to all (mode 0666), as the kernel creates it on a
/// normal machine, while any test here needs it: containers (this CI's
/// included) may make it 0600, and fuser opens it before it falls back to
/// fusermount3. The last guard dropped puts the old mode back.
struct DevFuseOpen;

static DEV_FUSE: std::sync::Mutex<(usize, Option<String>)> = std::sync::Mutex::new((0, None));

impl DevFuseOpen {
    fn hold() -> DevFuseOpen {
        let mut held = DEV_FUSE.lock().unwrap_or_else(|p| p.into_inner());
        if held.0 == 0 {
            held.1 = Some(sh_ok("stat -c %a /dev/fuse"));
            sh_ok("chmod 0666 /dev/fuse");
        }
        held.0 += 1;
        DevFuseOpen
    }
}

impl Drop for DevFuseOpen {
    fn drop(&mut self) {
        let mut held = DEV_FUSE.lock().unwrap_or_else(|p| p.into_inner());
        held.0 -= 1;
        if held.0 == 0 {
            if let Some(mode) = held.1.take() {
                let _ = Command::new("chmod").arg(mode).arg("/dev/fuse").status();
            }
        }
    }
}

/// Imports a small file as the mounting user; returns its task id.
fn import_as(user: &TestUser, m: &Mounted, root: &Path) -> String {
    let src = root.join("src");
    write_file(&src, 100_000, 9);
    sh_ok(&format!("chown {} {}", user.uid, q(&src)));
    ok_as(
        &user.prefix(),
        &format!("cp {} {}", q(&src), q(&m.import("f"))),
    );
    ok_as(
        &user.prefix(),
        &format!(
            "getfattr --only-values -n user.dfcache.task_id {}",
            q(&m.import("f"))
        ),
    )
}

#[test]
fn a_user_mounts_without_root_and_only_that_user_gets_in() {
    let _dev = DevFuseOpen::hold();
    let user = TestUser::create();
    let root = home_of(&user);
    let store = root.path().join("store");
    let m = Mounted::start_as(
        &user.prefix(),
        &root.path().join("mnt"),
        &["--embedded", store.to_str().unwrap()],
    );
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(m.mnt.to_str().unwrap()))
        .expect("listed in /proc/mounts");
    assert!(line.contains(&format!("user_id={}", user.uid)), "{line}");
    assert!(!line.contains("default_permissions"), "{line}");

    let id = import_as(&user, &m, root.path());
    let me = user.prefix();
    let task = q(&m.task(&id));
    assert_eq!(
        ok_as(&me, &format!("stat -c %u:%g:%a {task}")),
        format!("{}:{}:444", user.uid, user.gid)
    );
    assert_eq!(
        ok_as(&me, &format!("stat -c %a {}", q(&m.path("import")))),
        "755"
    );
    assert_eq!(
        ok_as(&me, &format!("cat {task} | sha256sum | cut -c1-64")),
        sh_ok(&format!(
            "sha256sum {} | cut -c1-64",
            q(&root.path().join("src"))
        ))
    );
    // Without --allow-other the kernel turns everyone else away, root too.
    refused_as(
        &as_ids(OTHER.0, OTHER.1),
        &format!("ls {}", q(&m.path("tasks"))),
    );
    let by_root = std::fs::read_dir(m.path("tasks")).map(|_| ()).unwrap_err();
    assert_eq!(by_root.kind(), std::io::ErrorKind::PermissionDenied);
}

/// `user_allow_other` in /etc/fuse.conf for as long as it lives (what
/// docs/SEMANTICS.md tells users to add); the file is put back as it was.
struct AllowOther {
    was: Option<String>,
}

impl AllowOther {
    fn enable() -> AllowOther {
        let path = "/etc/fuse.conf";
        let was = std::fs::read_to_string(path).ok();
        let enabled = was
            .as_deref()
            .is_some_and(|c| c.lines().any(|l| l.trim() == "user_allow_other"));
        if !enabled {
            let mut text = was.clone().unwrap_or_default();
            text.push_str("\nuser_allow_other\n");
            std::fs::write(path, text).expect("write /etc/fuse.conf");
        }
        AllowOther { was }
    }
}

impl Drop for AllowOther {
    fn drop(&mut self) {
        let path = "/etc/fuse.conf";
        let _ = match &self.was {
            Some(text) => std::fs::write(path, text),
            None => std::fs::remove_file(path),
        };
    }
}

#[test]
fn allow_other_lets_other_users_in_as_far_as_the_modes_say() {
    let _dev = DevFuseOpen::hold();
    let user = TestUser::create();
    let _allow = AllowOther::enable();
    let other = as_ids(OTHER.0, OTHER.1);
    let root = home_of(&user);
    let store = root.path().join("store");
    let mnt = root.path().join("mnt");
    // nobody must reach the mount point through the test directory.
    sh_ok(&format!("chmod 755 {}", q(root.path())));

    // Defaults: tasks readable by all, import/ writable by its owner.
    let id = {
        let m = Mounted::start_as(
            &user.prefix(),
            &mnt,
            &["--embedded", store.to_str().unwrap(), "--allow-other"],
        );
        let id = import_as(&user, &m, root.path());
        ok_as(&other, &format!("cat {} > /dev/null", q(&m.task(&id))));
        refused_as(&other, &format!("echo x > {}", q(&m.import("theirs"))));
        id
    };

    // --file-mode 0400 keeps nobody from reading tasks; --dir-mode 0777
    // lets nobody import, and the import is theirs.
    {
        let m = Mounted::start_as(
            &user.prefix(),
            &mnt,
            &[
                "--embedded",
                store.to_str().unwrap(),
                "--allow-other",
                "--file-mode",
                "0400",
                "--dir-mode",
                "0777",
            ],
        );
        refused_as(&other, &format!("cat {}", q(&m.task(&id))));
        ok_as(
            &user.prefix(),
            &format!("cat {} > /dev/null", q(&m.task(&id))),
        );
        ok_as(&other, &format!("echo theirs > {}", q(&m.import("theirs"))));
        assert_eq!(
            ok_as(&other, &format!("stat -c %u {}", q(&m.import("theirs")))),
            OTHER.0.to_string()
        );
    }

    // --uid/--gid give the files to someone else: nobody's group may read.
    let m = Mounted::start_as(
        &user.prefix(),
        &mnt,
        &[
            "--embedded",
            store.to_str().unwrap(),
            "--allow-other",
            "--uid",
            "0",
            "--gid",
            &OTHER.1.to_string(),
            "--file-mode",
            "0440",
        ],
    );
    assert_eq!(
        ok_as(&other, &format!("stat -c %u:%g:%a {}", q(&m.task(&id)))),
        format!("0:{}:440", OTHER.1)
    );
    ok_as(&other, &format!("cat {} > /dev/null", q(&m.task(&id))));
    refused_as(&user.prefix(), &format!("cat {}", q(&m.task(&id))));
}

#[test]
fn a_users_mount_on_roots_legacy_daemon_imports_and_reads_with_the_users_rights() {
    let _dev = DevFuseOpen::hold();
    let user = TestUser::create();
    let root = home_of(&user);
    // Root's daemon, on a socket anyone may reach.
    let daemon_root = tempdir();
    sh_ok(&format!("chmod 755 {}", q(daemon_root.path())));
    let daemon = Daemon::start_with(daemon_root.path(), &["--legacy", "--socket-mode", "0666"]);
    let spool = root.path().join("spool");
    ok_as(&user.prefix(), &format!("mkdir {}", q(&spool)));
    let m = Mounted::start_as(
        &user.prefix(),
        &root.path().join("mnt"),
        &[
            "-e",
            daemon.socket.to_str().unwrap(),
            "--spool",
            spool.to_str().unwrap(),
        ],
    );
    // The spool file is uploaded by path, and the daemon opens it as the
    // user.
    let id = import_as(&user, &m, root.path());
    let src = root.path().join("src");
    assert_eq!(id, expected_id(&src));
    assert_eq!(daemon.ids(), vec![id.clone()]);
    // The daemon will not hard-link its content file into the user's
    // spool: the mount downloads the content instead, and reads it back.
    let me = user.prefix();
    ok_as(&me, &format!("cmp {} {}", q(&src), q(&m.task(&id))));
    // Nothing of the daemon's is left in the user's spool.
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
}
