//! A byte-bounded LRU of whole pieces, keyed by task and piece number.
//!
//! - A piece being fetched is readable as it lands: a read waits only for
//!   the bytes it needs, not for the whole piece (pieces are up to 64 MiB).
//! - Concurrent misses on one piece make one daemon request (readers share
//!   the fetch in flight); a failed fetch is not cached, so the next read
//!   retries (a daemon that comes back is used again).
//! - Bytes in flight are bounded by a semaphore, cached bytes by the LRU.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use lru::LruCache;
use tokio::sync::{watch, Semaphore};
use tracing::debug;

use crate::domain::piece::reported_or_default;
use crate::fs::daemon::{DaemonClient, ReadRange};
use crate::fs::error::{Errno, FsResult};

/// What the cache needs to know of a task to fetch its pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskGeometry {
    pub id: Arc<str>,
    pub content_length: u64,
    pub piece_length: u64,
}

impl TaskGeometry {
    /// A task as a daemon described it: its piece length, or the default
    /// rule's when it reported none.
    pub fn new(id: &str, content_length: u64, reported_piece_length: Option<u64>) -> Self {
        TaskGeometry {
            id: id.into(),
            content_length,
            piece_length: reported_or_default(reported_piece_length, content_length),
        }
    }

    pub fn piece_count(&self) -> u64 {
        self.content_length.div_ceil(self.piece_length.max(1))
    }

    /// Byte range `(offset, len)` of piece `index`.
    pub fn piece_range(&self, index: u64) -> (u64, u64) {
        let offset = index * self.piece_length;
        (
            offset,
            self.piece_length
                .min(self.content_length.saturating_sub(offset)),
        )
    }
}

type PieceKey = (Arc<str>, u64);

/// Budget granularity: in-flight bytes are counted in MiB.
const UNIT: u64 = 1 << 20;

/// A piece on its way: the chunks received so far, and how far they reach.
struct Flight {
    chunks: Mutex<Vec<Bytes>>,
    progress: watch::Sender<Progress>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Progress {
    Landed(usize),
    Done,
    Failed(Errno),
}

impl Flight {
    fn chunks(&self) -> std::sync::MutexGuard<'_, Vec<Bytes>> {
        self.chunks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes `from..to` out of the chunks (they reach at least `to`).
    fn slice(&self, from: usize, to: usize) -> Bytes {
        gather(&self.chunks(), from, to)
    }
}

pub struct PieceCache {
    client: Arc<dyn DaemonClient>,
    lru: Mutex<Lru>,
    /// Also guards the hand-over from a flight to the LRU: a reader looks
    /// in both under this lock, so it never misses a piece in between.
    inflight: Mutex<HashMap<PieceKey, Arc<Flight>>>,
    budget: Arc<Semaphore>,
    budget_units: u32,
    /// Read-ahead fetches at once: a few, in order, beat many in parallel
    /// (they share one socket and the demanded piece would queue behind).
    prefetch_slots: Arc<Semaphore>,
    fetches: AtomicU64,
}

struct Lru {
    map: LruCache<PieceKey, Bytes>,
    bytes: u64,
    capacity: u64,
}

/// Where a read finds its piece.
enum Found {
    Cached(Bytes),
    Flying(Arc<Flight>),
}

impl PieceCache {
    /// `capacity`: cached bytes; `inflight`: bytes being fetched at once.
    /// Fetches are bounded by the client's deadlines: a piece whose bytes
    /// stop coming fails, a slow one that keeps coming does not.
    pub fn new(client: Arc<dyn DaemonClient>, capacity: u64, inflight: u64) -> Self {
        let budget_units = u32::try_from(inflight.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX >> 4);
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
            prefetch_slots: Arc::new(Semaphore::new(prefetch_parallelism())),
            fetches: AtomicU64::new(0),
        }
    }

