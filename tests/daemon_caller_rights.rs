//! The daemon reads and writes a path for a caller with that caller's
//! rights, never its own: a root daemon on a socket open to everyone
//! (`dfcache serve --socket-mode 0666`), driven by a second user (made with
//! `useradd`, removed afterwards) through the real CLI (`setpriv`) and
//! through raw gRPC connections made as that user.

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use tonic::Code;

use common::user::{chown, TestUser};
use common::*;
use dfcache_wire::pb::dfdaemon::dfdaemon_download_client::DfdaemonDownloadClient;
use dfcache_wire::pb::dfdaemon::*;

type Raw = DfdaemonDownloadClient<tonic::transport::Channel>;

/// A root daemon any user can reach, a test user, and what they play
/// with: a file only root may read, a directory only root may write, and
/// a directory of the user's own.
struct Fixture {
    rt: tokio::runtime::Runtime,
    user: TestUser,
    daemon: Daemon,
    /// The user's own directory (mode 0700).
    home: tempfile::TempDir,
    /// Mode 0600, root's.
    secret: PathBuf,
    /// Mode 0755, root's: the user may look but not write.
    locked: PathBuf,
    root_dir: tempfile::TempDir,
}

impl Fixture {
    fn new(extra: &[&str]) -> Fixture {
        let root = tempdir();
        // The user must reach the socket, and the secret (to be refused).
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut args = vec!["--socket-mode", "0666"];
        args.extend_from_slice(extra);
        let daemon = Daemon::start_with(root.path(), &args);
        let secret = root.path().join("shadow");
        std::fs::write(&secret, b"root:$6$hash-only-root-may-read:19000::::::\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let locked = root.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        let user = TestUser::create();
        let home = user.own_dir();
        Fixture {
            rt: tokio::runtime::Runtime::new().unwrap(),
            user,
            daemon,
            home,
            secret,
            locked,
            root_dir: root,
        }
    }

    fn home(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    /// A name in root's directory (mode 0755).
    fn root(&self, name: &str) -> PathBuf {
        self.root_dir.path().join(name)
    }

    /// A file of `len` seeded bytes in the user's directory, theirs.
    fn users_file(&self, name: &str, len: u64, seed: u64) -> PathBuf {
        let path = self.home(name);
        write_file(&path, len, seed);
        chown(&path, self.user.uid, self.user.gid);
        path
    }

    /// `dfcache ARGS --no-progress` as `user`, on the daemon.
    fn cli_as(&self, user: &TestUser, args: &[&str]) -> Output {
        let prefix = user.prefix();
        Command::new(&prefix[0])
            .args(&prefix[1..])
            .arg(bin())
            .args(args)
            .arg("--no-progress")
            .env("DFCACHE_ENDPOINT", &self.daemon.socket)
            .output()
            .expect("run dfcache as the user")
    }

    fn ok_as(&self, user: &TestUser, args: &[&str]) -> String {
        succeeded(
            &self.cli_as(user, args),
            format_args!("dfcache {args:?} as {}", user.name),
        )
    }

    /// A raw gRPC client whose connections are `user`'s, with `groups`.
    fn raw_as(&self, user: &TestUser, groups: &[u32]) -> Raw {
        let _entered = self.rt.enter();
        DfdaemonDownloadClient::new(user.channel(&self.daemon.socket, groups))
    }

    fn upload(&self, raw: &Raw, path: &Path) -> Result<String, tonic::Status> {
        let mut raw = raw.clone();
        let req = UploadPersistentCacheTaskRequest {
            path: path.to_string_lossy().into_owned(),
            ..Default::default()
        };
        self.rt
            .block_on(raw.upload_persistent_cache_task(req))
            .map(|r| r.into_inner().id)
    }

    /// A download to `output`, drained; the status it ended with.
    fn download(
        &self,
        raw: &Raw,
        id: &str,
        output: &Path,
        hard_link: bool,
    ) -> Result<(), tonic::Status> {
        let mut raw = raw.clone();
        let req = DownloadPersistentCacheTaskRequest {
            task_id: id.to_string(),
            output_path: Some(output.to_string_lossy().into_owned()),
            force_hard_link: hard_link,
            ..Default::default()
        };
        self.rt.block_on(async {
            let mut stream = raw.download_persistent_cache_task(req).await?.into_inner();
            while let Some(item) = stream.next().await {
                item?;
            }
            Ok(())
        })
    }

    /// What the locked directory holds and when it last changed: a file
    /// created and removed again there shows in the time.
    fn locked_state(&self) -> (Vec<String>, i64, i64) {
        let meta = std::fs::metadata(&self.locked).unwrap();
        (names_in(&self.locked), meta.mtime(), meta.mtime_nsec())
    }

    /// Nothing stored, nothing half-written.
    fn assert_store_empty(&self) {
        assert!(self.daemon.ids().is_empty(), "{:?}", self.daemon.ids());
        assert!(
            self.daemon.leftovers().is_empty(),
            "{:?}",
            self.daemon.leftovers()
        );
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn owner(path: &Path) -> (u32, u32) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    (meta.uid(), meta.gid())
}

/// Insists the CLI failed with the daemon's PERMISSION_DENIED naming `path`.
fn refused_naming(out: &Output, path: &Path) -> String {
    let err = failure(out);
    assert!(
        err.contains("permission denied") && err.contains(&path.display().to_string()),
        "not a refusal naming {}: {err}",
        path.display()
    );
    err
}

fn assert_denied(result: Result<impl std::fmt::Debug, tonic::Status>, path: &Path) {
    let status = result.expect_err("the daemon did it");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains(&path.display().to_string()),
        "the message does not name {}: {status:?}",
        path.display()
    );
}

/// A name in /etc for this test, removed on drop: if the daemon ever wrote
/// there, the test fails and the file still goes.
struct InEtc(PathBuf);

impl InEtc {
    fn new(what: &str) -> InEtc {
        InEtc(PathBuf::from(format!(
            "/etc/dfcache-{what}-{}",
            std::process::id()
        )))
    }
}

impl Drop for InEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Swaps two names atomically (`renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) {
    let (a, b) = (
        CString::new(a.as_os_str().as_bytes()).unwrap(),
        CString::new(b.as_os_str().as_bytes()).unwrap(),
    );
    // SAFETY: two NUL-terminated paths, alive for the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
}

/// Swaps `a` and `b` over and over on a thread of its own until dropped.
struct Swapper {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Swapper {
    fn start(a: PathBuf, b: PathBuf) -> Swapper {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut swaps = 0;
            while !flag.load(Ordering::Relaxed) {
                exchange(&a, &b);
                swaps += 1;
                std::thread::yield_now();
            }
            swaps
        });
        Swapper {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops swapping; how many swaps were made.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Swapper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Attempts of a race before it is given up as not exercised.
const RACE_ATTEMPTS: usize = 3000;
/// Each outcome a race must have seen this often to count as exercised.
const RACE_EACH_OUTCOME: usize = 20;

#[test]
fn a_path_import_of_a_file_the_caller_cannot_read_is_refused_and_stores_nothing() {
    let f = Fixture::new(&[]);
    let user = &f.user;
    for secret in [f.secret.as_path(), Path::new("/etc/shadow")] {
        if !secret.exists() {
            continue;
        }
        let out = f.cli_as(user, &["import", &secret.to_string_lossy()]);
        refused_naming(&out, secret);
        assert!(out.stdout.is_empty());
        f.assert_store_empty();
    }
    // A symlink of the user's own to it: the CLI resolves it and sends the
    // target; a raw client sends the link itself, which the daemon follows
    // as the user.
    let link = f.home("innocent");
    std::os::unix::fs::symlink(&f.secret, &link).unwrap();
    chown(&link, user.uid, user.gid);
    refused_naming(
        &f.cli_as(user, &["import", &link.to_string_lossy()]),
        &f.secret,
    );
    let raw = f.raw_as(user, &[]);
    assert_denied(f.upload(&raw, &link), &link);
    f.assert_store_empty();
    // And streaming it is the user's own read, refused by the kernel.
    let out = f.cli_as(user, &["import", "--stream-mode", &link.to_string_lossy()]);
    assert!(failure(&out).contains("Permission denied"));
    f.assert_store_empty();
}

#[test]
fn a_callers_supplementary_groups_count_and_no_others() {
    let f = Fixture::new(&[]);
    // Root's file, readable by a group the user is not in.
    let group = TestUser::create();
    let shared = f.root("group-file");
    write_file(&shared, 5000, 3);
    chown(&shared, 0, group.gid);
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o640)).unwrap();

    let without = f.raw_as(&f.user, &[]);
    assert_denied(f.upload(&without, &shared), &shared);
    f.assert_store_empty();
    let with = f.raw_as(&f.user, &[group.gid]);
    let id = f.upload(&with, &shared).expect("a group member reads it");
    assert_eq!(id, expected_id(&shared));
}

#[test]
fn an_export_where_the_caller_cannot_write_is_refused_and_creates_nothing() {
    let f = Fixture::new(&[]);
    let user = &f.user;
    let mine = f.users_file("mine", 3 * MIB + 17, 1);
    let id = f.ok_as(user, &["import", &mine.to_string_lossy()]);
    assert_eq!(id, expected_id(&mine));
    let raw = f.raw_as(user, &[]);

    // Into root's directory.
    let before = f.locked_state();
    let evil = f.locked.join("evil");
    refused_naming(
        &f.cli_as(user, &["export", &id, "-O", &evil.to_string_lossy()]),
        &evil,
    );
    assert_denied(f.download(&raw, &id, &evil, false), &evil);
    assert_eq!(
        f.locked_state(),
        before,
        "something was written in root's directory"
    );

    // Through a directory symlink of the user's own into /etc: the CLI
    // resolves it, a raw client sends it as it is.
    let etc = InEtc::new("evil");
    let to_etc = f.home("etc");
    std::os::unix::fs::symlink("/etc", &to_etc).unwrap();
    chown(&to_etc, user.uid, user.gid);
    let through = to_etc.join(etc.0.file_name().unwrap());
    refused_naming(
        &f.cli_as(user, &["export", &id, "-O", &through.to_string_lossy()]),
        &etc.0,
    );
    assert_denied(f.download(&raw, &id, &through, false), &through);
    assert!(!etc.0.exists(), "the daemon wrote into /etc");

    // Over root's file in a sticky directory the user may write (as /tmp):
    // the rename is the user's, and the kernel refuses it.
    let sticky = f.root("sticky");
    std::fs::create_dir(&sticky).unwrap();
    std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let victim = sticky.join("victim");
    std::fs::write(&victim, b"root's").unwrap();
    let out = f.cli_as(
        user,
        &[
            "export",
            &id,
            "--overwrite",
            "-O",
            &victim.to_string_lossy(),
        ],
    );
    refused_naming(&out, &victim);
    assert_eq!(std::fs::read(&victim).unwrap(), b"root's");
    assert_eq!(names_in(&sticky), ["victim"], "a temporary file was left");

    // A hard link to the stored content, even into the user's own directory.
    let linked = f.home("linked");
    assert_denied(f.download(&raw, &id, &linked, true), &linked);
    assert!(!linked.exists());
    assert_eq!(names_in(f.home.path()), ["etc", "mine"]);
}

#[test]
fn a_path_swapped_for_a_symlink_at_any_moment_never_lets_the_caller_past_its_rights() {
    let f = Fixture::new(&[]);
    let user = &f.user;
    let raw = f.raw_as(user, &[]);

    // Import: the path is the user's file one moment and a symlink to the
    // secret the next.
    let path = f.users_file("swapped", 10_000, 2);
    let content = std::fs::read(&path).unwrap();
    let mine = expected_id(&path);
    let other = f.home("other");
    std::os::unix::fs::symlink(&f.secret, &other).unwrap();
    chown(&other, user.uid, user.gid);
    let swapper = Swapper::start(path.clone(), other.clone());
    let (mut stored, mut refused) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    for _ in 0..RACE_ATTEMPTS {
        match f.upload(&raw, &path) {
            Ok(id) => {
                assert_eq!(id, mine, "a task of other content was stored");
                stored += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
                refused += 1;
            }
        }
        if (stored >= RACE_EACH_OUTCOME && refused >= RACE_EACH_OUTCOME)
            || Instant::now() > deadline
        {
            break;
        }
    }
    let swaps = swapper.stop();
    assert!(
        stored >= RACE_EACH_OUTCOME && refused >= RACE_EACH_OUTCOME,
        "the race was not exercised: {stored} stored, {refused} refused, {swaps} swaps"
    );
    assert_eq!(f.daemon.ids(), vec![mine.clone()]);
    assert!(f.daemon.leftovers().is_empty());

    // Export: the output's directory is the user's one moment and a
    // symlink to root's directory the next.
    let before = f.locked_state();
    let dir = f.home("out");
    std::fs::create_dir(&dir).unwrap();
    chown(&dir, user.uid, user.gid);
    let link = f.home("out-link");
    std::os::unix::fs::symlink(&f.locked, &link).unwrap();
    chown(&link, user.uid, user.gid);
    let swapper = Swapper::start(dir.clone(), link.clone());
    let (mut written, mut refused) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..RACE_ATTEMPTS {
        match f.download(&raw, &mine, &dir.join(format!("f{i}")), false) {
            Ok(()) => written += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
                refused += 1;
            }
        }
        if (written >= RACE_EACH_OUTCOME && refused >= RACE_EACH_OUTCOME)
            || Instant::now() > deadline
        {
            break;
        }
    }
    let swaps = swapper.stop();
    assert!(
        written >= RACE_EACH_OUTCOME && refused >= RACE_EACH_OUTCOME,
        "the race was not exercised: {written} written, {refused} refused, {swaps} swaps"
    );
    assert_eq!(
        f.locked_state(),
        before,
        "something was written in root's directory"
    );
    // Whichever name the directory has now, it holds every export made,
    // each whole and the user's.
    let real = if std::fs::symlink_metadata(&dir).unwrap().is_dir() {
        dir
    } else {
        link
    };
    let exports = names_in(&real);
    assert_eq!(exports.len(), written);
    for name in exports {
        let export = real.join(&name);
        assert_eq!(owner(&export), (user.uid, user.gid), "{name}");
        assert!(std::fs::read(&export).unwrap() == content, "{name}");
    }
}

#[test]
fn the_callers_own_files_import_and_export_as_before_and_the_export_is_theirs() {
    let f = Fixture::new(&[]);
    let user = &f.user;
    let mine = f.users_file("mine", 5 * MIB + 3, 4);
    let id = expected_id(&mine);

    // By path: the daemon reads and writes as the user.
    assert_eq!(f.ok_as(user, &["import", &mine.to_string_lossy()]), id);
    let out = f.home("out");
    f.ok_as(user, &["export", &id, "-O", &out.to_string_lossy()]);
    assert!(same_bytes(&mine, &out));
    assert_eq!(owner(&out), (user.uid, user.gid));
    // Over the user's own file, with --overwrite.
    std::fs::write(&out, b"old").unwrap();
    chown(&out, user.uid, user.gid);
    f.ok_as(
        user,
        &["export", &id, "--overwrite", "-O", &out.to_string_lossy()],
    );
    assert!(same_bytes(&mine, &out));
    assert_eq!(owner(&out), (user.uid, user.gid));
    assert_eq!(names_in(f.home.path()), ["mine", "out"]);

    // Streaming: unchanged (the user's CLI reads and writes the files).
    let streamed = f.home("streamed");
    assert_eq!(
        f.ok_as(user, &["import", "--stream-mode", &mine.to_string_lossy()]),
        id
    );
    f.ok_as(
        user,
        &[
            "export",
            "--stream-mode",
            &id,
            "-O",
            &streamed.to_string_lossy(),
        ],
    );
    assert!(same_bytes(&mine, &streamed));
    assert_eq!(owner(&streamed), (user.uid, user.gid));

    // Root: unchanged, the daemon's own rights.
    let secret_id = f.daemon.ok(&["import", &f.secret.to_string_lossy()]);
    assert_eq!(secret_id, expected_id(&f.secret));
    let roots = f.locked.join("roots");
    f.daemon
        .ok(&["export", &secret_id, "-O", &roots.to_string_lossy()]);
    assert!(same_bytes(&f.secret, &roots));
    assert_eq!(owner(&roots), (0, 0));
    let mut ids = f.daemon.ids();
    ids.sort();
    let mut expected = vec![id, secret_id];
    expected.sort();
    assert_eq!(ids, expected);
}

#[test]
fn under_legacy_a_caller_gets_copies_and_root_still_gets_links() {
    let f = Fixture::new(&["--legacy"]);
    let user = &f.user;
    let mine = f.users_file("mine", 3 * MIB, 5);
    let id = f.ok_as(user, &["import", &mine.to_string_lossy()]);
    assert_eq!(id, expected_id(&mine));
    // Copied, not linked: the user's file is no name of the stored task.
    assert_eq!(std::fs::metadata(&mine).unwrap().nlink(), 1);
    let out = f.home("out");
    f.ok_as(user, &["export", &id, "-O", &out.to_string_lossy()]);
    assert!(same_bytes(&mine, &out));
    let meta = std::fs::metadata(&out).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.nlink()),
        (user.uid, user.gid, 1)
    );

    // Root's import and export link, as a released dfdaemon's do.
    let roots = f.locked.join("source");
    write_file(&roots, 3 * MIB, 6);
    let root_id = f.daemon.ok(&["import", &roots.to_string_lossy()]);
    assert_eq!(std::fs::metadata(&roots).unwrap().nlink(), 2);
    let exported = f.locked.join("exported");
    f.daemon
        .ok(&["export", &root_id, "-O", &exported.to_string_lossy()]);
    assert_eq!(
        std::fs::metadata(&exported).unwrap().ino(),
        std::fs::metadata(&roots).unwrap().ino()
    );
}

#[test]
fn a_warm_up_touches_no_path_so_any_caller_warms_and_checks_any_task() {
    let f = Fixture::new(&[]);
    let user = &f.user;
    // Imported by root from files and a directory the user cannot read.
    let secret_id = f.daemon.ok(&["import", &f.secret.to_string_lossy()]);
    let model = f.locked.join("model");
    common::tree::make_tree(&model, 5);
    std::fs::set_permissions(&model, std::fs::Permissions::from_mode(0o700)).unwrap();
    let tree = f.daemon.ok(&["import", "-r", &model.to_string_lossy()]);
    let stored = {
        let mut ids = f.daemon.ids();
        ids.sort();
        ids
    };
    let before = f.locked_state();

    let warmed = f.ok_as(user, &["warmup", &secret_id]);
    assert!(warmed.starts_with("1 task local"), "{warmed}");
    let warmed = f.ok_as(user, &["warmup", "-r", &tree]);
    assert!(warmed.contains("tasks local"), "{warmed}");
    let checked = f.ok_as(user, &["warmup", "-r", "--check", &tree]);
    assert!(
        checked.lines().any(|l| l.starts_with("total:")),
        "{checked}"
    );

    // Nothing written anywhere: the store holds what it held, root's
    // directory is untouched, the user's has only what it had.
    let mut ids = f.daemon.ids();
    ids.sort();
    assert_eq!(ids, stored);
    assert!(
        f.daemon.leftovers().is_empty(),
        "{:?}",
        f.daemon.leftovers()
    );
    assert_eq!(f.locked_state(), before);
    assert!(names_in(f.home.path()).is_empty());
}

#[test]
fn a_task_is_deleted_by_root_or_by_a_uid_that_imported_it() {
    let f = Fixture::new(&[]);
    let (a, b) = (&f.user, TestUser::create());
    let theirs = f.users_file("a", 100_000, 7);
    std::fs::set_permissions(f.home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let id = f.ok_as(a, &["import", "--stream-mode", &theirs.to_string_lossy()]);

    let err = failure(&f.cli_as(&b, &["rm", &id]));
    assert!(
        err.contains("permission denied") && err.contains(&id) && err.contains(&b.uid.to_string()),
        "{err}"
    );
    assert_eq!(f.daemon.ids(), vec![id.clone()]);
    // Importing the same content makes b an importer too.
    assert_eq!(
        f.ok_as(&b, &["import", "--stream-mode", &theirs.to_string_lossy()]),
        id
    );
    f.ok_as(&b, &["rm", &id]);
    assert!(f.daemon.ids().is_empty());

    // A task root imported is root's to delete.
    let roots = f.daemon.ok(&["import", &f.secret.to_string_lossy()]);
    assert!(failure(&f.cli_as(a, &["rm", &roots])).contains("permission denied"));
    let again = f.ok_as(a, &["import", "--stream-mode", &theirs.to_string_lossy()]);
    f.daemon.ok(&["rm", &again, &roots]);
    assert!(f.daemon.ids().is_empty());
}

// ---- the pieces: credentials of a connection, acting as a caller ----

/// Fields of `/proc/thread-self/status` for the calling thread.
fn thread_status(fields: &[&str]) -> Vec<String> {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    fields
        .iter()
        .map(|field| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{field}:")))
                .unwrap_or_else(|| panic!("no {field} in {status}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[test]
fn a_connections_caller_is_the_connecting_threads_uid_gid_pid_and_groups() {
    let dir = tempdir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("s.sock");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        for groups in [vec![], vec![11, 22, 33], (1000..1100).collect::<Vec<u32>>()] {
            let (s, g) = (socket.clone(), groups.clone());
            let client = tokio::task::spawn_blocking(move || {
                common::user::connect_as(&s, 4321, 8765, &g).unwrap()
            });
            let (stream, _) = listener.accept().await.unwrap();
            let caller = dfcache_daemon::caller::Caller::of(&stream).unwrap();
            assert_eq!((caller.uid, caller.gid), (4321, 8765));
            assert_eq!(caller.pid, Some(std::process::id() as i32));
            assert_eq!(&caller.groups[..], &groups[..]);
            drop(client.await.unwrap());
        }
    });
}

#[test]
fn acting_as_a_caller_changes_that_one_thread_and_only_for_the_operation() {
    use dfcache_daemon::caller::{Acting, ActingError, Caller};
    let dir = tempdir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"root's").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let caller = Caller {
        uid: 4321,
        gid: 8765,
        pid: None,
        groups: vec![555, 556].into(),
    };
    let before = thread_status(&["Uid", "Gid", "Groups", "CapEff"]);
    assert!(Acting::for_caller(&Caller {
        uid: 0,
        ..caller.clone()
    })
    .is_daemon());
    let acting = Acting::for_caller(&caller);
    assert!(!acting.is_daemon());

    let (theirs, s) = (dir.path().join("theirs"), secret.clone());
    let (inside, read_secret) = acting
        .run_blocking(move || {
            std::fs::write(&theirs, b"x").unwrap();
            (
                thread_status(&["Uid", "Gid", "Groups", "CapEff"]),
                std::fs::read(&s).map_err(|e| e.kind()),
            )
        })
        .unwrap();
    // Real, effective and saved ids untouched; the file-system ones the
    // caller's; no capability in effect.
    assert_eq!(
        inside,
        ["0 0 0 4321", "0 0 0 8765", "555 556", "0000000000000000"]
    );
    assert_eq!(read_secret, Err(std::io::ErrorKind::PermissionDenied));
    assert_eq!(owner(&dir.path().join("theirs")), (4321, 8765));

    // This thread, a new one, and what they create: still root.
    assert_eq!(thread_status(&["Uid", "Gid", "Groups", "CapEff"]), before);
    let fresh = std::thread::spawn(|| thread_status(&["Uid", "Gid", "Groups", "CapEff"]));
    assert_eq!(fresh.join().unwrap(), before);
    std::fs::write(dir.path().join("mine"), b"y").unwrap();
    assert_eq!(owner(&dir.path().join("mine")), (0, 0));

    // The async form, on a runtime.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = secret.clone();
    let read = rt.block_on(acting.run(move || std::fs::read(&s).map_err(|e| e.kind())));
    assert_eq!(read.unwrap(), Err(std::io::ErrorKind::PermissionDenied));

    // A daemon that is not root cannot take on another uid's rights: the
    // operation is refused, not run with the daemon's.
    let refused = std::thread::spawn(move || {
        // SAFETY: raw calls, this thread alone; it ends with the test.
        let dropped = unsafe {
            libc::syscall(libc::SYS_setresgid, 1234, 1234, 1234) == 0
                && libc::syscall(libc::SYS_setresuid, 1234, 1234, 1234) == 0
        };
        assert!(dropped, "{}", std::io::Error::last_os_error());
        acting.run_blocking(|| "ran")
    });
    match refused.join().unwrap() {
        Err(ActingError::CannotAssume {
            uid: 4321,
            daemon_uid: 1234,
            ..
        }) => {}
        other => panic!("not refused: {other:?}"),
    }
}
