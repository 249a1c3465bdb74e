//! Trees that fetch themselves (`--prefetch-trees`) on a released daemon:
//! the first open of a tree's file queues the others, which download in
//! the background in path order, after what programs wait for, within
//! `--task-cache-size`.

use super::*;
use crate::daemon::fake::{Call, Fault};
use crate::inodes::TREES_INO;
use dfcache_wire::tree::{Entry, Kind, Manifest};

/// Files of 5 MiB: two pieces each.
const FILE: u64 = 5 * MIB;

/// A tree `d/f00 .. d/f{n-1}` of `FILE` bytes each, which only the
/// daemon's peers hold; the tree id and the files' task ids in path order.
fn remote_tree(fake: &FakeDaemon, n: usize) -> (String, Vec<String>) {
    let mut files = vec![];
    let mut entries = vec![];
    for i in 0..n {
        let id = fake.add_remote_task(&bytes(FILE, i as u8));
        entries.push(Entry {
            name: format!("f{i:02}"),
            mode: 0o644,
            kind: Kind::File {
                size: FILE,
                task_id: id.clone(),
            },
        });
        files.push(id);
    }
    let manifest = Manifest {
        entries: vec![Entry {
            name: "d".into(),
            mode: 0o755,
            kind: Kind::Directory { entries },
        }],
    };
    (fake.add_task(&manifest.to_bytes()), files)
}

fn mount(fake: &Arc<FakeDaemon>, task_cache_size: u64, prefetch_trees: bool) -> DfcacheFs {
    let mut config = config();
    config.task_cache_size = task_cache_size;
    config.prefetch_trees = prefetch_trees;
    // No fault here stalls: a loaded machine must not trip the timeout.
    config.fetch_timeout = Duration::from_secs(10);
    DfcacheFs::new(fake.clone(), config)
}

/// Opens `trees/<tree>/d/<file>`; the handle.
async fn open_in_tree(fs: &DfcacheFs, tree: &str, file: &str) -> u64 {
    let root = fs.lookup(TREES_INO, &name(tree)).await.unwrap();
    let dir = fs.lookup(root.ino, &name("d")).await.unwrap();
    let attr = fs.lookup(dir.ino, &name(file)).await.unwrap();
    fs.open(attr.ino, false, false).await.unwrap().fh
}

/// Reads the whole of an open file.
async fn read_all(fs: &DfcacheFs, fh: u64) {
    let mut offset = 0;
    while offset < FILE {
        offset += fs.read(fh, offset, 1 << 20).await.unwrap().len() as u64;
    }
}

/// Polls `cond` every 5 ms for up to 5 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn the_first_open_of_a_tree_file_fetches_the_others_from_the_next_one_in_path_order() {
    let fake = FakeDaemon::legacy(DEADLINE);
    let (tree, files) = remote_tree(&fake, 6);
    let fs = mount(&fake, 1 << 30, true);
    let fh = open_in_tree(&fs, &tree, "f02").await;
    read_all(&fs, fh).await;
    eventually("every file downloaded", || {
        files.iter().all(|id| fs.task_files.has(id)) && fs.prefetch.queued() == 0
    })
    .await;
    let order: Vec<String> = fake
        .downloads()
        .into_iter()
        .filter(|id| *id != tree)
        .collect();
    let expected: Vec<String> = [2, 3, 4, 5, 0, 1]
        .iter()
        .map(|&i| files[i].clone())
        .collect();
    assert_eq!(order, expected);
    // A second file's open finds it whole and asks for no new download.
    let before = fake.calls(Call::Download);
    let fh = open_in_tree(&fs, &tree, "f04").await;
    assert!(fs.local_file(fh).is_some());
    assert_eq!(fake.calls(Call::Download), before);
}

#[tokio::test]
async fn with_prefetch_off_only_what_programs_open_is_fetched() {
    let fake = FakeDaemon::legacy(DEADLINE);
    let (tree, files) = remote_tree(&fake, 4);
    let fs = mount(&fake, 1 << 30, false);
    let fh = open_in_tree(&fs, &tree, "f00").await;
    read_all(&fs, fh).await;
    assert!(fs.task_files.has(&files[0]));
    assert!(files[1..].iter().all(|id| !fs.task_files.has(id)));
    assert_eq!(fs.prefetch.queued(), 0);
}

#[tokio::test]
async fn nothing_is_prefetched_while_a_program_waits_for_its_download() {
    let fake = FakeDaemon::legacy(DEADLINE);
    let (tree, files) = remote_tree(&fake, 4);
    let fs = mount(&fake, 1 << 30, true);
    // The manifest read first, then the opened file's pieces come 20 ms
    // apart.
    fs.lookup(TREES_INO, &name(&tree)).await.unwrap();
    fake.inject(Call::Download, Fault::Trickle(Duration::from_millis(20)));
    let fh = open_in_tree(&fs, &tree, "f00").await;
    fs.read(fh, 0, 4096).await.unwrap();
    // Its second piece has not landed: the program's download has the
    // daemon to itself.
    assert_eq!(fake.downloads(), vec![tree.clone(), files[0].clone()]);
    read_all(&fs, fh).await;
    eventually("the others downloaded after it", || {
        files.iter().all(|id| fs.task_files.has(id))
    })
    .await;
}

#[tokio::test]
async fn prefetching_takes_only_room_no_program_needs() {
    let fake = FakeDaemon::legacy(DEADLINE);
    let (tree, files) = remote_tree(&fake, 6);
    // Room for three files.
    let fs = mount(&fake, 3 * FILE, true);
    let fh = open_in_tree(&fs, &tree, "f00").await;
    read_all(&fs, fh).await;
    // f00 is open: f01 and f02 fit beside it, f03 does not.
    eventually("two files prefetched", || {
        fs.task_files.has(&files[1]) && fs.task_files.has(&files[2])
    })
    .await;
    assert_eq!(fs.prefetch.queued(), 3);
    assert!(fs.task_files.has(&files[0]));

    // Closed, f00 was read: room for f03. f04 would push out a prefetched
    // file no program has read yet: it waits, queued.
    fs.release(fh).await.unwrap();
    eventually("f03 prefetched into f00's room", || {
        fs.task_files.has(&files[3])
    })
    .await;
    assert!(!fs.task_files.has(&files[0]));
    assert!(!fs.task_files.has(&files[4]));
    assert_eq!(fs.prefetch.queued(), 2);

    // A program reads f01 and closes it: its room goes to f04.
    let fh = open_in_tree(&fs, &tree, "f01").await;
    read_all(&fs, fh).await;
    assert!(!fs.task_files.has(&files[4]), "f01 is still open");
    fs.release(fh).await.unwrap();
    eventually("f04 prefetched into f01's room", || {
        fs.task_files.has(&files[4])
    })
    .await;
    assert!(!fs.task_files.has(&files[5]));
    assert!(fs.task_files.has(&files[2]) && fs.task_files.has(&files[3]));
}
