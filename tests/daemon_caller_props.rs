//! Property tests of what a peer that is not root may send: arbitrary path
//! fields on every RPC that takes one, and arbitrary bytes on the
//! short-read channel. The daemon runs in this process, as root, on a
//! socket open to everyone (mode 0666); the peer is a user made for the
//! test, every connection made as that user (`common::user::connect_as`).
//! No handler panics, every answer is the one the caller's rights allow,
//! and no file outside them is read, created or changed.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tokio_stream::StreamExt;
use tonic::Code;

use common::inproc::{write_bytes, Running};
use common::user::{chown, TestUser};
use common::{id_of, tempdir, Rng};
use dfcache_daemon::server::ServeOptions;
use dfcache_wire::pb::dfdaemon::dfdaemon_download_client::DfdaemonDownloadClient;
use dfcache_wire::pb::dfdaemon::*;
use dfcache_wire::short_reads::{Request, HELLO, MAX_ID_LEN, MAX_LEN, RANGE_BYTES};

type Raw = DfdaemonDownloadClient<tonic::transport::Channel>;

/// Every panic in a thread of the daemon: handlers run on runtime
/// workers, blocking threads and threads of their own, where a panic would
/// otherwise only show as a broken stream. (A failing test's own thread is
/// not counted: the other test, running beside it, would fail with it.)
static PANICS: AtomicUsize = AtomicUsize::new(0);
const TEST_THREADS: [&str; 3] = [
    "no_path_field_from_an_unprivileged_peer_reaches_past_its_rights",
    "short_read_framing_from_an_unprivileged_peer_gets_exact_answers_or_a_close",
    "main",
];

fn count_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            if !TEST_THREADS.contains(&thread.name().unwrap_or_default()) {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default_hook(info);
        }));
    });
}

/// The daemon, the user, and the files around them.
struct World {
    rt: tokio::runtime::Runtime,
    d: Running,
    user: TestUser,
    /// The user's directory: `mine` (a file), `fifo`, `out/`, and
    /// symlinks `to-secret`, `to-locked` and `to-etc`.
    home: tempfile::TempDir,
    /// Root's (0755): `secret` (0600) and `locked/` (0755).
    area: tempfile::TempDir,
    /// A task root imported: no one else may delete it.
    good: String,
    good_content: Vec<u8>,
    secret_content: Vec<u8>,
    /// Names in /etc this test could make: none must ever exist.
    etc_prefix: String,
    locked_before: (Vec<String>, i64, i64),
}

