//! A byte-bounded LRU of spans of task content, keyed by task and byte
//! range: 4 MiB blocks aligned in the task (what sequential readers and
//! read-ahead fetch), and small aligned spans around random misses.
//!
//! The unit is not the piece. Pieces are up to 64 MiB by the default rule
//! (1 GiB when asked): caching and fetching whole pieces made a 64 MiB
//! cache hold less than one piece, so a piece was evicted as it landed and
//! fetched again (16 GiB task: 228 MB/s, falling as the read went on), and
//! the mount's memory grew past the cache size by whole pieces (407 MB of
//! RSS with a 256 MiB cache). Blocks keep every fetch and every eviction
//! at 4 MiB whatever the piece length; the daemon serves any byte range.
//!
//! - A span being fetched is readable as it lands (see `flight.rs`).
//! - Concurrent misses on one span make one daemon request; a failed fetch
//!   is not cached, so the next read retries.
//! - Memory: cached bytes are bounded by the LRU's capacity, bytes being
//!   fetched by the in-flight budget (a fetch holds its share from before
//!   its request until its span is in the LRU); the two add up to
//!   `--cache-size`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use lru::LruCache;
use tokio::sync::Semaphore;
use tracing::{debug, debug_span, Instrument};

use crate::daemon::{DaemonClient, ReadRange};
use crate::error::{Errno, FsResult};
use crate::read::flight::{Chunks, Flight};
use crate::read::geometry::TaskGeometry;

/// Bytes per block: what one sequential fetch asks of the daemon. 4 MiB
/// is the smallest piece length, whose pieces read at ~0.9 GB/s through
/// the mount (2 GiB task); it is also the daemon's threshold for reading
/// a range with O_DIRECT (`store/range.rs`).
pub const BLOCK: u64 = 4 << 20;

/// Alignment of the span fetched for a random miss: the page the kernel
/// asks for, so concurrent readers of one page share a request and nothing
/// more is moved. Spans of 16 KiB, meant to let readers of nearby bytes
/// share, lost to exact pages once the daemon answered short ranges
/// without a task (fio psync 4 KiB random reads, cold, one quiet run each,
/// 16 KiB vs 4 KiB spans: 1 reader 3,900-4,416 vs 4,550-4,726 IOPS,
/// 4 readers 7,034-7,457 vs 8,523-8,558, 16 readers 10,494-10,610 vs
/// 11,238-11,300). Uniform random readers rarely land near each other; a
/// sequential reader gets blocks and read-ahead instead.
pub const SMALL_SPAN: u64 = 4 << 10;

/// Most blocks one read-ahead request asks for: 16 MiB, the daemon's
/// O_DIRECT read size (`store/range.rs`: a 2 GiB `dd iflag=direct` took
/// 1.68 s in 1 MiB reads, 1.15 s in 16 MiB ones), so a cold read keeps
/// the disk busy with large reads. Each block of the run is still its own
/// flight and cache entry.
const RUN_BLOCKS: u64 = 4;

/// Budget granularity: in-flight bytes are counted in 64 KiB units.
const UNIT: u64 = 64 << 10;

/// A span of a task: `start..start + len`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SpanKey {
    pub id: Arc<str>,
    pub start: u64,
    pub len: u64,
}

/// Where a read finds its span.
enum Found {
    Cached(Chunks),
    Flying(Arc<Flight>),
    /// A new fetch, for the caller to run (see `Fetch::Inline`).
    Started(SpanKey, Arc<Flight>),
}

/// Who runs a new fetch.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fetch {
    /// A task of its own: read-ahead, and blocks (whose readers are
    /// answered as their chunk lands, before the block is whole).
    Spawned,
    /// The reader's own task: a random miss. Handing a small fetch to
    /// another task costs a wake-up of the other worker thread each way:
    /// fio, 1 reader, daemon file cached, spawned 4 KiB fetches did 1,500–
    /// 2,200 IOPS where the old inline fetch did ~4,400 in the same runs.
    Inline,
}

pub struct BlockCache {
    client: Arc<dyn DaemonClient>,
    lru: Mutex<Lru>,
    /// Also guards the hand-over from a flight to the LRU: a reader looks
    /// in both under this lock, so it never misses a span in between.
    inflight: Mutex<HashMap<SpanKey, Arc<Flight>>>,
    budget: Arc<Semaphore>,
    budget_units: u32,
    /// Read-ahead fetches at once: a few, in order, beat many in parallel
    /// (they share one socket and the demanded block would queue behind).
    prefetch_slots: Arc<Semaphore>,
    fetches: AtomicU64,
}

