//! A byte-bounded LRU of whole pieces, keyed by task and piece number.
//!
//! - Concurrent misses on one piece make one daemon request (the waiters
//!   share a `OnceCell`); a failed fetch is not cached, so the next read
//!   retries (a daemon that comes back is used again).
//! - Bytes in flight are bounded by a semaphore, cached bytes by the LRU:
//!   memory is cache size plus in-flight budget, whatever the file size.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use lru::LruCache;
use tokio::sync::{OnceCell, Semaphore};
use tracing::{debug, warn};

use crate::fs::error::{Errno, FsResult};
use crate::grpc::client::{Client, ReadRange};

/// What the cache needs to know of a task to fetch its pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskGeometry {
    pub id: Arc<str>,
    pub content_length: u64,
    pub piece_length: u64,
}

impl TaskGeometry {
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
type Flight = Arc<OnceCell<FsResult<Bytes>>>;

/// Budget granularity: in-flight bytes are counted in MiB.
const UNIT: u64 = 1 << 20;

pub struct PieceCache {
    client: Client,
    lru: Mutex<Lru>,
    inflight: Mutex<HashMap<PieceKey, Flight>>,
    budget: Semaphore,
    budget_units: u32,
    /// Read-ahead fetches at once: a few, in order, beat many in parallel
    /// (they share one socket and the demanded piece would queue behind).
    prefetch_slots: Arc<Semaphore>,
    fetch_timeout: Duration,
    fetches: AtomicU64,
}

struct Lru {
    map: LruCache<PieceKey, Bytes>,
    bytes: u64,
    capacity: u64,
}

impl PieceCache {
    /// `capacity`: cached bytes; `inflight`: bytes being fetched at once.
    pub fn new(client: Client, capacity: u64, inflight: u64, fetch_timeout: Duration) -> Self {
        let budget_units = u32::try_from(inflight.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX >> 4);
        Self {
            client,
            lru: Mutex::new(Lru {
                map: LruCache::unbounded(),
                bytes: 0,
                capacity,
            }),
            inflight: Mutex::new(HashMap::new()),
            budget: Semaphore::new(budget_units as usize),
            budget_units,
            prefetch_slots: Arc::new(Semaphore::new(prefetch_parallelism())),
            fetch_timeout,
            fetches: AtomicU64::new(0),
        }
    }

    /// How many pieces were fetched from the daemon so far.
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    pub fn cached_bytes(&self) -> u64 {
        self.lock_lru().bytes
    }

    /// Piece `index` of `task`, from the cache or the daemon.
    pub async fn get(&self, task: &TaskGeometry, index: u64) -> FsResult<Bytes> {
        let key: PieceKey = (task.id.clone(), index);
        if let Some(piece) = self.lock_lru().map.get(&key) {
            return Ok(piece.clone());
        }
        let flight = self
            .lock_inflight()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        let result = flight.get_or_init(|| self.fetch(task, index)).await.clone();
        {
            let mut inflight = self.lock_inflight();
            if inflight.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                inflight.remove(&key);
                if let Ok(piece) = &result {
                    self.insert(key, piece.clone());
                }
            }
        }
        result
    }

    /// Starts fetching piece `index` in the background if a read-ahead slot
    /// is free; returns whether it did. Never waits.
    pub fn prefetch(self: &Arc<Self>, task: &TaskGeometry, index: u64) -> bool {
        if self.is_present(task, index) {
            return true;
        }
        let Ok(slot) = self.prefetch_slots.clone().try_acquire_owned() else {
            return false;
        };
        let cache = self.clone();
        let task = task.clone();
        tokio::spawn(async move {
            // A failed read-ahead is retried by the read that needs it.
            let _ = cache.get(&task, index).await;
            drop(slot);
        });
        true
    }

    /// Whether piece `index` is cached or being fetched.
    pub fn is_present(&self, task: &TaskGeometry, index: u64) -> bool {
        let key: PieceKey = (task.id.clone(), index);
        self.lock_lru().map.contains(&key) || self.lock_inflight().contains_key(&key)
    }

    /// Drops every cached piece of a task (its content is gone).
    pub fn forget_task(&self, id: &str) {
        let mut lru = self.lock_lru();
        let keys: Vec<PieceKey> = lru
            .map
            .iter()
            .filter(|((t, _), _)| &**t == id)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            if let Some(piece) = lru.map.pop(&key) {
                lru.bytes -= piece.len() as u64;
            }
        }
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
                Some((_, evicted)) => lru.bytes -= evicted.len() as u64,
                None => break,
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
        self.fetch_bounded(task, offset, len).await
    }

    async fn fetch(&self, task: &TaskGeometry, index: u64) -> FsResult<Bytes> {
        let (offset, len) = task.piece_range(index);
        self.fetches.fetch_add(1, Ordering::Relaxed);
        debug!(task_id = %task.id, index, offset, len, "fetching piece");
        self.fetch_bounded(task, offset, len).await
    }

    /// A range read within the in-flight budget and the fetch timeout.
    async fn fetch_bounded(&self, task: &TaskGeometry, offset: u64, len: u64) -> FsResult<Bytes> {
        let units = u32::try_from(len.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.budget_units);
        let _permit = self
            .budget
            .acquire_many(units)
            .await
            .map_err(|_| Errno::EIO)?;
        match tokio::time::timeout(self.fetch_timeout, self.fetch_range(task, offset, len)).await {
            Ok(result) => result,
            Err(_) => {
                warn!(task_id = %task.id, offset, len, timeout = ?self.fetch_timeout, "daemon read timed out; answering EIO");
                Err(Errno::EIO)
            }
        }
    }

    async fn fetch_range(&self, task: &TaskGeometry, offset: u64, len: u64) -> FsResult<Bytes> {
        let range = ReadRange {
            offset,
            length: Some(len),
        };
        let mut reader = self
            .client
            .read_task(&task.id, range)
            .await
            .map_err(Errno::from)?;
        // One exact-size copy: the chunks share tonic's larger receive
        // buffers, and caching them would pin those (RSS well past the
        // cache size).
        let mut piece = BytesMut::with_capacity(len as usize);
        while let Some((_, chunk)) = reader.next_chunk().await.map_err(Errno::from)? {
            piece.extend_from_slice(&chunk);
        }
        if piece.len() as u64 != len {
            warn!(task_id = %task.id, offset, got = piece.len(), len, "short piece; answering EIO");
            return Err(Errno::EIO);
        }
        Ok(piece.freeze())
    }

    fn lock_lru(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_inflight(&self) -> std::sync::MutexGuard<'_, HashMap<PieceKey, Flight>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }
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