impl World {
    fn new() -> World {
        count_panics();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let d = rt.block_on(Running::start(ServeOptions {
            socket_mode: 0o666,
            ..ServeOptions::default()
        }));
        // The user must reach the socket.
        let socket_dir = d.socket.parent().unwrap();
        std::fs::set_permissions(socket_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let good_content = Rng::new(21).bytes(300_000);
        let good = rt.block_on(async { write_bytes(&d.client(), &good_content).await });

        let area = tempdir();
        std::fs::set_permissions(area.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let secret_content = b"root:$6$only-root-may-read\n".to_vec();
        let secret = area.path().join("secret");
        std::fs::write(&secret, &secret_content).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::create_dir(area.path().join("locked")).unwrap();

        let user = TestUser::create();
        let home = user.own_dir();
        let h = |name: &str| home.path().join(name);
        std::fs::write(h("mine"), b"the user's own bytes").unwrap();
        std::fs::create_dir(h("out")).unwrap();
        let fifo = std::ffi::CString::new(h("fifo").to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path alive for the call.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        std::os::unix::fs::symlink(&secret, h("to-secret")).unwrap();
        std::os::unix::fs::symlink(area.path().join("locked"), h("to-locked")).unwrap();
        std::os::unix::fs::symlink("/etc", h("to-etc")).unwrap();
        for name in ["mine", "out", "fifo", "to-secret", "to-locked", "to-etc"] {
            chown(&h(name), user.uid, user.gid);
        }
        let mut world = World {
            rt,
            d,
            user,
            home,
            area,
            good,
            good_content,
            secret_content,
            etc_prefix: format!("dfcache-prop-{}-", std::process::id()),
            locked_before: (Vec::new(), 0, 0),
        };
        world.locked_before = world.locked_state();
        world
    }

    fn raw(&self) -> Raw {
        let _entered = self.rt.enter();
        DfdaemonDownloadClient::new(self.user.channel(&self.d.socket, &[]))
    }

    fn locked_state(&self) -> (Vec<String>, i64, i64) {
        let locked = self.area.path().join("locked");
        let meta = std::fs::metadata(&locked).unwrap();
        (names_in(&locked), meta.mtime(), meta.mtime_nsec())
    }

    /// Whether `argv` succeeds run by the user in a process of its own
    /// (so /proc/self there is its own, as for any program of the user's).
    fn user_succeeds(&self, argv: &[&str]) -> bool {
        let prefix = self.user.prefix();
        std::process::Command::new(&prefix[0])
            .args(&prefix[1..])
            .args(argv)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run a command as the user")
            .status
            .success()
    }

    /// Whether the user could open `path` for reading.
    fn user_can_read(&self, path: &str) -> bool {
        let input = format!("if={path}");
        self.user_succeeds(&[
            "dd",
            &input,
            "of=/dev/null",
            "iflag=nonblock",
            "count=0",
            "status=none",
        ])
    }

    /// Whether the user could create a file in the directory of `path`.
    fn user_can_create_beside(&self, path: &Path) -> bool {
        let Some(dir) = path.parent().and_then(Path::to_str) else {
            return false;
        };
        self.user_succeeds(&["sh", "-c", "test -w \"$1\" && test -x \"$1\"", "sh", dir])
    }

    /// Nothing outside the user's rights was touched, and the daemon holds
    /// nothing the user could not read.
    fn check_untouched(&self) -> Result<(), TestCaseError> {
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a handler panicked");
        prop_assert_eq!(
            self.locked_state(),
            self.locked_before.clone(),
            "root's directory changed"
        );
        let secret = self.area.path().join("secret");
        let meta = std::fs::metadata(&secret).unwrap();
        prop_assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o600));
        prop_assert_eq!(std::fs::read(&secret).unwrap(), self.secret_content.clone());
        let in_etc: Vec<String> = names_in(Path::new("/etc"))
            .into_iter()
            .filter(|n| n.starts_with(&self.etc_prefix))
            .collect();
        prop_assert!(in_etc.is_empty(), "written in /etc: {:?}", in_etc);
        for (path, uid) in owners_under(self.home.path()) {
            prop_assert_eq!(uid, self.user.uid, "{} is not the user's", path.display());
        }
        let ids: Vec<String> = self.d.store.list().into_iter().map(|t| t.id).collect();
        prop_assert!(ids.contains(&self.good), "root's task is gone");
        prop_assert!(
            !ids.contains(&id_of(&self.secret_content)),
            "the secret was stored"
        );
        Ok(())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for name in names_in(Path::new("/etc")) {
            if name.starts_with(&self.etc_prefix) {
                let _ = std::fs::remove_file(Path::new("/etc").join(name));
            }
        }
    }
}

/// Whether `path`, or a directory on the way to it, is on a proc file
/// system (as `/proc/self/fd/0` is, wherever its link leads).
fn on_proc(path: &str) -> bool {
    Path::new(path).ancestors().any(|p| {
        let Ok(name) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
            return false;
        };
        // SAFETY: `stat` is written by the call only; the path is
        // NUL-terminated and alive for the call.
        let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
        unsafe { libc::statfs(name.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == 0x9fa0 }
    })
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every entry under `dir` (symlinks not followed) and its owner.
fn owners_under(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        out.push((path.clone(), meta.uid()));
        if meta.is_dir() {
            out.extend(owners_under(&path));
        }
    }
    out
}

// ---- path fields ----

#[derive(Debug, Clone)]
enum Call {
    Upload(String),
    Download {
        id: String,
        output: String,
        force_hard_link: bool,
        overwrite: bool,
        need_piece_content: bool,
    },
    Delete(String),
}

/// Paths the user may or may not read: its own, root's, through its
/// symlinks, in /proc and /dev, and malformed ones.
fn any_source(home: String, area: String) -> impl Strategy<Value = String> {
    prop_oneof![
        Just(format!("{home}/mine")),
        Just(format!("{home}/fifo")),
        Just(format!("{home}/to-secret")),
        Just(format!("{home}/out")),
        Just(format!("{home}/to-locked/../to-secret")),
        Just(format!(
            "{home}/../{}/mine",
            home.rsplit('/').next().unwrap_or("")
        )),
        Just(format!("{area}/secret")),
        Just(format!("{area}/locked")),
        Just("/etc/shadow".to_string()),
        Just("/etc/hostname".to_string()),
        Just("/proc/self/environ".to_string()),
        Just("/proc/1/root/etc/shadow".to_string()),
        "[0-9]{1,2}".prop_map(|n| format!("/proc/self/fd/{n}")),
        Just("/dev/zero".to_string()),
        Just("/dev/null".to_string()),
        Just(String::new()),
        "[a-z./]{1,12}",
        Just(format!("{home}/mine\0")),
        ".{0,30}".prop_map(|p| format!("/{p}")),
    ]
}

/// Outputs in the user's directory, in root's, through symlinks into
/// root's and into /etc, and elsewhere the user may not write.
fn any_output(home: String, area: String, etc: String) -> impl Strategy<Value = String> {
    let name = "[a-z]{1,6}";
    prop_oneof![
        4 => name.prop_map({ let home = home.clone(); move |n| format!("{home}/out/{n}") }),
        1 => name.prop_map({ let area = area.clone(); move |n| format!("{area}/locked/{n}") }),
        1 => name.prop_map({ let home = home.clone(); move |n| format!("{home}/to-locked/{n}") }),
        1 => name.prop_map({ let (home, etc) = (home.clone(), etc.clone()); move |n| format!("{home}/to-etc/{etc}{n}") }),
        1 => name.prop_map(move |n| format!("/etc/{etc}{n}")),
        1 => Just(format!("{area}/secret")),
        1 => Just(format!("{home}/to-secret/x")),
        1 => Just(home.clone()),
        1 => Just("/proc/self/fd/1".to_string()),
        1 => Just("/dev/null".to_string()),
        1 => Just(format!("{home}/out/\0x")),
        1 => "[a-z./]{1,12}",
    ]
}

fn any_id(good: String) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(good),
        1 => "[0-9a-f]{64}",
        1 => ".{0,20}",
    ]
}

