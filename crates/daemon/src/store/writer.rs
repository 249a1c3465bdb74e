//! A task being written: content streams to a temporary file while it is
//! hashed; only `finish` makes it a task (fsync, then rename into place).
//!
//! Two threads of its own do the work, so memory stays at a few chunks and
//! two blocks whatever the task size, all of it leased from the daemon's
//! memory budget (see `memory.rs`):
//! - the stage thread hashes each chunk and, while the chunk is still in
//!   the CPU's cache, copies it into an aligned block;
//! - the write thread writes full blocks to the disk (`O_DIRECT`, see
//!   [`ContentSink`]) and hands them back.
//!
//! With two blocks the next one fills while the previous one is written, so
//! the disk's latency never stalls the hashing. Large blocks matter on a
//! disk shared with the reads of the file being imported (`fio`, 2 GiB read
//! and written at once: 4 MiB requests 2.7 s, 16 MiB 1.8-2.0 s): blocks
//! start small and double up to the daemon's block size, each larger one
//! only when the budget has room for it at once (otherwise the writer goes
//! on with the blocks it has). The chunk queue is bounded in bytes by the
//! import's share. Dropping an unfinished writer removes its temporary
//! file: a broken stream leaves nothing behind.

use std::path::PathBuf;
use std::sync::mpsc as blocking;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use dfcache_budget::{Lease, MemoryBudget};
use tokio::sync::mpsc;

use crate::memory::{first_block, TransferMemory};
use crate::store::direct::ContentSink;
use crate::store::error::{StoreError, StoreResult};
use crate::store::{Store, TaskMeta};
use dfcache_direct_io::AlignedBuf;
use dfcache_wire::domain::piece::{
    default_piece_length, MAX_REQUESTED_PIECE_LENGTH, MIN_PIECE_LENGTH,
};
use dfcache_wire::domain::task_id::{TaskIdHasher, TaskIdInputs};
use dfcache_wire::domain::ttl::DEFAULT_TTL;

/// Longest tag accepted: it is hashed into the id and kept in metadata.
pub const MAX_TAG_LEN: usize = 1024;
/// Longest application name accepted.
pub const MAX_APPLICATION_LEN: usize = 1024;
/// Longest `content_for_calculating_task_id` accepted (a URL or a name,
/// never content).
pub const MAX_ID_CONTENT_LEN: usize = 4096;
/// Blocks per writer: one filling while the other is being written.
const STAGE_BLOCKS: usize = 2;
/// Chunks queued at most, however small: the queue is bounded in bytes.
const QUEUE_SLOTS: usize = 64;

/// What a writer is told before the content arrives.
#[derive(Debug, Clone, Default)]
pub struct WriteParams {
    /// Announced size; `None` when unknown (a file written through the mount).
    pub expected_length: Option<u64>,
    /// Piece length the client asked for; hashed into the id when set.
    pub piece_length: Option<u64>,
    pub persistent_replica_count: u64,
    pub tag: Option<String>,
    pub application: Option<String>,
    /// `None` or zero means the default TTL.
    pub ttl: Option<Duration>,
    pub content_for_calculating_task_id: Option<String>,
    /// The uid storing the task, recorded among its importers (who may
    /// delete it); None for a write with no caller (the store's own tests).
    pub importer: Option<u32>,
}

impl WriteParams {
    /// Checks every client-given field before anything is written.
    pub fn validate(&self) -> StoreResult<()> {
        for (what, value, max) in [
            ("tag", &self.tag, MAX_TAG_LEN),
            ("application", &self.application, MAX_APPLICATION_LEN),
            (
                "content_for_calculating_task_id",
                &self.content_for_calculating_task_id,
                MAX_ID_CONTENT_LEN,
            ),
        ] {
            if let Some(len) = value.as_ref().map(String::len).filter(|&n| n > max) {
                return Err(StoreError::InvalidArgument(format!(
                    "{what} of {len} bytes is longer than {max}"
                )));
            }
        }
        if let Some(len) = self.piece_length {
            if !(MIN_PIECE_LENGTH..=MAX_REQUESTED_PIECE_LENGTH).contains(&len) {
                return Err(StoreError::InvalidArgument(format!(
                    "piece length {len} is outside [{MIN_PIECE_LENGTH}, {MAX_REQUESTED_PIECE_LENGTH}]"
                )));
            }
        }
        Ok(())
    }
}

pub struct TaskWriter {
    store: Store,
    params: WriteParams,
    temp_path: PathBuf,
    chunk_tx: Option<mpsc::Sender<Bytes>>,
    /// The chunk queue's bytes: a chunk waits here for room.
    queue: MemoryBudget,
    /// What the import took of the budget and holds to its end (its
    /// receive window; the queue's and the blocks' parts are split off).
    _share: Lease,
    stage_thread: Option<JoinHandle<TaskIdHasher>>,
    file_thread: Option<JoinHandle<std::io::Result<ContentSink>>>,
    written: u64,
    finished: bool,
}

