//! A mount that outlives its process: `kill -9` of the serving process
//! (a crash, an OOM kill), then `dfcache mount` again with the same
//! arguments, while programs use the mount; and a graceful upgrade
//! (`--takeover`). Programs keep reading the right bytes from the same
//! descriptors, with passthrough on and off.

use std::io::Write;
use std::path::Path;

use crate::common::tree::make_tree;
use crate::common::*;
use crate::harness::*;

/// Holds a task open several ways and a tree file open from inside the
/// tree (its working directory), reads the first half, says `ready`; after
/// a line on stdin reads the rest every way (the kernel's page cache was
/// dropped meanwhile, so the reads reach whoever serves the mount now) and
/// says `ok`. argv: mount point, task id, task source, tree dir, tree file
/// name, tree file source.
const HOLDER_OF_OPEN_FILES: &str = r#"
import mmap, os, random, sys
mnt, task, task_src, tree_dir, tree_name, tree_src = sys.argv[1:7]
data = open(task_src, 'rb').read()
tdata = open(tree_src, 'rb').read()
path = f"{mnt}/tasks/{task}"
seq = open(path, 'rb', buffering=0)
rnd = os.open(path, os.O_RDONLY)
mapped = mmap.mmap(os.open(path, os.O_RDONLY), 0, prot=mmap.PROT_READ)
os.chdir(tree_dir)
tf = open(tree_name, 'rb', buffering=0)
half = len(data) // 2
first = seq.read(half)
assert first == data[:half], "sequential, before"
assert mapped[:4096] == data[:4096], "mmap, before"
assert tf.read(len(tdata) // 2) == tdata[:len(tdata) // 2], "tree file, before"
print("ready", flush=True)
sys.stdin.readline()
rest = b""
while True:
    b = seq.read(1 << 20)
    if not b:
        break
    rest += b
assert first + rest == data, "sequential, after"
r = random.Random(7)
for _ in range(300):
    off = r.randrange(len(data))
    n = r.randrange(1, 1 << 17)
    assert os.pread(rnd, n, off) == data[off:off + n], f"pread at {off}"
for off in range(0, len(data), 1 << 20):
    assert mapped[off:off + 4096] == data[off:off + 4096], f"mmap at {off}"
assert tf.read() == tdata[len(tdata) // 2:], "tree file, after"
print("ok", " ".join(sorted(os.listdir("."))), flush=True)
"#;

/// In a mount namespace of its own (a slave of the host's, as a pod with
/// HostToContainer propagation has), made before the crash: after a line,
/// lists the mount and hashes a task through it.
const OTHER_NAMESPACE: &str = r#"
import hashlib, os, sys
mnt, task = sys.argv[1:3]
os.listdir(mnt)
print("ready", flush=True)
sys.stdin.readline()
names = os.listdir(f"{mnt}/tasks")
h = hashlib.sha256(open(f"{mnt}/tasks/{task}", 'rb').read()).hexdigest()
print("ok", task in names, h, flush=True)
"#;

fn sha256(path: &Path) -> String {
    let out = sh_ok(&format!("sha256sum {}", q(path)));
    out.split_whitespace().next().unwrap().to_string()
}

fn drop_page_cache() {
    sh_ok("sync; echo 3 > /proc/sys/vm/drop_caches");
}

/// The crash, then the same `dfcache mount` again: every program keeps
/// reading from the descriptors it had, a program in another mount
/// namespace too, new opens work (in passthrough: on the inode's backing
/// the kernel still holds), and a `cp` in flight fails cleanly.
fn open_files_survive_a_crash(passthrough: bool) {
    let root = tempdir();
    let extra: &[&str] = if passthrough {
        &[]
    } else {
        &["--passthrough", "never"]
    };
    let mut m = Mounted::embedded(root.path(), extra);
    let src = root.path().join("task.bin");
    write_file(&src, 24 * MIB + 11, 91);
    sh_ok(&format!("cp {} {}", q(&src), q(&m.import("task.bin"))));
    let id = task_id_xattr(&m.import("task.bin"));
    let model = root.path().join("model");
    make_tree(&model, 20);
    sh_ok(&format!("cp -r {} {}", q(&model), q(&m.import("model"))));
    let tree_id = sh_ok(&format!(
        "getfattr --only-values -n user.dfcache.tree_id {}",
        q(&m.import("model"))
    ));
    let tree_dir = m.path(&format!("trees/{tree_id}/weights"));

    let args = [
        m.mnt.as_path(),
        Path::new(&id),
        &src,
        &tree_dir,
        Path::new("model-00001.safetensors"),
        &model.join("weights/model-00001.safetensors"),
    ];
    let mut reader = Python::start(HOLDER_OF_OPEN_FILES, &args);
    assert_eq!(reader.line(), "ready");
    let mut other = Python::start_in(
        &["unshare", "-m", "--propagation", "slave"],
        OTHER_NAMESPACE,
        &[&m.mnt, Path::new(&id)],
    );
    assert_eq!(other.line(), "ready");
    let (cp, mut writer) = cp_in_progress(root.path(), &m);
    eventually("the import to reach the daemon", 10, || {
        std::fs::read_dir(root.path().join("store/tmp")).is_ok_and(|d| d.count() > 0)
    });

    m.crash();
    assert!(is_mounted(&m.mnt), "the holder keeps the mount");
    drop_page_cache();
    let log = root.path().join("after.log");
    let again = m.restart(&[], Some(&log));

    // A new open of the task the reader holds open.
    assert_eq!(sha256(&again.task(&id)), sha256(&src));
    reader.send("go");
    let mut names: Vec<_> = std::fs::read_dir(model.join("weights"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(reader.line(), format!("ok {}", names.join(" ")));
    let (rest, ok) = reader.finish();
    assert!(ok, "the reader failed: {rest:?}");
    other.send("go");
    assert_eq!(other.line(), format!("ok True {}", sha256(&src)));

    // The import in flight: its next write fails, and nothing is kept.
    let _ = writer.write_all(&vec![7u8; 4 << 20]);
    drop(writer);
    let out = cp.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "cp of an interrupted import succeeded"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Input/output error"), "{err}");
    assert!(
        !again.import("big").exists(),
        "the interrupted import is listed"
    );
    eventually("the daemon to drop the broken import", 20, || {
        std::fs::read_dir(root.path().join("store/tmp")).is_ok_and(|d| d.count() == 0)
    });
    let tasks = sh_ok(&format!("ls {}", q(&again.path("tasks"))));
    assert_eq!(tasks.lines().count(), 2 + 20 + 3, "{tasks}");

    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("took the mount over"), "{said}");
    assert!(said.contains("asked the kernel to resend"), "{said}");
    if passthrough {
        assert!(!said.contains("passthrough_opens=0"), "{said}");
    }
    drop(again);
    drop(m);
    assert!(!is_mounted(&root.path().join("mnt")));
    assert!(holder_pids(&root.path().join("mnt.holder.sock")).is_empty());
}

#[test]
fn open_files_survive_a_crash_with_passthrough() {
    open_files_survive_a_crash(true);
}

#[test]
fn open_files_survive_a_crash_without_passthrough() {
    open_files_survive_a_crash(false);
}

/// A free TCP port on localhost, for `--metrics-addr`.
fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
}

/// The mount's `dfcache_block_fetches_in_flight`: reads it took from the
/// kernel and is fetching from the daemon.
fn fetches_in_flight(addr: &str) -> f64 {
    let text = sh_ok(&format!("curl -sSf --max-time 10 http://{addr}/metrics"));
    text.lines()
        .find_map(|l| l.strip_prefix("dfcache_block_fetches_in_flight "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_read_caught_in_the_crash_is_resent_and_completes_once_the_mount_and_daemon_are_back() {
    let root = tempdir();
    let daemon = Daemon::start(root.path());
    let src = root.path().join("src.bin");
    write_file(&src, 40 * MIB, 92);
    let id = daemon.ok(&["import", "--stream-mode", src.to_str().unwrap()]);
    let addr = free_addr();
    let mut m = Mounted::on(&daemon, root.path(), &["--metrics-addr", &addr]);
    sh_ok(&format!("stat {}", q(&m.task(&id))));

    // The daemon freezes (a stuck disk); a read through the mount waits on
    // it, read from the kernel by the mount and not answered.
    sh_ok(&format!("kill -STOP {}", daemon.child.id()));
    let hash = std::process::Command::new("sha256sum")
        .arg(m.task(&id))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually("the mount to be fetching for the read", 10, || {
        fetches_in_flight(&addr) > 0.0
    });
    m.crash();
    sh_ok(&format!("kill -CONT {}", daemon.child.id()));
    let again = m.restart(&[], None);

    // The kernel resent it to the new process: it completes.
    let out = hash.wait_with_output().unwrap();
    assert!(out.status.success());
    let got = String::from_utf8_lossy(&out.stdout);
    assert_eq!(got.split_whitespace().next(), Some(sha256(&src).as_str()));
    drop(again);
}

#[test]
fn a_mount_killed_mid_cp_fails_the_cp_once_the_next_one_takes_over() {
    for mode in ["streaming", "spool"] {
        let root = tempdir();
        let daemon = Daemon::start(root.path());
        let spool = root.path().join("spool");
        let extra: Vec<&str> = match mode {
            "spool" => vec!["--spool", spool.to_str().unwrap()],
            _ => vec![],
        };
        let mut m = Mounted::on(&daemon, root.path(), &extra);
        let (cp, mut writer) = cp_in_progress(root.path(), &m);
        eventually("the import to be under way", 10, || match mode {
            "spool" => std::fs::read_dir(&spool).is_ok_and(|d| d.count() > 0),
            _ => !daemon.leftovers().is_empty(),
        });
        m.crash();
        let again = m.restart(&[], None);
        let _ = writer.write_all(&vec![3u8; 4 << 20]);
        drop(writer);
        let out = cp.wait_with_output().unwrap();
        assert!(!out.status.success(), "{mode}: cp succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Input/output error"), "{mode}: {err}");
        assert!(!again.import("big").exists(), "{mode}");
        eventually("nothing kept of the import", 20, || {
            daemon.ids().is_empty()
                && daemon.leftovers().is_empty()
                && std::fs::read_dir(&spool).map_or(true, |d| d.count() == 0)
        });
        // The same mount point imports again.
        let small = root.path().join("small.bin");
        write_file(&small, 3 * MIB, 93);
        sh_ok(&format!("cp {} {}", q(&small), q(&again.import("small"))));
        assert_eq!(task_id_xattr(&again.import("small")), expected_id(&small));
    }
}

/// Reads with several threads, each with its own descriptors, and lists
/// the mount, until told to stop; counts every failed or wrong read.
const BUSY_READERS: &str = r#"
import os, random, sys, threading
mnt, task, src, ids = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
data = open(src, 'rb').read()
stop = threading.Event()
counts = {"reads": 0, "errors": 0, "opens": 0}
lock = threading.Lock()
def note(k, n=1):
    with lock:
        counts[k] += n
def reader(seed):
    r = random.Random(seed)
    fd = os.open(f"{mnt}/tasks/{task}", os.O_RDONLY)
    while not stop.is_set():
        off = r.randrange(len(data))
        n = r.randrange(1, 1 << 18)
        try:
            if os.pread(fd, n, off) != data[off:off + n]:
                print("wrong bytes at", off, flush=True); note("errors")
            note("reads")
            # A new open, a listing, a lookup, now and then.
            if r.random() < 0.05:
                with open(f"{mnt}/tasks/{task}", 'rb') as f:
                    f.read(4096)
                os.listdir(f"{mnt}/tasks")
                os.stat(f"{mnt}/tasks/{r.choice(ids)}")
                os.listdir(f"{mnt}/import")
                note("opens")
        except OSError as e:
            print("error", e, flush=True); note("errors")
threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
for t in threads:
    t.start()
print("started", flush=True)
sys.stdin.readline()
stop.set()
for t in threads:
    t.join()
print(counts["reads"], counts["errors"], counts["opens"], flush=True)
"#;

fn a_graceful_takeover_fails_no_read(passthrough: bool) {
    let root = tempdir();
    let extra: &[&str] = if passthrough {
        &[]
    } else {
        &["--passthrough", "never"]
    };
    let old_log = root.path().join("old.log");
    // A takeover that fails lets go soon, instead of programs waiting 10m.
    let mut args = vec![
        "--takeover-wait".to_string(),
        "20s".to_string(),
        "--embedded".to_string(),
        root.path().join("store").to_str().unwrap().to_owned(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut m = Mounted::start_logged(&root.path().join("mnt"), &args, &old_log);
    let src = root.path().join("task.bin");
    write_file(&src, 16 * MIB + 1, 94);
    sh_ok(&format!("cp {} {}", q(&src), q(&m.import("task.bin"))));
    let id = task_id_xattr(&m.import("task.bin"));
    let other = root.path().join("other.bin");
    write_file(&other, MIB, 95);
    sh_ok(&format!("cp {} {}", q(&other), q(&m.import("other.bin"))));
    let ids = format!("{id},{}", task_id_xattr(&m.import("other.bin")));
    let mut readers = Python::start(
        BUSY_READERS,
        &[&m.mnt, Path::new(&id), &src, Path::new(&ids)],
    );
    assert_eq!(readers.line(), "started");
    // An import being written when the new process asks: it finishes
    // before the old one hands over.
    let (cp, mut writer) = cp_in_progress(root.path(), &m);

    let log = root.path().join("new.log");
    let again = m.restart(&["--takeover"], Some(&log));
    eventually("the old process to wait for the import", 20, || {
        std::fs::read_to_string(&old_log)
            .is_ok_and(|l| l.contains("waiting for the imports being written"))
    });
    writer.write_all(&vec![6u8; 8 << 20]).unwrap();
    drop(writer);
    let out = cp.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "cp across the takeover: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = m.wait_exit(30);
    assert!(status.success(), "the old process: {status}");
    // The new one serves: what the old one imported is there.
    let mut expected = vec![5u8; 16 << 20];
    expected.extend(vec![6u8; 8 << 20]);
    assert_eq!(task_id_xattr(&again.import("big")), id_of(&expected));
    eventually("the readers to go on through the new process", 10, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("took the mount over"))
    });
    sh_ok(&format!("cmp {} {}", q(&src), q(&again.task(&id))));
    readers.send("stop");
    let counts = readers.line();
    let fields: Vec<u64> = counts
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(fields[1], 0, "failed reads across the takeover: {counts}");
    assert!(fields[0] > 100 && fields[2] > 0, "{counts}");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("took the mount over"), "{said}");
    drop(again);
    drop(m);
    assert!(!is_mounted(&root.path().join("mnt")));
}

#[test]
fn a_graceful_takeover_fails_no_read_with_passthrough() {
    a_graceful_takeover_fails_no_read(true);
}

#[test]
fn a_graceful_takeover_fails_no_read_without_passthrough() {
    a_graceful_takeover_fails_no_read(false);
}

#[test]
fn a_holder_nobody_takes_the_mount_from_lets_go_after_the_takeover_wait() {
    let root = tempdir();
    let mut m = Mounted::embedded(root.path(), &["--takeover-wait", "2s"]);
    m.crash();
    // Programs wait, then get ENOTCONN once the holder lets go.
    let out = sh(&format!("timeout 30 ls {}", q(&m.mnt)));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not connected") || err.contains("connection abort"),
        "{err}"
    );
    eventually("the holder to exit", 10, || {
        holder_pids(&m.holder_socket).is_empty()
    });
    let log = root.path().join("next.log");
    let next = m.restart(&[], Some(&log));
    sh_ok(&format!("ls {}", q(&next.path("tasks"))));
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("no takeover: no holder answers"), "{said}");
}

#[test]
fn an_unmount_from_outside_ends_the_holder_of_a_crashed_mount() {
    let root = tempdir();
    let mut m = Mounted::embedded(root.path(), &[]);
    m.crash();
    assert_eq!(holder_pids(&m.holder_socket).len(), 1);
    sh_ok(&format!("umount -l {}", q(&m.mnt)));
    eventually("the holder to see the mount gone", 10, || {
        holder_pids(&m.holder_socket).is_empty()
    });
}

#[test]
fn a_holder_killed_under_a_live_mount_is_replaced_and_a_crash_is_still_taken_over() {
    let root = tempdir();
    let mut m = Mounted::embedded(root.path(), &[]);
    let first = holder_pids(&m.holder_socket);
    m.kill_holder();
    eventually("a new holder", 10, || {
        let now = holder_pids(&m.holder_socket);
        now.len() == 1 && now != first
    });
    let src = root.path().join("f.bin");
    write_file(&src, 3 * MIB, 97);
    sh_ok(&format!("cp {} {}", q(&src), q(&m.import("f"))));
    m.crash();
    let next = m.restart(&[], None);
    assert_eq!(task_id_xattr(&next.import("f")), expected_id(&src));
}