fn any_call(w: &World) -> impl Strategy<Value = Call> {
    let home = w.home.path().to_string_lossy().into_owned();
    let area = w.area.path().to_string_lossy().into_owned();
    prop_oneof![
        3 => any_source(home.clone(), area.clone()).prop_map(Call::Upload),
        4 => (
            any_id(w.good.clone()),
            any_output(home, area, w.etc_prefix.clone()),
            prop::bool::weighted(0.2),
            any::<bool>(),
            prop::bool::weighted(0.2),
        )
            .prop_map(|(id, output, force_hard_link, overwrite, need_piece_content)| {
                Call::Download { id, output, force_hard_link, overwrite, need_piece_content }
            }),
        1 => any_id(w.good.clone()).prop_map(Call::Delete),
    ]
}

/// Sends `call` as the user and checks its answer against what the user's
/// rights allow.
fn check_call(w: &World, raw: &Raw, call: Call) -> Result<(), TestCaseError> {
    let mut raw = raw.clone();
    match call {
        Call::Upload(path) => {
            let req = UploadPersistentCacheTaskRequest {
                path: path.clone(),
                ..Default::default()
            };
            match w.rt.block_on(raw.upload_persistent_cache_task(req)) {
                Ok(task) => {
                    let task = task.into_inner();
                    prop_assert!(
                        w.user_can_read(&path),
                        "{} imported for a user who cannot read it",
                        path
                    );
                    prop_assert!(!on_proc(&path), "{} is the daemon's own /proc file", path);
                    prop_assert_ne!(task.id, id_of(&w.secret_content));
                }
                Err(status) if status.code() == Code::PermissionDenied => {
                    // /proc is refused whole: its files there would be the
                    // daemon's, not the user's.
                    prop_assert!(
                        !w.user_can_read(&path) || on_proc(&path),
                        "{} refused to a user who can read it: {:?}",
                        path,
                        status
                    );
                    prop_assert!(status.message().contains(&path), "{:?}", status);
                }
                Err(status) => {
                    prop_assert_eq!(
                        status.code(),
                        Code::InvalidArgument,
                        "{:?}: {:?}",
                        path,
                        status
                    );
                }
            }
        }
        Call::Download {
            id,
            output,
            force_hard_link,
            overwrite,
            need_piece_content,
        } => {
            let req = DownloadPersistentCacheTaskRequest {
                task_id: id.clone(),
                output_path: Some(output.clone()),
                force_hard_link,
                overwrite,
                need_piece_content,
                ..Default::default()
            };
            let result: Result<(), tonic::Status> = w.rt.block_on(async {
                let mut stream = raw.download_persistent_cache_task(req).await?.into_inner();
                while let Some(item) = stream.next().await {
                    item?;
                }
                Ok(())
            });
            match result {
                Ok(()) => {
                    prop_assert!(
                        !force_hard_link,
                        "{} got a hard link to a stored task",
                        output
                    );
                    prop_assert_eq!(&id, &w.good);
                    let output = Path::new(&output);
                    prop_assert!(
                        w.user_can_create_beside(output),
                        "written where the user may not: {}",
                        output.display()
                    );
                    let meta = std::fs::metadata(output).unwrap();
                    prop_assert_eq!(
                        (meta.uid(), meta.nlink(), meta.len()),
                        (w.user.uid, 1, w.good_content.len() as u64)
                    );
                    if !output.starts_with(w.home.path()) {
                        // Somewhere the user may write, outside the test's
                        // directories (/tmp): not left behind.
                        let _ = std::fs::remove_file(output);
                    }
                }
                Err(status) => prop_assert!(
                    !matches!(status.code(), Code::Unknown | Code::Unavailable),
                    "{output:?}: {status:?}"
                ),
            }
        }
        Call::Delete(id) => {
            let req = DeletePersistentCacheTaskRequest {
                task_id: id.clone(),
                ..Default::default()
            };
            let result = w.rt.block_on(raw.delete_persistent_cache_task(req));
            if id == w.good {
                let status = result.expect_err("root's task deleted by the user");
                prop_assert_eq!(status.code(), Code::PermissionDenied);
            }
        }
    }
    w.check_untouched()
}

