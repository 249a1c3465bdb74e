//! Thousands of tasks: `tasks/` lists them all, from one snapshot per
//! opendir, while tasks come and go.

use std::collections::HashSet;
use std::time::Instant;

use tokio::task::JoinSet;

use crate::common::inproc::write_bytes;
use crate::common::*;
use crate::harness::*;

/// How many tasks the listing test makes (`DFCACHE_TEST_TASKS` to change).
fn task_count() -> usize {
    std::env::var("DFCACHE_TEST_TASKS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000)
}

/// Imports `contents` through `client`, 32 at a time; their ids.
fn import_all(
    rt: &tokio::runtime::Runtime,
    socket: &std::path::Path,
    contents: Vec<Vec<u8>>,
) -> Vec<String> {
    rt.block_on(async {
        let client = dfcache_client::Client::new(socket);
        let mut ids = Vec::new();
        for batch in contents.chunks(32) {
            let mut set = JoinSet::new();
            for data in batch {
                let (client, data) = (client.clone(), data.clone());
                set.spawn(async move { write_bytes(&client, &data).await });
            }
            while let Some(id) = set.join_next().await {
                ids.push(id.expect("import task"));
            }
        }
        ids
    })
}

#[test]
fn ten_thousand_tasks_list_completely_from_one_snapshot_while_tasks_come_and_go() {
    let root = tempdir();
    // A tmpfs store: making 10,000 tasks should not wait on fsyncs.
    let _store = Tmpfs::mount(root.path().join("store"), "256m");
    let daemon = Daemon::start(root.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let n = task_count();
    let started = Instant::now();
    let ids = import_all(
        &rt,
        &daemon.socket,
        (0..n).map(|i| format!("task {i}").into_bytes()).collect(),
    );
    eprintln!("imported {n} tasks in {:?}", started.elapsed());
    let m = Mounted::on(&daemon, root.path(), &[]);

    // A reader takes the first entries, then tasks change, then it reads
    // on. It calls getdents64 itself with a 4 KiB buffer, so the listing
    // takes many kernel readdir requests whatever buffer libc would use.
    let code = r#"
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
SYS_GETDENTS64 = 217  # x86_64
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
buf = ctypes.create_string_buffer(4096)
def batch():
    n = libc.syscall(SYS_GETDENTS64, fd, buf, len(buf))
    if n < 0:
        raise OSError(ctypes.get_errno(), 'getdents64')
    raw, pos, names = buf.raw[:n], 0, []
    while pos < n:
        _, _, reclen, _ = struct.unpack_from('QqHB', raw, pos)
        names.append(raw[pos + 19:pos + reclen].split(b'\0', 1)[0].decode())
        pos += reclen
    return [name for name in names if name not in ('.', '..')]
names = []
while len(names) < 100:
    names += batch()
print('started', flush=True)
sys.stdin.readline()
while True:
    more = batch()
    if not more:
        break
    names += more
print(len(names), len(set(names)), flush=True)
print('\n'.join(names), flush=True)
"#;
    let mut reader = Python::start(code, &[&m.path("tasks")]);
    assert_eq!(reader.line(), "started");

    for id in &ids[..50] {
        daemon.ok(&["rm", id]);
    }
    let added = import_all(
        &rt,
        &daemon.socket,
        (0..50).map(|i| format!("added {i}").into_bytes()).collect(),
    );
    reader.send("go");
    assert_eq!(
        reader.line(),
        format!("{n} {n}"),
        "entries, distinct entries"
    );
    let (rest, exited_ok) = reader.finish();
    assert!(exited_ok);
    let listed: HashSet<String> = rest.into_iter().collect();
    let expected: HashSet<String> = ids.iter().cloned().collect();
    assert!(
        listed == expected,
        "the listing is not the snapshot at opendir"
    );

    // A new listing sees the changes.
    let started = Instant::now();
    let now: HashSet<String> = sh_ok(&format!("ls -f {}", q(&m.path("tasks"))))
        .lines()
        .filter(|l| l.len() == 64)
        .map(str::to_string)
        .collect();
    eprintln!("listed {} tasks in {:?}", now.len(), started.elapsed());
    assert_eq!(now.len(), n);
    assert!(added.iter().all(|id| now.contains(id)));
    assert!(ids[..50].iter().all(|id| !now.contains(id)));
}
