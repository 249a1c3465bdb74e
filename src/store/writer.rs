//! A task being written: content streams to a temporary file while it is
//! hashed; only `finish` makes it a task (fsync, then rename into place).
//!
//! Hashing and file writes run on two threads of their own, fed by bounded
//! channels, so a stream is hashed and written in parallel and memory stays
//! at a few chunks whatever the task size. Dropping an unfinished writer
//! removes its temporary file: a broken stream leaves nothing behind.

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::store::direct::ContentSink;
use crate::store::error::{StoreError, StoreResult};
use crate::store::piece::{default_piece_length, MIN_PIECE_LENGTH};
use crate::store::task_id::{TaskIdHasher, TaskIdInputs};
use crate::store::{Store, TaskMeta};

/// Largest piece length a client may ask for: pieces are cached whole.
pub const MAX_REQUESTED_PIECE_LENGTH: u64 = 1 << 30;
/// Chunks queued per worker thread before the stream is slowed down.
const QUEUE_DEPTH: usize = 4;
/// TTL of a task whose writer did not give one (dfcache's default).
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

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
}

impl WriteParams {
    pub fn validate(&self) -> StoreResult<()> {
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
    hash_tx: Option<mpsc::Sender<Bytes>>,
    file_tx: Option<mpsc::Sender<Bytes>>,
    hash_thread: Option<JoinHandle<TaskIdHasher>>,
    file_thread: Option<JoinHandle<std::io::Result<ContentSink>>>,
    written: u64,
    finished: bool,
}

impl TaskWriter {
    pub(super) fn start(
        store: Store,
        params: WriteParams,
        temp_path: PathBuf,
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
        let (hash_tx, hash_rx) = mpsc::channel(QUEUE_DEPTH);
        let (file_tx, file_rx) = mpsc::channel(QUEUE_DEPTH);
        let hash_thread = spawn_named("dfcache-hash", move || {
            hash_loop(TaskIdHasher::new(inputs), hash_rx)
        })?;
        let file_thread = spawn_named("dfcache-write", move || write_loop(file, file_rx))?;
        Ok(Self {
            store,
            params,
            temp_path,
            hash_tx: Some(hash_tx),
            file_tx: Some(file_tx),
            hash_thread: Some(hash_thread),
            file_thread: Some(file_thread),
            written: 0,
            finished: false,
        })
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Queues one chunk; waits while the workers are behind (backpressure).
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
        let (Some(hash_tx), Some(file_tx)) = (&self.hash_tx, &self.file_tx) else {
            return Err(StoreError::InvalidArgument("write after finish".into()));
        };
        let sent = hash_tx.send(chunk.clone()).await.is_ok() && file_tx.send(chunk).await.is_ok();
        if !sent {
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
        self.hash_tx.take();
        self.file_tx.take();
        let hash_thread = self.hash_thread.take();
        let file_thread = self.file_thread.take();
        let (hasher, file) = tokio::task::spawn_blocking(move || {
            let hasher = hash_thread.map(|t| t.join());
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
            // Closing the queues ends the workers; the unlinked file goes
            // away when the write thread drops it.
            self.hash_tx.take();
            self.file_tx.take();
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

fn hash_loop(mut hasher: TaskIdHasher, mut rx: mpsc::Receiver<Bytes>) -> TaskIdHasher {
    while let Some(chunk) = rx.blocking_recv() {
        hasher.update(&chunk);
    }
    hasher
}

/// Writes every chunk; the caller finishes the sink only when the task is
/// complete, so an aborted write never pays for an fsync.
fn write_loop(
    mut sink: ContentSink,
    mut rx: mpsc::Receiver<Bytes>,
) -> std::io::Result<ContentSink> {
    while let Some(chunk) = rx.blocking_recv() {
        sink.write(&chunk)?;
    }
    Ok(sink)
}
