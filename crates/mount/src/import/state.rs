//! A file being written into `import/`, and what it becomes.
//!
//! ```text
//! create ──> Streaming ──(first close after data / last release)──> Finished
//!   │          │                                                     (task id)
//!   │          └──(write not at the end, no spool)──> EINVAL, stays Streaming
//!   └──(--spool)──> Spooling ──(close)──> upload of the spool file ──> Finished
//! any unfinished state ──(unlink)──> Cancelled; ──(daemon refuses)──> Failed
//! ```
//!
//! Streaming forwards sequential writes in 1 MiB chunks over a bounded
//! channel, so a writer waits while the daemon is behind and memory stays
//! at a few chunks. Those chunks are the mount's share of what it holds
//! beyond its cache: an import takes [`IMPORT_SHARE`] of the mount's
//! memory budget at its first write (or at its end, for an empty file),
//! before its stream to the daemon is opened, and holds it to its end. An
//! import that finds the budget full waits, as long as the imports holding
//! it make progress (send chunks, or end), and fails with ETIMEDOUT once
//! none has for the fetch timeout. Opening the stream only with the share means the daemon only
//! ever sees imports that can send (one that waited at the daemon while
//! holding a slot there, its writer waiting for a share here, could hold
//! up the very imports that hold the shares).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dfcache_budget::{Lease, MemoryBudget};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::daemon::{DaemonClient, ImportOptions};
use crate::error::{Errno, FsError, FsResult};
use crate::read::geometry::TaskGeometry;
use dfcache_client::{ClientResult, WriteSummary};
use dfcache_wire::domain::piece::reported_or_default;
use dfcache_wire::domain::{CHUNK_QUEUE_DEPTH, CHUNK_SIZE};

/// What a streamed import holds in the mount, at most: the chunk being
/// gathered, the one handed to the client, the client's queue
/// (`CHUNK_QUEUE_DEPTH`), and the message being encoded and sent.
pub const IMPORT_SHARE: u64 = (CHUNK_QUEUE_DEPTH as u64 + 4) * CHUNK_SIZE as u64;

/// Where an import stands.
pub enum ImportState {
    Streaming(Stream),
    Spooling(Spool),
    Finished(Finished),
    Failed(Errno),
    Cancelled,
}

/// A streamed import in progress.
pub struct Stream {
    /// Until the stream is open: what opens it (boxed: it is most of a
    /// stream's size, and gone once the stream is open).
    opener: Option<Box<Opener>>,
    tx: Option<mpsc::Sender<std::io::Result<Bytes>>>,
    buf: BytesMut,
    /// Bytes accepted so far (sent or buffered): the only offset a write
    /// may start at.
    written: u64,
    call: Option<JoinHandle<ClientResult<WriteSummary>>>,
    /// The call's result, once it ended before the stream did (the daemon
    /// refused it or stopped taking chunks).
    ended: Option<ClientResult<WriteSummary>>,
    /// The import's share of the mount's memory budget, once open.
    _share: Lease,
    /// That budget, told of every chunk sent (imports waiting for a share
    /// wait as long as those holding one make progress).
    memory: Option<MemoryBudget>,
}

/// What a streamed import is opened with.
pub struct Opener {
    pub client: Arc<dyn DaemonClient>,
    pub options: ImportOptions,
    /// The mount's memory budget for imports.
    pub memory: MemoryBudget,
    /// A wait for a share fails once nothing was given back for this long.
    pub within: Duration,
}

/// A spooled import: written at any offset, uploaded on close.
pub struct Spool {
    pub file: Arc<File>,
    pub path: PathBuf,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub task_id: String,
    pub content_length: u64,
    pub piece_length: u64,
}

impl Finished {
    /// What an import of `sent` bytes became. A daemon of dragonfly-api
    /// 2.1.12 answers with the task id alone: the size is then the bytes
    /// sent (which the daemon hashed into that id) and the piece length the
    /// default rule's.
    pub fn of(summary: WriteSummary, sent: u64) -> Self {
        let content_length = if summary.content_length == 0 {
            sent
        } else {
            summary.content_length
        };
        Finished {
            task_id: summary.task_id,
            content_length,
            piece_length: reported_or_default(Some(summary.piece_length), content_length),
        }
    }

    /// The task the import became, for reads.
    pub fn geometry(&self) -> TaskGeometry {
        TaskGeometry::new(&self.task_id, self.content_length, Some(self.piece_length))
    }
}

impl Stream {
    /// An import whose stream `opener` opens at the first write.
    pub fn new(opener: Opener) -> Self {
        Self {
            opener: Some(Box::new(opener)),
            tx: None,
            buf: BytesMut::new(),
            written: 0,
            call: None,
            ended: None,
            _share: Lease::empty(),
            memory: None,
        }
    }