    /// How many pieces were fetched from the daemon so far.
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Drops the cached pieces of a task that is gone (deleted or expired).
    pub fn forget_task(&self, id: &str) {
        let mut lru = self.lock_lru();
        let gone: Vec<PieceKey> = lru
            .map
            .iter()
            .filter(|(key, _)| &*key.0 == id)
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            if let Some(piece) = lru.map.pop(&key) {
                lru.bytes -= piece.len() as u64;
            }
        }
        crate::metrics::mount().cache_holds(lru.bytes);
    }

    pub fn cached_bytes(&self) -> u64 {
        self.lock_lru().bytes
    }

    /// Bytes `from..to` of piece `index`, as soon as they are there.
    pub async fn read(
        self: &Arc<Self>,
        task: &TaskGeometry,
        index: u64,
        from: usize,
        to: usize,
    ) -> FsResult<Bytes> {
        let flight = match self.find_or_start(task, index) {
            Found::Cached(piece) => {
                return Ok(piece.slice(from.min(piece.len())..to.min(piece.len())))
            }
            Found::Flying(flight) => flight,
        };
        let mut progress = flight.progress.subscribe();
        loop {
            let state = progress.borrow_and_update().clone();
            match state {
                Progress::Landed(n) if n >= to => return Ok(flight.slice(from, to)),
                Progress::Done => {
                    let landed: usize = flight.chunks().iter().map(Bytes::len).sum();
                    if landed < to {
                        return Err(Errno::EIO.because(std::io::Error::other(format!(
                            "piece {index} of task {} ended at {landed} bytes, before {to}",
                            task.id
                        ))));
                    }
                    return Ok(flight.slice(from, to));
                }
                Progress::Failed(errno) => return Err(errno),
                Progress::Landed(_) => {}
            }
            if progress.changed().await.is_err() {
                // The fetch task ended without a final word (panicked).
                return Err(Errno::EIO);
            }
        }
    }

    /// Starts fetching piece `index` in the background if a read-ahead slot
    /// is free; returns whether it is cached or coming. Never waits.
    pub fn prefetch(self: &Arc<Self>, task: &TaskGeometry, index: u64) -> bool {
        if self.is_present(task, index) {
            return true;
        }
        let Ok(slot) = self.prefetch_slots.clone().try_acquire_owned() else {
            return false;
        };
        if let Found::Flying(flight) = self.find_or_start(task, index) {
            // The slot is held until the piece has landed.
            tokio::spawn(async move {
                let mut progress = flight.progress.subscribe();
                while matches!(*progress.borrow_and_update(), Progress::Landed(_)) {
                    if progress.changed().await.is_err() {
                        break;
                    }
                }
                drop(slot);
            });
        }
        true
    }

    /// Whether piece `index` is cached or being fetched.
    pub fn is_present(&self, task: &TaskGeometry, index: u64) -> bool {
        let key: PieceKey = (task.id.clone(), index);
        let inflight = self.lock_inflight();
        inflight.contains_key(&key) || self.lock_lru().map.contains(&key)
    }

    /// The cached piece, or the fetch in flight (started now if need be).
    fn find_or_start(self: &Arc<Self>, task: &TaskGeometry, index: u64) -> Found {
        let key: PieceKey = (task.id.clone(), index);
        let mut inflight = self.lock_inflight();
        if let Some(piece) = self.lock_lru().map.get(&key) {
            crate::metrics::mount().cache_hit();
            return Found::Cached(piece.clone());
        }
        if let Some(flight) = inflight.get(&key) {
            return Found::Flying(flight.clone());
        }
        let (progress, _) = watch::channel(Progress::Landed(0));
        let flight = Arc::new(Flight {
            chunks: Mutex::new(Vec::new()),
            progress,
        });
        inflight.insert(key.clone(), flight.clone());
        crate::metrics::mount().cache_miss();
        drop(inflight);
        let cache = self.clone();
        let task = task.clone();
        let filling = flight.clone();
        tokio::spawn(async move { cache.fill(task, index, key, filling).await });
        Found::Flying(flight)
    }

    /// Fetches a piece into its flight, then moves it into the LRU.
    async fn fill(
        self: Arc<Self>,
        task: TaskGeometry,
        index: u64,
        key: PieceKey,
        flight: Arc<Flight>,
    ) {
        let (offset, len) = task.piece_range(index);
        self.fetches.fetch_add(1, Ordering::Relaxed);
        debug!(task_id = %task.id, index, offset, len, "fetching piece");
        let result = self.bounded(&task, offset, len, |chunk| {
            let landed = {
                let mut chunks = flight.chunks();
                chunks.push(chunk);
                chunks.iter().map(Bytes::len).sum()
            };
            flight.progress.send_replace(Progress::Landed(landed));
        });
        let result = result.await;
        let mut inflight = self.lock_inflight();
        inflight.remove(&key);
        match result {
            Ok(()) => {
                // One exact-size copy: the chunks share tonic's larger
                // receive buffers, and caching them would pin those.
                let piece = {
                    let chunks = flight.chunks();
                    let total = chunks.iter().map(Bytes::len).sum();
                    gather(&chunks, 0, total)
                };
                if piece.len() as u64 == len {
                    self.insert(key, piece);
                }
                drop(inflight);
                flight.progress.send_replace(Progress::Done);
            }
            Err(errno) => {
                drop(inflight);
                flight.progress.send_replace(Progress::Failed(errno));
            }
        }
    }

    /// Bytes `offset..offset + len` straight from the daemon, not cached.
    pub async fn read_uncached(
        &self,
        task: &TaskGeometry,
        offset: u64,
        len: u64,
    ) -> FsResult<Bytes> {
        let mut out = BytesMut::with_capacity(len as usize);
        self.bounded(task, offset, len, |chunk| out.extend_from_slice(&chunk))
            .await?;
        if out.len() as u64 != len {
            return Err(Errno::EIO.because(std::io::Error::other(format!(
                "the daemon sent {} of {len} bytes at {offset} of task {}",
                out.len(),
                task.id
            ))));
        }
        Ok(out.freeze())
    }

    /// A range read within the in-flight budget; each chunk goes to `sink`
    /// as it arrives.
    async fn bounded(
        &self,
        task: &TaskGeometry,
        offset: u64,
        len: u64,
        mut sink: impl FnMut(Bytes),
    ) -> FsResult<()> {
        let units = u32::try_from(len.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.budget_units);
        let _permit = self
            .budget
            .acquire_many(units)
            .await
            .map_err(|_| Errno::EIO)?;
        let _in_flight = crate::metrics::mount().fetch_in_flight();
        let range = ReadRange {
            offset,
            length: Some(len),
        };
        let mut reader = self
            .client
            .read(&task.id, range)
            .await
            .map_err(Errno::from)?;
        while let Some(chunk) = reader.next_chunk().await.map_err(Errno::from)? {
            sink(chunk);
        }
        Ok(())
    }

    fn insert(&self, key: PieceKey, piece: Bytes) {
        let mut lru = self.lock_lru();
        let len = piece.len() as u64;
        if let Some(old) = lru.map.put(key, piece) {
            lru.bytes -= old.len() as u64;
        }
        lru.bytes += len;
        while lru.bytes > lru.capacity {
            match lru.map.pop_lru() {
                Some((_, evicted)) => {
                    lru.bytes -= evicted.len() as u64;
                    crate::metrics::mount().cache_evicted();
                }
                None => break,
            }
        }
        crate::metrics::mount().cache_holds(lru.bytes);
    }

    fn lock_lru(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_inflight(&self) -> std::sync::MutexGuard<'_, HashMap<PieceKey, Arc<Flight>>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Bytes `from..to` of the concatenation of `chunks` (zero-copy when they
/// lie in one chunk).
fn gather(chunks: &[Bytes], from: usize, to: usize) -> Bytes {
    let mut start = 0;
    let mut out: Option<BytesMut> = None;
    for chunk in chunks {
        let end = start + chunk.len();
        if end > from && start < to {
            let (lo, hi) = (from.max(start) - start, to.min(end) - start);
            if out.is_none() && start <= from && end >= to {
                return chunk.slice(lo..hi);
            }
            out.get_or_insert_with(|| BytesMut::with_capacity(to - from))
                .extend_from_slice(&chunk[lo..hi]);
        }
        if end >= to {
            break;
        }
        start = end;
    }
    out.map(BytesMut::freeze).unwrap_or_default()
}

/// Read-ahead fetches in flight at once (`DFCACHE_PREFETCH_PARALLELISM`
/// overrides, for tuning).
fn prefetch_parallelism() -> usize {
    std::env::var("DFCACHE_PREFETCH_PARALLELISM")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(2)
}

#[cfg(test)]
mod tests {
    use super::gather;
    use bytes::Bytes;

    #[test]
    fn gather_matches_the_flat_bytes() {
        let flat: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let chunks: Vec<Bytes> = [&flat[..1], &flat[1..300], &flat[300..301], &flat[301..]]
            .iter()
            .map(|p| Bytes::copy_from_slice(p))
            .collect();
        for (from, to) in [
            (0, 1000),
            (0, 1),
            (1, 300),
            (5, 6),
            (299, 302),
            (300, 301),
            (999, 1000),
            (7, 7),
        ] {
            assert_eq!(
                &gather(&chunks, from, to)[..],
                &flat[from..to],
                "{from}..{to}"
            );
        }
    }
}
