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
//! at a few chunks.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::fs::error::{Errno, FsResult};
use crate::grpc::client::{ClientResult, WriteSummary};
use crate::store::piece::default_piece_length;

/// Chunks sent to the daemon.
pub const CHUNK_SIZE: usize = 1 << 20;

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
    tx: Option<mpsc::Sender<std::io::Result<Bytes>>>,
    buf: BytesMut,
    /// Bytes accepted so far (sent or buffered): the only offset a write
    /// may start at.
    written: u64,
    call: JoinHandle<ClientResult<WriteSummary>>,
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

impl From<WriteSummary> for Finished {
    /// A daemon that does not report the piece length (2.1.12) gets the
    /// default rule's.
    fn from(summary: WriteSummary) -> Self {
        let piece_length = Some(summary.piece_length)
            .filter(|&p| p > 0)
            .unwrap_or_else(|| default_piece_length(summary.content_length));
        Finished {
            task_id: summary.task_id,
            content_length: summary.content_length,
            piece_length,
        }
    }
}

impl Stream {
    pub fn new(
        tx: mpsc::Sender<std::io::Result<Bytes>>,
        call: JoinHandle<ClientResult<WriteSummary>>,
    ) -> Self {
        Self {
            tx: Some(tx),
            buf: BytesMut::with_capacity(CHUNK_SIZE),
            written: 0,
            call,
        }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends `data` written at `offset`; only the current end is allowed.
    pub async fn write(&mut self, offset: u64, data: Vec<u8>) -> FsResult<()> {
        if offset != self.written {
            warn!(
                offset,
                expected = self.written,
                "write not at the end of a streamed import: it cannot be streamed (mount with --spool to allow it)"
            );
            return Err(Errno::EINVAL);
        }
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
        let chunk = std::mem::replace(&mut self.buf, BytesMut::with_capacity(CHUNK_SIZE)).freeze();
        self.send(chunk).await
    }

    async fn send(&mut self, chunk: Bytes) -> FsResult<()> {
        let tx = self.tx.as_ref().ok_or(Errno::EIO)?;
        if tx.send(Ok(chunk)).await.is_err() {
            // The call ended early: the daemon refused or went away. Its
            // error comes out of finish(); the write fails now.
            warn!("the daemon stopped accepting this import");
            return Err(Errno::EIO);
        }
        Ok(())
    }

    /// Sends what is buffered, ends the stream and waits for the daemon's
    /// acknowledgement.
    pub async fn finish(mut self) -> FsResult<Finished> {
        if !self.buf.is_empty() {
            // A failed send leaves the error to the call's result below.
            let _ = self.send_buffered().await;
        }
        self.tx.take();
        let summary = self.call.await.map_err(|e| {
            warn!(error = %e, "import call panicked");
            Errno::EIO
        })?;
        Ok(Finished::from(summary.map_err(Errno::from)?))
    }

    /// Aborts the stream: the daemon sees no finished message and stores
    /// nothing.
    pub fn cancel(mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.try_send(Err(std::io::Error::other("import cancelled")));
        }
        // The call ends on its own once the stream is dropped.
        drop(self.call);
    }
}

impl Spool {
    pub fn write(&mut self, offset: u64, data: &[u8]) -> FsResult<()> {
        self.file.write_all_at(data, offset).map_err(|e| {
            warn!(path = %self.path.display(), error = %e, "spool write failed");
            Errno(e.raw_os_error().unwrap_or(libc::EIO))
        })?;
        self.size = self.size.max(offset + data.len() as u64);
        Ok(())
    }

    pub fn truncate(&mut self, size: u64) -> FsResult<()> {
        self.file
            .set_len(size)
            .map_err(|e| Errno(e.raw_os_error().unwrap_or(libc::EIO)))?;
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
