//! Dropping a big task's pages from the kernel's page cache behind a
//! sequential reader, as `dd iflag=nocache` does for what it reads.
//!
//! Measured with bench-scale's geometry (a 16 GiB task with 64 MiB pieces,
//! a mount on a separate daemon, `dd bs=1M` per GiB, `--cache-size
//! 64mib`): a plain read ran 804 852 809 765 MB/s, then fell to 473-601
//! once 4 to 10 GiB of the task sat in the kernel's page cache, and stayed
//! there (four runs, with 5 or 11 GiB of memory touched just before);
//! the same read with `iflag=nocache` ran 713-929 MB/s from the first GiB
//! to the last, twice. `perf -a` of a 1 GiB step says why: the kernel's
//! copy of the mount's replies into new page-cache pages (`__pi_memcpy`
//! under `fuse_copy_folio`) was 5.6% of the samples in the 2nd GiB and 43%
//! in the 10th, for the same bytes. New pages past the first few GiB are,
//! most likely, memory this VM has reported free to its host, and the
//! first write to each faults in the host (docs/BENCHMARKING.md).
//! A disk read into the page cache does not fall the same way (the host
//! fills those pages itself). Dropped pages return to the free lists still
//! backed, so the next replies land in them. And a task this size does not
//! stay cached for a re-read anyway; a smaller one (under the bound, a
//! quarter of the memory by default) keeps every page.

use std::sync::{Arc, Mutex, OnceLock};

use crate::read::readahead::Readahead;

/// Where dropped ranges go: the kernel, through the FUSE session.
pub trait PageCache: Send + Sync {
    /// Drops the inode's cached pages in `offset..offset + len`.
    fn drop_range(&self, ino: u64, offset: u64, len: u64);
}

/// Most bytes kept behind a reader: the kernel's read-ahead and a
/// reader's small steps back still find them.
const MAX_LAG: u64 = 256 << 20;
/// Most bytes dropped at once (one notification each).
const MAX_STEP: u64 = 64 << 20;

pub struct DropBehind {
    /// Tasks longer than this are dropped behind; 0: none are.
    above: u64,
    page_cache: OnceLock<Arc<dyn PageCache>>,
}

impl DropBehind {
    pub fn new(above: u64) -> Self {
        Self {
            above,
            page_cache: OnceLock::new(),
        }
    }

    /// Where to send drops (the mounted session); until then none are sent.
    pub fn attach(&self, page_cache: Arc<dyn PageCache>) {
        let _ = self.page_cache.set(page_cache);
    }

    /// After a read of the task `ino` (`content_length` bytes) by the open
    /// file whose run `readahead` tracks: drops what a sequential reader
    /// left far enough behind. The kept distance scales down with the bound
    /// (a quarter of it), so a small bound drops small tasks too.
    pub fn after_read(&self, ino: u64, content_length: u64, readahead: &Mutex<Readahead>) {
        if self.above == 0 || content_length <= self.above {
            return;
        }
        let Some(page_cache) = self.page_cache.get() else {
            return;
        };
        let lag = MAX_LAG.min(self.above / 4);
        let step = MAX_STEP.min(self.above / 16).max(1);
        let range = readahead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .behind(lag, step);
        if let Some((from, to)) = range {
            let page_cache = page_cache.clone();
            // The kernel may wait for page locks while it drops: never on
            // a task that answers reads.
            tokio::task::spawn_blocking(move || page_cache.drop_range(ino, from, to - from));
        }
    }
}

/// The default bound: a quarter of this machine's memory.
pub fn quarter_of_memory() -> u64 {
    // SAFETY: sysinfo only fills the struct it is given.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return 0;
    }
    (info.totalram as u64).saturating_mul(u64::from(info.mem_unit)) / 4
}