impl TaskWriter {
    /// `share` is what the import took of the budget, sized by
    /// `TransferMemory::import_share`.
    pub(super) fn start(
        store: Store,
        params: WriteParams,
        temp_path: PathBuf,
        memory: &TransferMemory,
        mut share: Lease,
    ) -> StoreResult<Self> {
        params.validate()?;
        let file = ContentSink::create(&temp_path)
            .map_err(|e| StoreError::io(format!("create {}", temp_path.display()), e))?;
        let inputs = TaskIdInputs {
            tag: params.tag.clone(),
            application: params.application.clone(),
            piece_length: params.piece_length,
            content_for_calculating_task_id: params.content_for_calculating_task_id.clone(),
        };
        let (chunk_tx, chunk_rx) = mpsc::channel(QUEUE_SLOTS);
        // Both hold every block at most once, so sends never wait.
        let (full_tx, full_rx) = blocking::sync_channel(STAGE_BLOCKS);
        let (empty_tx, empty_rx) = blocking::sync_channel(STAGE_BLOCKS);
        let queue = MemoryBudget::within(memory.queue_share(&mut share, params.expected_length));
        let first = first_block(params.expected_length);
        let first_leases =
            [(); STAGE_BLOCKS].map(|()| share.split(first as u64).unwrap_or_default());
        let blocks = Blocks {
            budget: memory.budget().clone(),
            largest: memory.block().max(first),
        };
        let stage_thread = spawn_named("dfcache-stage", move || {
            stage_loop(
                TaskIdHasher::new(inputs),
                (first, first_leases),
                blocks,
                chunk_rx,
                full_tx,
                empty_rx,
            )
        })?;
        let file_thread =
            spawn_named("dfcache-write", move || write_loop(file, full_rx, empty_tx))?;
        Ok(Self {
            store,
            params,
            temp_path,
            chunk_tx: Some(chunk_tx),
            queue,
            _share: share,
            stage_thread: Some(stage_thread),
            file_thread: Some(file_thread),
            written: 0,
            finished: false,
        })
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Queues one chunk; waits while the workers are behind (backpressure:
    /// the queue holds a few chunks' bytes at most).
    pub async fn write(&mut self, chunk: Bytes) -> StoreResult<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let len = chunk.len() as u64;
        if let Some(expected) = self.params.expected_length {
            if self.written + len > expected {
                return Err(StoreError::InvalidArgument(format!(
                    "more content than the announced {expected} bytes"
                )));
            }
        }
        let Some(chunk_tx) = &self.chunk_tx else {
            return Err(StoreError::InvalidArgument("write after finish".into()));
        };
        // Given back when the stage thread has copied the chunk.
        let room = self
            .queue
            .acquire(TransferMemory::chunk_cost(chunk.len()))
            .await;
        if chunk_tx.send(room.attach(chunk)).await.is_err() {
            // A worker stopped: its error comes out of finish_workers.
            return Err(self.finish_workers().await.err().unwrap_or_else(|| {
                StoreError::io(
                    "write task content",
                    std::io::Error::other("writer stopped"),
                )
            }));
        }
        self.written += len;
        Ok(())
    }

    /// Flushes, fsyncs and commits the task; returns what was stored.
    pub async fn finish(mut self) -> StoreResult<TaskMeta> {
        if let Some(expected) = self.params.expected_length {
            if self.written != expected {
                return Err(StoreError::InvalidArgument(format!(
                    "stream ended after {} of the announced {expected} bytes",
                    self.written
                )));
            }
        }
        let task_id = self.finish_workers().await?;
        let piece_length = self
            .params
            .piece_length
            .unwrap_or_else(|| default_piece_length(self.written));
        let now = std::time::SystemTime::now();
        let meta = TaskMeta {
            id: task_id,
            content_length: self.written,
            piece_length,
            persistent_replica_count: self.params.persistent_replica_count,
            tag: self.params.tag.clone(),
            application: self.params.application.clone(),
            ttl: self
                .params
                .ttl
                .filter(|t| !t.is_zero())
                .unwrap_or(DEFAULT_TTL),
            created_at: now,
            updated_at: now,
            importers: self.params.importer.into_iter().collect(),
        };
        let store = self.store.clone();
        let temp = self.temp_path.clone();
        let committed = tokio::task::spawn_blocking(move || store.commit(&temp, meta))
            .await
            .map_err(|e| StoreError::io("commit task", std::io::Error::other(e)))?;
        // Commit moved or removed the temporary file either way.
        self.finished = true;
        committed
    }

    /// Closes the queues, waits for both workers, flushes and fsyncs the
    /// file and returns the task id.
    async fn finish_workers(&mut self) -> StoreResult<String> {
        self.chunk_tx.take();
        let stage_thread = self.stage_thread.take();
        let file_thread = self.file_thread.take();
        let (hasher, file) = tokio::task::spawn_blocking(move || {
            let hasher = stage_thread.map(|t| t.join());
            let file = file_thread.map(|t| t.join());
            (hasher, file)
        })
        .await
        .map_err(|e| StoreError::io("join writer threads", std::io::Error::other(e)))?;
        let worker_died = || {
            StoreError::io(
                "write task content",
                std::io::Error::other("worker thread died"),
            )
        };
        let sink = file.ok_or_else(worker_died)?.map_err(|_| worker_died())?;
        let sink =
            sink.map_err(|e| StoreError::io(format!("write {}", self.temp_path.display()), e))?;
        let hasher = hasher.ok_or_else(worker_died)?.map_err(|_| worker_died())?;
        let temp = self.temp_path.clone();
        tokio::task::spawn_blocking(move || sink.finish())
            .await
            .map_err(|e| StoreError::io("fsync", std::io::Error::other(e)))?
            .map_err(|e| StoreError::io(format!("flush and fsync {}", temp.display()), e))?;
        Ok(hasher.finish())
    }
}

impl Drop for TaskWriter {
    fn drop(&mut self) {
        if !self.finished {
            // Closing the queue ends the workers; the unlinked file goes
            // away when the write thread drops it.
            self.chunk_tx.take();
            let _ = std::fs::remove_file(&self.temp_path);
        }
    }
}

fn spawn_named<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> StoreResult<JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| StoreError::io("spawn writer thread", e))
}