    /// Takes the import's share (waiting for it) and opens its stream; a
    /// no-op once open.
    async fn open(&mut self) -> FsResult<()> {
        let Some(opener) = &self.opener else {
            return Ok(());
        };
        // Still closed if this fails: a later write waits again.
        let share = share_of(&opener.memory, IMPORT_SHARE, opener.within).await?;
        let Some(opener) = self.opener.take() else {
            return Ok(());
        };
        let Opener {
            client,
            options,
            memory,
            ..
        } = *opener;
        // A channel of one: the client's own queue is the buffer.
        let (tx, rx) = mpsc::channel(1);
        self.call = Some(tokio::spawn(
            async move { client.write(rx, &options).await },
        ));
        self.tx = Some(tx);
        self._share = share;
        self.memory = Some(memory);
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends `data` written at `offset`; only the current end is allowed.
    pub async fn write(&mut self, offset: u64, data: Vec<u8>) -> FsResult<()> {
        if offset != self.written {
            return Err(Errno::EINVAL.because(std::io::Error::other(format!(
                "write at offset {offset}, not at the end ({}) of a streamed import: \
                 it cannot be streamed (mount with --spool to allow it)",
                self.written
            ))));
        }
        self.open().await?;
        let len = data.len() as u64;
        if self.buf.is_empty() && data.len() >= CHUNK_SIZE / 2 {
            // A large write (the kernel sends up to 1 MiB) is a chunk as it
            // is: no second copy.
            self.send(Bytes::from(data)).await?;
            self.written += len;
            return Ok(());
        }
        let mut rest = &data[..];
        while !rest.is_empty() {
            let take = rest.len().min(CHUNK_SIZE - self.buf.len());
            if self.buf.is_empty() {
                self.buf.reserve(CHUNK_SIZE);
            }
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() == CHUNK_SIZE {
                self.send_buffered().await?;
            }
        }
        self.written += len;
        Ok(())
    }

    async fn send_buffered(&mut self) -> FsResult<()> {
        let chunk = std::mem::take(&mut self.buf).freeze();
        self.send(chunk).await
    }

    async fn send(&mut self, chunk: Bytes) -> FsResult<()> {
        if let Some(ended) = &self.ended {
            return Err(ended_errno(ended));
        }
        let tx = self.tx.as_ref().ok_or(Errno::EIO)?;
        if tx.send(Ok(chunk)).await.is_err() {
            // The call ended early: the daemon refused, went away or
            // stopped taking chunks. The write fails now with its reason,
            // and finish() returns the same.
            self.tx.take();
            let ended = self.call_result().await;
            let errno = ended_errno(&ended);
            self.ended = Some(ended);
            return Err(errno);
        }
        if let Some(memory) = &self.memory {
            memory.progressed();
        }
        Ok(())
    }

    async fn call_result(&mut self) -> ClientResult<WriteSummary> {
        let joined = match self.call.as_mut() {
            Some(call) => call.await,
            None => {
                return Err(dfcache_client::ClientError::io(
                    "import call",
                    std::io::Error::other("the import's stream was never opened"),
                ))
            }
        };
        joined.unwrap_or_else(|e| {
            Err(dfcache_client::ClientError::io(
                "import call",
                std::io::Error::other(e),
            ))
        })
    }

    /// Sends what is buffered, ends the stream and waits for the daemon's
    /// acknowledgement. An import with nothing written opens its stream
    /// now: it becomes an empty task.
    pub async fn finish(mut self) -> FsResult<Finished> {
        self.open().await?;
        if !self.buf.is_empty() {
            // A failed send leaves the error to the call's result below.
            let _ = self.send_buffered().await;
        }
        self.tx.take();
        let summary = match self.ended.take() {
            Some(ended) => ended,
            None => self.call_result().await,
        };
        Ok(Finished::of(summary.map_err(Errno::from)?, self.written))
    }

    /// Aborts the stream: the daemon sees no finished message and stores
    /// nothing.
    pub fn cancel(mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.try_send(Err(std::io::Error::other("import cancelled")));
        }
        // The call ends on its own once the stream is dropped.
        drop(self.call.take());
    }
}

/// `bytes` of the imports' budget `memory`, once free; ETIMEDOUT when
/// nothing was given back to it for `within` and no import holding it sent
/// a chunk (its holders are stuck), never merely because the wait is long.
pub(crate) async fn share_of(
    memory: &MemoryBudget,
    bytes: u64,
    within: Duration,
) -> FsResult<Lease> {
    memory.acquire_moving(bytes, within).await.map_err(|stuck| {
        Errno::ETIMEDOUT.because(std::io::Error::other(format!(
            "waiting for room in the mount's memory budget for imports: {stuck} \
             (the imports holding it make no progress)"
        )))
    })
}

/// The errno of a call that ended before its stream did; a success there
/// (impossible without the finished message) is a broken stream too.
fn ended_errno(ended: &ClientResult<WriteSummary>) -> Errno {
    match ended {
        Err(e) => Errno::from(e),
        Ok(_) => Errno::EIO,
    }
}

impl Spool {
    pub fn write(&mut self, offset: u64, data: &[u8]) -> FsResult<()> {
        self.file.write_all_at(data, offset).map_err(FsError::io)?;
        dfcache_metrics::mount().spool_written(data.len() as u64);
        self.size = self.size.max(offset + data.len() as u64);
        Ok(())
    }

    pub fn truncate(&mut self, size: u64) -> FsResult<()> {
        self.file.set_len(size).map_err(FsError::io)?;
        self.size = size;
        Ok(())
    }

    /// Removes the spool file (after an upload or a cancel).
    pub fn discard(self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            warn!(path = %self.path.display(), error = %e, "could not remove spool file");
        }
    }
}

impl ImportState {
    /// Bytes written so far (the file's size while unfinished).
    pub fn size(&self) -> u64 {
        match self {
            ImportState::Streaming(s) => s.written(),
            ImportState::Spooling(s) => s.size,
            ImportState::Finished(f) => f.content_length,
            ImportState::Failed(_) | ImportState::Cancelled => 0,
        }
    }

    pub fn is_open_for_data(&self) -> bool {
        matches!(self, ImportState::Streaming(_) | ImportState::Spooling(_))
    }

    pub fn log_finished(name: &str, finished: &Finished) {
        info!(name, task_id = %finished.task_id, content_length = finished.content_length, "import finished");
    }
}