#[test]
fn no_path_field_from_an_unprivileged_peer_reaches_past_its_rights() {
    let w = World::new();
    let raw = w.raw();
    let mut runner = TestRunner::new(Config {
        cases: 600,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&any_call(&w), |call| check_call(&w, &raw, call));
    if let Err(e) = result {
        panic!("{e}");
    }
}

// ---- the short-read framing ----

/// One request as bytes: a well-formed one, or one with a lying id length.
#[derive(Debug, Clone)]
struct Frame {
    id_len: Option<u8>,
    id: Vec<u8>,
    offset: u64,
    length: u32,
}

impl Frame {
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.id_len.unwrap_or(self.id.len() as u8)];
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.length.to_le_bytes());
        out
    }
}

fn any_frame(good: String, len: u64) -> impl Strategy<Value = Frame> {
    let id = prop_oneof![
        4 => Just(good.into_bytes()),
        1 => "[0-9a-f]{64}".prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>(), 0..140),
        1 => ".{0,10}".prop_map(String::into_bytes),
    ];
    let offset = prop_oneof![4 => 0..len + 10, 1 => Just(len), 1 => any::<u64>()];
    let length =
        prop_oneof![4 => 1..=MAX_LEN, 1 => Just(0u32), 1 => Just(MAX_LEN + 1), 1 => any::<u32>()];
    (
        proptest::option::weighted(0.1, any::<u8>()),
        id,
        offset,
        length,
    )
        .prop_map(|(id_len, id, offset, length)| Frame {
            id_len,
            id,
            offset,
            length,
        })
        .prop_filter("an id length fits a byte", |f| f.id.len() <= 255)
}