struct Lru {
    map: LruCache<SpanKey, Chunks>,
    bytes: u64,
    capacity: u64,
}

impl BlockCache {
    /// `capacity`: cached bytes; `inflight`: bytes being fetched at once.
    /// Fetches are bounded by the client's deadlines: a span whose bytes
    /// stop coming fails, a slow one that keeps coming does not.
    pub fn new(client: Arc<dyn DaemonClient>, capacity: u64, inflight: u64) -> Self {
        // At least one block can always be fetched.
        let units = inflight.max(BLOCK).div_ceil(UNIT);
        let budget_units = u32::try_from(units).unwrap_or(u32::MAX >> 4);
        // No more read-ahead runs at once than the budget holds: more would
        // land blocks faster than a small cache keeps them, and a block
        // evicted before it is read is fetched again.
        let run_bytes = max_run(budget_units) * BLOCK;
        let slots = prefetch_parallelism()
            .min(usize::try_from(u64::from(budget_units) * UNIT / run_bytes).unwrap_or(usize::MAX))
            .max(1);
        Self {
            client,
            lru: Mutex::new(Lru {
                map: LruCache::unbounded(),
                bytes: 0,
                capacity,
            }),
            inflight: Mutex::new(HashMap::new()),
            budget: Arc::new(Semaphore::new(budget_units as usize)),
            budget_units,
            prefetch_slots: Arc::new(Semaphore::new(slots)),
            fetches: AtomicU64::new(0),
        }
    }

    /// How many span fetches were started so far.
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Bytes in the LRU (fetches in flight are bounded apart).
    pub fn cached_bytes(&self) -> u64 {
        self.lock_lru().bytes
    }

    /// Bytes the fetches in flight may hold at most, now.
    pub fn inflight_bytes(&self) -> u64 {
        let free = self.budget.available_permits() as u64;
        (u64::from(self.budget_units) - free.min(u64::from(self.budget_units))) * UNIT
    }

