//! Opening files and reading task content through the piece cache.
//!
//! A read is split on piece boundaries; each piece comes from the LRU or
//! one daemon request. A sequential reader also gets the next pieces
//! fetched ahead, in a window that grows while the run lasts.

use bytes::{Bytes, BytesMut};

use crate::fs::error::{Errno, FsResult};
use crate::fs::filesystem::{DfcacheFs, OpenFile};
use crate::fs::import::ImportState;
use crate::fs::inodes::Node;
use crate::fs::piece_cache::TaskGeometry;
use crate::fs::readahead::Readahead;

/// How a file was opened, for the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    /// Keep the kernel's page cache across opens (immutable content).
    pub keep_cache: bool,
    /// Bypass the kernel's page cache. Writable opens (always imports) do:
    /// an import's bytes go to the daemon once, and caching them first only
    /// costs the writer a copy into freshly allocated pages (cp of 2 GiB
    /// into import/ spent 1.9-2.1 s of system time with the cache, 0.3-1.4 s
    /// without).
    pub direct_io: bool,
}

impl Opened {
    /// What the kernel is told about handle `fh` on `file`.
    pub(crate) fn new(fh: u64, file: &OpenFile) -> Opened {
        Opened {
            fh,
            keep_cache: matches!(file.node, Node::Task(_)),
            direct_io: file.writable,
        }
    }
}

impl DfcacheFs {
    /// Opens a file. Task files are read-only; an import may be reopened
    /// for writing only with O_TRUNC (which starts a new import).
    pub async fn open(&self, ino: u64, write: bool, truncate: bool) -> FsResult<Opened> {
        let node = self.node(ino)?;
        match &node {
            Node::Task(_) if write => return Err(Errno::EACCES),
            Node::Task(_) => {}
            Node::Import(import) if write => self.reopen_for_write(import, truncate).await?,
            Node::Import(_) => {}
        }
        Ok(self.add_handle(OpenFile {
            node,
            writable: write,
            readahead: Default::default(),
        }))
    }

    /// Up to `size` bytes at `offset`.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let file = self.handle(fh)?;
        let geometry = match &file.node {
            Node::Task(task) => task.geometry.clone(),
            Node::Import(node) => match &*node.state.lock().await {
                ImportState::Finished(f) => f.geometry(),
                _ => {
                    return Err(Errno::EINVAL.because(std::io::Error::other(
                        "read of an import that is not finished: its content is with the daemon",
                    )));
                }
            },
        };
        tracing::Span::current().record("task_id", &*geometry.id);
        match self
            .read_task(&geometry, &file.readahead, offset, size)
            .await
        {
            Err(e) if e == Errno::ENOENT => {
                // Deleted or expired while open: what the kernel cached
                // still reads; the rest is ESTALE (as NFS says of a file
                // gone under an open handle), and the name stops resolving.
                tracing::info!(task_id = %geometry.id, "task is gone from the daemon while open");
                self.forget_task(&geometry.id);
                Err(Errno::ESTALE)
            }
            other => other,
        }
    }

    async fn read_task(
        &self,
        task: &TaskGeometry,
        readahead: &std::sync::Mutex<Readahead>,
        offset: u64,
        size: u32,
    ) -> FsResult<Bytes> {
        let end = offset
            .saturating_add(u64::from(size))
            .min(task.content_length);
        if offset >= end {
            return Ok(Bytes::new());
        }
        if !self.client.streams().await.map_err(Errno::from)? {
            // No range reads on this daemon: whole-task downloads instead.
            return self.task_files.read(task, offset, end).await;
        }
        let piece_length = task.piece_length;
        let (first, last) = (offset / piece_length, (end - 1) / piece_length);
        let window = self.read_ahead(task, readahead, offset, end, last);
        if window == 0 && (first..=last).all(|i| !self.cache.is_present(task, i)) {
            // A random read: fetching whole pieces for it would move a
            // piece per 4 KiB read. Fetch just the range; the kernel's page
            // cache keeps it.
            return self.cache.read_uncached(task, offset, end - offset).await;
        }

        if first == last {
            let start = (offset - first * piece_length) as usize;
            return self
                .cache
                .read(task, first, start, start + (end - offset) as usize)
                .await;
        }
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for index in first..=last {
            let piece_start = index * piece_length;
            let from = offset.max(piece_start) - piece_start;
            let to = end.min(piece_start + piece_length) - piece_start;
            out.extend_from_slice(
                &self
                    .cache
                    .read(task, index, from as usize, to as usize)
                    .await?,
            );
        }
        Ok(out.freeze())
    }

    /// Starts fetching the pieces after `last` for a sequential reader;
    /// returns the read-ahead window (0: the reader is not sequential).
    fn read_ahead(
        &self,
        task: &TaskGeometry,
        readahead: &std::sync::Mutex<Readahead>,
        offset: u64,
        end: u64,
        last: u64,
    ) -> u64 {
        let max_pieces = self.config.read_ahead / task.piece_length.max(1);
        let max_pieces = if self.config.read_ahead > 0 {
            max_pieces.max(1)
        } else {
            0
        };
        let window = readahead.lock().unwrap_or_else(|p| p.into_inner()).on_read(
            offset,
            end - offset,
            max_pieces,
        );
        // In order, nearest first, while read-ahead slots are free.
        for index in (last + 1..=last + window).take_while(|&i| i < task.piece_count()) {
            if !self.cache.prefetch(task, index) {
                break;
            }
        }
        window
    }
}
