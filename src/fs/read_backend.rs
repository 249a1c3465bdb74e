//! Where a read's bytes come from, behind one trait: the piece cache (a
//! daemon with range reads) or whole-task downloads (a released dfdaemon).
//! The file system picks the backend once per read from what it knows of
//! the daemon; nothing else in the read path branches on the daemon kind.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

use crate::fs::error::FsResult;
use crate::fs::piece_cache::{PieceCache, TaskGeometry};
use crate::fs::readahead::Readahead;
use crate::fs::task_files::TaskFiles;

/// Serves `offset..end` of a task (`end` within the task, `offset < end`).
#[tonic::async_trait]
pub trait ReadBackend: Send + Sync {
    async fn read(
        &self,
        task: &TaskGeometry,
        readahead: &Mutex<Readahead>,
        offset: u64,
        end: u64,
    ) -> FsResult<Bytes>;
}

/// Reads through the piece cache, with read-ahead for sequential readers.
pub struct PieceReads {
    pub cache: Arc<PieceCache>,
    /// Most bytes fetched ahead of a sequential reader.
    pub read_ahead: u64,
}

#[tonic::async_trait]
impl ReadBackend for PieceReads {
    async fn read(
        &self,
        task: &TaskGeometry,
        readahead: &Mutex<Readahead>,
        offset: u64,
        end: u64,
    ) -> FsResult<Bytes> {
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
}

impl PieceReads {
    /// Starts fetching the pieces after `last` for a sequential reader;
    /// returns the read-ahead window (0: the reader is not sequential).
    fn read_ahead(
        &self,
        task: &TaskGeometry,
        readahead: &Mutex<Readahead>,
        offset: u64,
        end: u64,
        last: u64,
    ) -> u64 {
        let max_pieces = match self.read_ahead {
            0 => 0,
            bytes => (bytes / task.piece_length.max(1)).max(1),
        };
        let window = readahead.lock().unwrap_or_else(|p| p.into_inner()).on_read(
            offset,
            end - offset,
            max_pieces,
        );
        crate::metrics::mount().readahead_window(window * task.piece_length);
        // In order, nearest first, while read-ahead slots are free.
        for index in (last + 1..=last + window).take_while(|&i| i < task.piece_count()) {
            if !self.cache.prefetch(task, index) {
                break;
            }
        }
        window
    }
}

/// Whole-task downloads: each read waits for the pieces it covers.
#[tonic::async_trait]
impl ReadBackend for TaskFiles {
    async fn read(
        &self,
        task: &TaskGeometry,
        _readahead: &Mutex<Readahead>,
        offset: u64,
        end: u64,
    ) -> FsResult<Bytes> {
        TaskFiles::read(self, task, offset, end).await
    }
}
