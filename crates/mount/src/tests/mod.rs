//! The file system's semantics on the in-memory fake daemon, without a
//! kernel: the import state machine, reads through the piece cache, and
//! every injected fault mapped to its errno. (`tests/fuse/` checks the
//! whole through real mounts.)

mod blocks;
mod faults;
mod imports;
mod local_files;
mod prefetch;
mod reads;
mod takeover;

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use crate::attr::{Modes, Owner};
use crate::daemon::fake::FakeDaemon;
use crate::daemon::ImportOptions;
use crate::{DfcacheFs, FsConfig};
use dfcache_client::mapping::PathMapper;

const MIB: u64 = 1 << 20;
/// How long an injected stall lasts (the fake's stand-in for the client's
/// deadline).
const DEADLINE: Duration = Duration::from_millis(50);
/// The mount's own no-progress window. The faults the tests inject end by
/// the fake's DEADLINE; this one only has to outlast a busy machine's
/// scheduling delays between two pieces of a healthy download (at 50 ms,
/// whole-task downloads timed out while other builds ran beside the tests).
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

fn config() -> FsConfig {
    FsConfig {
        // Three 4 MiB pieces cached, read-ahead of two.
        cache_size: 16 * MIB,
        read_ahead: 8 * MIB,
        spool: None,
        free_space_of: None,
        path_mapping: PathMapper::default(),
        import: ImportOptions::default(),
        fetch_timeout: FETCH_TIMEOUT,
        import_memory: dfcache_budget::MemoryBudget::new(64 * MIB),
        negative_ttl: Duration::from_secs(5),
        task_cache_size: 1 << 30,
        prefetch_trees: true,
        owner: Owner { uid: 0, gid: 0 },
        modes: Modes::default(),
    }
}

fn mounted(fake: &Arc<FakeDaemon>) -> DfcacheFs {
    DfcacheFs::new(fake.clone(), config())
}

/// A mount without read-ahead: a read meets the daemon itself (an
/// injected fault is not taken by a fetch ahead of it).
fn mounted_without_readahead(fake: &Arc<FakeDaemon>) -> DfcacheFs {
    let mut config = config();
    config.read_ahead = 0;
    DfcacheFs::new(fake.clone(), config)
}

/// Opens `tasks/<id>`; the handle.
async fn open_task(fs: &DfcacheFs, id: &str) -> u64 {
    let attr = fs
        .lookup(crate::inodes::TASKS_INO, &name(id))
        .await
        .unwrap();
    fs.open(attr.ino, false, false).await.unwrap().fh
}

fn name(s: &str) -> OsString {
    OsString::from(s)
}

/// `len` bytes that differ from those of another `seed`.
fn bytes(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
