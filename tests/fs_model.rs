//! A reference-model test of the file system's semantics, without a
//! kernel: random sequences of operations on `DfcacheFs` (backed by a real
//! daemon on a real socket) checked against a plain in-memory model of
//! what `import/` and `tasks/` should hold. The piece cache is tiny, so
//! eviction, refetch and read-ahead are exercised on every run.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::time::Duration;

use common::inproc::{write_bytes, Running};
use common::{id_of, Rng};
use dfcache_client::mapping::PathMapper;
use dfcache_client::ImportOptions;
use dfcache_daemon::server::ServeOptions;
use dfcache_mount::attr::{Modes, Owner};
use dfcache_mount::inodes::{IMPORT_INO, TASKS_INO};
use dfcache_mount::{DfcacheFs, Errno, FsConfig, TASK_ID_XATTR};

const MIB: usize = 1 << 20;

/// What the mount should show.
#[derive(Default)]
struct Model {
    /// import/ name -> content.
    imports: BTreeMap<OsString, Vec<u8>>,
    /// task id -> content.
    tasks: BTreeMap<String, Vec<u8>>,
}

fn config() -> FsConfig {
    FsConfig {
        // Three 4 MiB pieces: reads of larger tasks evict and refetch.
        cache_size: 12 * MIB as u64,
        read_ahead: 8 * MIB as u64,
        spool: None,
        free_space_of: None,
        path_mapping: PathMapper::default(),
        // Default piece length: 4 MiB for every size used here.
        import: ImportOptions::default(),
        fetch_timeout: Duration::from_secs(30),
        import_memory: dfcache_budget::MemoryBudget::new(256 << 20),
        negative_ttl: Duration::from_secs(5),
        task_cache_size: 1 << 30,
        prefetch_trees: true,
        owner: Owner { uid: 0, gid: 0 },
        modes: Modes::default(),
    }
}

async fn import(fs: &DfcacheFs, rng: &mut Rng, name: &OsString, data: &[u8]) -> String {
    let (_, opened) = fs
        .create(IMPORT_INO, name, 0o644, false, 0, 0)
        .await
        .expect("create");
    let fh = opened.fh;
    let mut pos = 0;
    while pos < data.len() {
        let n = (1 + rng.below(3 * MIB as u64) as usize).min(data.len() - pos);
        assert_eq!(
            fs.write(fh, pos as u64, data[pos..pos + n].to_vec()).await,
            Ok(n as u32)
        );
        pos += n;
    }
    fs.flush(fh).await.expect("flush");
    fs.release(fh).await.expect("release");
    let attr = fs
        .lookup(IMPORT_INO, name)
        .await
        .expect("lookup after import");
    assert_eq!(attr.size, data.len() as u64);
    assert_eq!(attr.perm & 0o222, 0, "a finished import is read-only");
    String::from_utf8(
        fs.getxattr(attr.ino, TASK_ID_XATTR.as_ref())
            .await
            .expect("xattr"),
    )
    .unwrap()
}

async fn read_range(fs: &DfcacheFs, ino: u64, offset: u64, size: u32) -> Vec<u8> {
    let opened = fs.open(ino, false, false).await.expect("open");
    let data = fs.read(opened.fh, offset, size).await.expect("read");
    fs.release(opened.fh).await.expect("release");
    data.to_vec()
}