/// Bytes for one connection: mostly the hello and requests (cut short at
/// times), sometimes a spoiled hello or nothing like the channel at all.
fn any_input(good: String, len: u64) -> impl Strategy<Value = Vec<u8>> {
    let frames = || proptest::collection::vec(any_frame(good.clone(), len), 0..5);
    prop_oneof![
        8 => (frames(), proptest::option::weighted(0.2, any::<prop::sample::Index>())).prop_map(|(frames, cut)| {
            let mut bytes = HELLO.to_vec();
            for f in &frames {
                bytes.extend(f.encode());
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            bytes
        }),
        1 => (frames(), 1..HELLO.len(), any::<u8>()).prop_map(|(frames, at, byte)| {
            let mut bytes = HELLO.to_vec();
            bytes[at] ^= byte | 1;
            for f in &frames {
                bytes.extend(f.encode());
            }
            bytes
        }),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Data(Vec<u8>),
    Error(u8),
}

/// What the daemon answers `input` with, by the framing's rules: the
/// hello back, then one reply per whole, well-formed request, in order,
/// until the input ends or breaks the framing (then the connection is
/// closed). None when the hello is not the channel's.
fn model(input: &[u8], good: &str, content: &[u8]) -> Option<Vec<Reply>> {
    if input.len() < HELLO.len() || input[..HELLO.len()] != HELLO {
        return None;
    }
    let mut replies = Vec::new();
    let mut rest = &input[HELLO.len()..];
    while let Some((&id_len, after)) = rest.split_first() {
        let id_len = id_len as usize;
        if id_len == 0 || id_len > MAX_ID_LEN || after.len() < id_len + RANGE_BYTES {
            break;
        }
        let mut range = [0u8; RANGE_BYTES];
        range.copy_from_slice(&after[id_len..id_len + RANGE_BYTES]);
        let (offset, length) = Request::range_of(range);
        let Ok(id) = std::str::from_utf8(&after[..id_len]) else {
            break;
        };
        if length == 0 || length > MAX_LEN {
            break;
        }
        rest = &after[id_len + RANGE_BYTES..];
        let len = content.len() as u64;
        replies.push(if !dfcache_wire::domain::task_id::is_task_id(id) {
            Reply::Error(Code::InvalidArgument as u8)
        } else if id != good {
            Reply::Error(Code::NotFound as u8)
        } else if offset > len {
            Reply::Error(Code::OutOfRange as u8)
        } else {
            let end = offset.saturating_add(u64::from(length)).min(len);
            Reply::Data(content[offset as usize..end as usize].to_vec())
        });
    }
    Some(replies)
}

/// The replies in `answer` after the echoed hello; an error for bytes
/// that are not whole replies.
fn parse(answer: &[u8]) -> Result<Vec<Reply>, String> {
    let rest = answer
        .strip_prefix(&HELLO[..])
        .ok_or_else(|| format!("no hello in {:?}", &answer[..answer.len().min(16)]))?;
    let mut replies = Vec::new();
    let mut rest = rest;
    while !rest.is_empty() {
        if rest.len() < 5 {
            return Err(format!("a cut reply header: {rest:?}"));
        }
        let (status, len) =
            dfcache_wire::short_reads::parse_reply_header(rest[..5].try_into().unwrap());
        let payload = rest.get(5..5 + len as usize).ok_or("a cut reply")?;
        replies.push(if status == 0 {
            Reply::Data(payload.to_vec())
        } else {
            std::str::from_utf8(payload).map_err(|_| "an error message that is not UTF-8")?;
            Reply::Error(status)
        });
        rest = &rest[5 + len as usize..];
    }
    Ok(replies)
}

/// Sends `input` on a new connection made as the user, closes the sending
/// side, and returns everything the daemon answered before it closed.
fn exchange(w: &World, input: &[u8]) -> Vec<u8> {
    let mut conn = w.user.connect(&w.d.socket).expect("connect as the user");
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    conn.write_all(input).unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    match conn.read_to_end(&mut answer) {
        Ok(_) => {}
        // Closed with our unread bytes still in its buffer.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("no answer and no close: {e}"),
    }
    answer
}

#[test]
fn short_read_framing_from_an_unprivileged_peer_gets_exact_answers_or_a_close() {
    let w = World::new();
    let mut runner = TestRunner::new(Config {
        cases: 600,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = any_input(w.good.clone(), w.good_content.len() as u64);
    let result = runner.run(&strategy, |input| {
        let answer = exchange(&w, &input);
        match model(&input, &w.good, &w.good_content) {
            Some(expected) => {
                prop_assert_eq!(parse(&answer).map_err(TestCaseError::fail)?, expected);
            }
            // Not the channel's hello: closed unanswered, or gRPC's to
            // answer (a first byte other than 0xDF).
            None if input.first() == Some(&HELLO[0]) => prop_assert!(answer.is_empty()),
            None => {}
        }
        w.check_untouched()
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Both protocols still answer.
    let answer = exchange(
        &w,
        &[
            &HELLO[..],
            &Frame {
                id_len: None,
                id: w.good.clone().into_bytes(),
                offset: 5,
                length: 10,
            }
            .encode(),
        ]
        .concat(),
    );
    assert_eq!(
        parse(&answer).unwrap(),
        vec![Reply::Data(w.good_content[5..15].to_vec())]
    );
    let listed = w.rt.block_on(
        w.raw()
            .list_local_persistent_cache_tasks(ListLocalPersistentCacheTasksRequest::default()),
    );
    assert_eq!(listed.unwrap().into_inner().tasks.len(), 1);
}