/// Where an import's blocks come from: the budget, for blocks larger than
/// the first two (which the import's share paid for).
struct Blocks {
    budget: MemoryBudget,
    /// The daemon's block size: blocks grow no larger.
    largest: usize,
}

/// A block and what it holds of the budget.
struct Staged {
    buf: AlignedBuf,
    _lease: Lease,
}

/// Hashes every chunk and stages it into blocks for the write thread; the
/// last, partial block goes when the chunks end. Stops early when the write
/// thread has failed (its error is what the writer reports).
fn stage_loop(
    mut hasher: TaskIdHasher,
    (first, mut first_leases): (usize, [Lease; STAGE_BLOCKS]),
    blocks: Blocks,
    mut chunks: mpsc::Receiver<Bytes>,
    full: blocking::SyncSender<Staged>,
    empty: blocking::Receiver<Staged>,
) -> TaskIdHasher {
    let mut allocated = 1;
    let mut block = Staged {
        buf: AlignedBuf::new(first),
        _lease: std::mem::take(&mut first_leases[0]),
    };
    let mut next_size = (first * 2).min(blocks.largest);
    while let Some(chunk) = chunks.blocking_recv() {
        // Hash first: the copy then reads the chunk from the CPU's cache.
        hasher.update(&chunk);
        let mut data = &chunk[..];
        while !data.is_empty() {
            data = &data[block.buf.fill(data)..];
            if block.buf.is_full() {
                let reused = if allocated < STAGE_BLOCKS {
                    allocated += 1;
                    Staged {
                        buf: AlignedBuf::new(first),
                        _lease: std::mem::take(&mut first_leases[1]),
                    }
                } else {
                    match empty.recv() {
                        Ok(reused) => reused,
                        Err(_) => return hasher,
                    }
                };
                let next = blocks.grow(reused, next_size);
                next_size = (next.buf.capacity() * 2).min(blocks.largest);
                if full.send(std::mem::replace(&mut block, next)).is_err() {
                    return hasher;
                }
            }
        }
    }
    if !block.buf.is_empty() {
        let _ = full.send(block);
    }
    hasher
}

impl Blocks {
    /// `reused`, or a block of `size` in its place when it is smaller and
    /// the budget has room for the larger one now.
    fn grow(&self, reused: Staged, size: usize) -> Staged {
        if reused.buf.capacity() >= size {
            return reused;
        }
        match self.budget.try_acquire(size as u64) {
            Some(lease) => Staged {
                buf: AlignedBuf::new(size),
                _lease: lease,
            },
            None => reused,
        }
    }
}

/// Writes every block and hands it back for reuse; the caller finishes the
/// sink only when the task is complete, so an aborted write never pays for
/// an fsync.
fn write_loop(
    mut sink: ContentSink,
    full: blocking::Receiver<Staged>,
    empty: blocking::SyncSender<Staged>,
) -> std::io::Result<ContentSink> {
    for mut block in full {
        sink.append(&block.buf)?;
        block.buf.clear();
        // The stage thread is gone once it has sent its last block.
        let _ = empty.send(block);
    }
    Ok(sink)
}