async fn read_sequentially(fs: &DfcacheFs, rng: &mut Rng, ino: u64, len: usize) -> Vec<u8> {
    let opened = fs.open(ino, false, false).await.expect("open");
    let mut out = Vec::with_capacity(len);
    loop {
        let size = 1 + rng.below(2 * MIB as u64) as u32;
        let chunk = fs
            .read(opened.fh, out.len() as u64, size)
            .await
            .expect("read");
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    fs.release(opened.fh).await.expect("release");
    out
}

async fn check_listing(fs: &DfcacheFs, model: &Model) {
    let mut names: Vec<OsString> = fs
        .readdir(IMPORT_INO)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .filter(|n| n != "." && n != "..")
        .collect();
    names.sort();
    assert_eq!(names, model.imports.keys().cloned().collect::<Vec<_>>());
    let mut ids: Vec<String> = fs
        .readdir(TASKS_INO)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    ids.sort();
    assert_eq!(ids, model.tasks.keys().cloned().collect::<Vec<_>>());
}

async fn run(seed: u64, steps: usize) {
    let daemon = Running::start(ServeOptions::default()).await;
    let fs = DfcacheFs::new(std::sync::Arc::new(daemon.client()), config());
    let mut rng = Rng::new(seed);
    let mut model = Model::default();
    let sizes = [
        0,
        1,
        4 * MIB - 1,
        4 * MIB,
        4 * MIB + 1,
        9 * MIB + 77,
        13 * MIB,
    ];
    for step in 0..steps {
        match rng.below(8) {
            0 | 1 => {
                let name = OsString::from(format!("f{}", rng.below(6)));
                // An existing name is replaced: create() opens it with O_TRUNC.
                let size = sizes[rng.below(sizes.len() as u64) as usize];
                let data = rng.bytes(size);
                let id = import(&fs, &mut rng, &name, &data).await;
                assert_eq!(id, id_of(&data), "step {step}: imported id");
                model.tasks.insert(id, data.clone());
                model.imports.insert(name, data);
            }
            2 | 3 if !model.tasks.is_empty() => {
                let (id, data) = model
                    .tasks
                    .iter()
                    .nth(rng.below(model.tasks.len() as u64) as usize)
                    .unwrap();
                let attr = fs
                    .lookup(TASKS_INO, id.as_ref())
                    .await
                    .expect("lookup task");
                assert_eq!(attr.size, data.len() as u64);
                let offset = rng.below(data.len() as u64 + 10);
                let size = rng.below(6 * MIB as u64) as u32;
                let got = read_range(&fs, attr.ino, offset, size).await;
                let lo = (offset as usize).min(data.len());
                let hi = (offset as usize + size as usize).min(data.len());
                assert!(
                    got == data[lo..hi],
                    "step {step}: read {offset}+{size} of {id}"
                );
            }
            4 if !model.tasks.is_empty() => {
                let (id, data) = model
                    .tasks
                    .iter()
                    .nth(rng.below(model.tasks.len() as u64) as usize)
                    .unwrap();
                let attr = fs.lookup(TASKS_INO, id.as_ref()).await.unwrap();
                let got = read_sequentially(&fs, &mut rng, attr.ino, data.len()).await;
                assert!(got == *data, "step {step}: sequential read of {id}");
            }
            5 if !model.imports.is_empty() => {
                let name = model
                    .imports
                    .keys()
                    .nth(rng.below(model.imports.len() as u64) as usize)
                    .unwrap()
                    .clone();
                fs.unlink(IMPORT_INO, &name).await.expect("unlink");
                model.imports.remove(&name);
                assert_eq!(fs.lookup(IMPORT_INO, &name).await, Err(Errno::ENOENT));
            }
            6 if !model.imports.is_empty() => {
                let from = model
                    .imports
                    .keys()
                    .nth(rng.below(model.imports.len() as u64) as usize)
                    .unwrap()
                    .clone();
                let to = OsString::from(format!("f{}", rng.below(6)));
                fs.rename(IMPORT_INO, &from, IMPORT_INO, &to, false)
                    .await
                    .expect("rename");
                let data = model.imports.remove(&from).unwrap();
                model.imports.insert(to, data);
            }
            _ => {
                // Unknown ids and out-of-order writes are refused, and change nothing.
                let unknown = format!("{:064x}", rng.next_u64());
                assert_eq!(
                    fs.lookup(TASKS_INO, unknown.as_ref()).await,
                    Err(Errno::ENOENT)
                );
                let name = OsString::from("out-of-order");
                let fh = fs
                    .create(IMPORT_INO, &name, 0o644, false, 0, 0)
                    .await
                    .unwrap()
                    .1
                    .fh;
                assert_eq!(fs.write(fh, 4096, vec![1; 10]).await, Err(Errno::EINVAL));
                fs.unlink(IMPORT_INO, &name).await.unwrap();
                fs.release(fh).await.unwrap();
            }
        }
        check_listing(&fs, &model).await;
        assert!(
            fs.cache().cached_bytes() <= 12 * MIB as u64,
            "the cache outgrew its bound"
        );
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_match_the_model() {
    for seed in [1, 0xdecafbad, 42] {
        run(seed, 60).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_on_one_piece_make_one_request() {
    let daemon = Running::start(ServeOptions::default()).await;
    let mut rng = Rng::new(7);
    let data = rng.bytes(9 * MIB);
    let id = write_bytes(&daemon.client(), &data).await;
    let fs = std::sync::Arc::new(DfcacheFs::new(
        std::sync::Arc::new(daemon.client()),
        config(),
    ));
    let attr = fs.lookup(TASKS_INO, id.as_ref()).await.unwrap();
    // Eight readers start reading the same cold task at once (sequential
    // readers: their misses go through the piece cache; a random reader's
    // miss fetches just its range instead).
    let mut readers = Vec::new();
    for i in 0..8u64 {
        let fs = fs.clone();
        readers.push(tokio::spawn(async move {
            let opened = fs.open(attr.ino, false, false).await.unwrap();
            let offset = 0;
            let got = fs
                .read(opened.fh, offset, 4096 * (i as u32 + 1))
                .await
                .unwrap();
            fs.release(opened.fh).await.unwrap();
            (offset, got)
        }));
    }
    for r in readers {
        let (offset, got) = r.await.unwrap();
        assert!(!got.is_empty());
        assert!(got[..] == data[offset as usize..offset as usize + got.len()]);
    }
    // Piece 0 once for all eight, and piece 1 once (read-ahead).
    assert_eq!(fs.cache().fetch_count(), 2, "one daemon request per piece");
    daemon.stop().await;
}