    /// Drops the cached spans of a task that is gone (deleted or expired).
    pub fn forget_task(&self, id: &str) {
        let mut lru = self.lock_lru();
        let gone: Vec<SpanKey> = lru
            .map
            .iter()
            .filter(|(key, _)| &*key.id == id)
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            if let Some(span) = lru.map.pop(&key) {
                lru.bytes -= span.len() as u64;
            }
        }
        dfcache_metrics::mount().cache_holds(lru.bytes);
    }

    /// The block holding `offset`.
    pub fn block_of(offset: u64) -> u64 {
        offset / BLOCK
    }

    /// Bytes `offset..end` of block `index` (they lie in it), as soon as
    /// they are there.
    pub async fn read_block(
        self: &Arc<Self>,
        task: &TaskGeometry,
        index: u64,
        offset: u64,
        end: u64,
    ) -> FsResult<Bytes> {
        let key = block_key(task, index);
        let (from, to) = ((offset - key.start) as usize, (end - key.start) as usize);
        self.read_span(key, from, to, Fetch::Spawned).await
    }

    /// Bytes `offset..end` for a random reader whose blocks are neither
    /// cached nor coming: from the small aligned span around them, which
    /// concurrent misses nearby share and the cache keeps.
    pub async fn read_random(
        self: &Arc<Self>,
        task: &TaskGeometry,
        offset: u64,
        end: u64,
    ) -> FsResult<Bytes> {
        let start = offset / SMALL_SPAN * SMALL_SPAN;
        let span_end = end.div_ceil(SMALL_SPAN).saturating_mul(SMALL_SPAN);
        let key = SpanKey {
            id: task.id.clone(),
            start,
            len: span_end.min(task.content_length) - start,
        };
        let (from, to) = ((offset - start) as usize, (end - start) as usize);
        self.read_span(key, from, to, Fetch::Inline).await
    }

    async fn read_span(
        self: &Arc<Self>,
        key: SpanKey,
        from: usize,
        to: usize,
        fetch: Fetch,
    ) -> FsResult<Bytes> {
        match self.find_or_start(key, fetch) {
            Found::Cached(span) => {
                dfcache_metrics::mount().cache_hit();
                Ok(span.slice(from, to))
            }
            Found::Flying(flight) => flight.read(from, to).await,
            Found::Started(key, flight) => {
                self.fill(vec![(key, flight.clone())]).await;
                flight.read(from, to).await
            }
        }
    }

    /// Starts fetching, in one request, up to `count` blocks from `index`
    /// that are neither cached nor coming (stopping at the first that is),
    /// if a read-ahead slot is free. Returns how many blocks from `index`
    /// are now cached or coming: 0 when no slot was free. Never waits.
    pub fn prefetch(self: &Arc<Self>, task: &TaskGeometry, index: u64, count: u64) -> u64 {
        if self.is_present(task, index) {
            return 1;
        }
        let Ok(slot) = self.prefetch_slots.clone().try_acquire_owned() else {
            return 0;
        };
        let last_block = task.content_length.div_ceil(BLOCK);
        let count = count
            .clamp(1, max_run(self.budget_units))
            .min(last_block - index);
        let mut run = Vec::new();
        {
            let mut inflight = self.lock_inflight();
            let lru = self.lock_lru();
            for i in index..index + count {
                let key = block_key(task, i);
                if inflight.contains_key(&key) || lru.map.contains(&key) {
                    break;
                }
                let flight = Flight::new();
                inflight.insert(key.clone(), flight.clone());
                run.push((key, flight));
            }
        }
        let started = run.len() as u64;
        let Some(last) = run.last().map(|(_, flight)| flight.clone()) else {
            return 1;
        };
        let cache = self.clone();
        let span = debug_span!("prefetch", task_id = %task.id);
        tokio::spawn(
            async move {
                cache.fill(run).await;
                // The slot is held until the run has landed.
                last.settled().await;
                drop(slot);
            }
            .instrument(span),
        );
        started
    }

    /// Whether block `index` is cached or being fetched.
    pub fn is_present(&self, task: &TaskGeometry, index: u64) -> bool {
        let key = block_key(task, index);
        let inflight = self.lock_inflight();
        inflight.contains_key(&key) || self.lock_lru().map.contains(&key)
    }

    /// The cached span, or the fetch in flight (started now if need be).
    fn find_or_start(self: &Arc<Self>, key: SpanKey, fetch: Fetch) -> Found {
        let mut inflight = self.lock_inflight();
        if let Some(span) = self.lock_lru().map.get(&key) {
            return Found::Cached(span.clone());
        }
        if let Some(flight) = inflight.get(&key) {
            return Found::Flying(flight.clone());
        }
        let flight = Flight::new();
        inflight.insert(key.clone(), flight.clone());
        drop(inflight);
        if fetch == Fetch::Inline {
            return Found::Started(key, flight);
        }
        let cache = self.clone();
        let filling = flight.clone();
        let span = debug_span!("fetch", task_id = %key.id);
        tokio::spawn(async move { cache.fill(vec![(key, filling)]).await }.instrument(span));
        Found::Flying(flight)
    }

    /// Fetches consecutive spans of one task in one range read; each
    /// span moves into the LRU as soon as its last byte has landed.
    async fn fill(&self, run: Vec<(SpanKey, Arc<Flight>)>) {
        // Should this future be dropped half-way (a reader's task that is
        // cancelled), readers of the spans not done get EIO, not a hang.
        let mut run = Run {
            cache: self,
            spans: run,
            done: 0,
        };
        let (Some((first, _)), Some((last, _))) = (run.spans.first(), run.spans.last()) else {
            return;
        };
        let (id, start) = (first.id.clone(), first.start);
        let len = last.start + last.len - start;
        // The budget is held until the spans are in the LRU (or dropped),
        // so cached plus in-flight bytes never pass --cache-size.
        let units = u32::try_from(len.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.budget_units);
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let Ok(_permit) = self.budget.acquire_many(units).await else {
            return;
        };
        let metrics = dfcache_metrics::mount();
        for _ in &run.spans {
            metrics.cache_miss();
        }
        let _in_flight = metrics.fetch_in_flight();
        debug!(task_id = %id, offset = start, len, "fetching");
        let result = self.stream_into(&id, start, len, &mut run).await;
        run.end(result);
    }

    /// One range read; each chunk lands in the span it belongs to.
    async fn stream_into(&self, id: &str, start: u64, len: u64, run: &mut Run<'_>) -> FsResult<()> {
        let range = ReadRange {
            offset: start,
            length: Some(len),
        };
        let mut reader = self.client.read(id, range).await.map_err(Errno::from)?;
        while let Some(chunk) = reader.next_chunk().await.map_err(Errno::from)? {
            run.land(chunk)?;
        }
        Ok(())
    }

    pub(crate) fn insert(&self, key: SpanKey, span: Chunks) {
        let mut lru = self.lock_lru();
        let len = span.len() as u64;
        if let Some(old) = lru.map.put(key, span) {
            lru.bytes -= old.len() as u64;
        }
        lru.bytes += len;
        while lru.bytes > lru.capacity {
            match lru.map.pop_lru() {
                Some((_, evicted)) => {
                    lru.bytes -= evicted.len() as u64;
                    dfcache_metrics::mount().cache_evicted();
                }
                None => break,
            }
        }
        dfcache_metrics::mount().cache_holds(lru.bytes);
    }

    fn lock_lru(&self) -> MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn lock_inflight(&self) -> MutexGuard<'_, HashMap<SpanKey, Arc<Flight>>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Block `index` of a task (the last one may be short).
fn block_key(task: &TaskGeometry, index: u64) -> SpanKey {
    let start = index * BLOCK;
    SpanKey {
        id: task.id.clone(),
        start,
        len: BLOCK.min(task.content_length.saturating_sub(start)),
    }
}

/// Most blocks one read-ahead request asks for with a budget of
/// `budget_units`: half the budget (two runs fit in it), up to `RUN_BLOCKS`.
fn max_run(budget_units: u32) -> u64 {
    (u64::from(budget_units) * UNIT / BLOCK / 2).clamp(1, RUN_BLOCKS)
}

/// Read-ahead fetches in flight at once (`DFCACHE_PREFETCH_PARALLELISM`
/// overrides, for tuning). Three keep a cold disk busier than two: a cold
/// 2 GiB `dd` through a mount on a separate daemon, 9 interleaved pairs,
/// took 1.80-2.35 s with three against 1.92-2.74 s with two (four: no
/// better than three). A small cache gets fewer (see `BlockCache::new`).
fn prefetch_parallelism() -> usize {
    std::env::var("DFCACHE_PREFETCH_PARALLELISM")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3)
}

// The spans of one daemon read: consecutive blocks of a read-ahead run
// (or a single span), each landing in its own flight and handed to the
// cache as soon as its last byte is in, before the rest of the run.

/// The spans of one fetch, landing in order. Spans not done when it is
/// dropped are failed and forgotten.
pub(crate) struct Run<'a> {
    pub cache: &'a BlockCache,
    pub spans: Vec<(SpanKey, Arc<Flight>)>,
    /// Spans complete (and handed to the LRU) so far.
    pub done: usize,
}

impl Run<'_> {
    /// Lands a chunk, split where it crosses from one span to the next.
    pub fn land(&mut self, mut chunk: Bytes) -> FsResult<()> {
        while !chunk.is_empty() {
            let Some((key, flight)) = self.spans.get(self.done) else {
                return Err(Errno::EIO.because(std::io::Error::other(
                    "the daemon sent more bytes than the range asked",
                )));
            };
            let room = (key.len - flight.landed() as u64) as usize;
            let part = chunk.split_to(room.min(chunk.len()));
            flight.land(part);
            if flight.landed() as u64 == key.len {
                self.complete();
            }
        }
        Ok(())
    }

    /// The next span came whole: its readers are answered from the LRU.
    fn complete(&mut self) {
        let Some((key, flight)) = self.spans.get(self.done) else {
            return;
        };
        let mut inflight = self.cache.lock_inflight();
        inflight.remove(key);
        let span = flight.finish();
        self.cache.insert(key.clone(), span);
        self.done += 1;
    }

    /// The read ended: spans still short are finished as they are (their
    /// readers get EIO past what came) or failed with the read's error.
    pub fn end(&mut self, result: FsResult<()>) {
        let mut inflight = self.cache.lock_inflight();
        for (key, flight) in self.spans.drain(self.done..) {
            inflight.remove(&key);
            match &result {
                Ok(()) => {
                    flight.finish();
                }
                Err(errno) => flight.fail(errno.clone()),
            }
        }
    }
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        if self.done < self.spans.len() {
            self.end(Err(Errno::EIO));
        }
    }
}
