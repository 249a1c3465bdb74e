//! Where a read's bytes come from, behind one trait: the block cache (a
//! daemon with range reads) or whole-task downloads (a released dfdaemon).
//! The file system picks the backend once per read from what it knows of
//! the daemon; nothing else in the read path branches on the daemon kind.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

use crate::error::FsResult;
use crate::read::block_cache::{BlockCache, BLOCK};
use crate::read::geometry::TaskGeometry;
use crate::read::readahead::Readahead;
use crate::task_files::TaskFiles;

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

/// Reads through the block cache, with read-ahead for sequential readers.
pub struct BlockReads {
    pub cache: Arc<BlockCache>,
    /// Most bytes fetched ahead of a sequential reader.
    pub read_ahead: u64,
}

#[tonic::async_trait]
impl ReadBackend for BlockReads {
    async fn read(
        &self,
        task: &TaskGeometry,
        readahead: &Mutex<Readahead>,
        offset: u64,
        end: u64,
    ) -> FsResult<Bytes> {
        let (first, last) = (BlockCache::block_of(offset), BlockCache::block_of(end - 1));
        let window = self.read_ahead(task, readahead, offset, end, last);
        if window == 0 && (first..=last).all(|i| !self.cache.is_present(task, i)) {
            // A random read: fetching a 4 MiB block for it would move a
            // block per 4 KiB read. Fetch a small span around it.
            return self.cache.read_random(task, offset, end).await;
        }
        if first == last {
            // The common case (a 1 MiB kernel read of one block): a slice
            // of a received chunk, no copy.
            return self.cache.read_block(task, first, offset, end).await;
        }
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for index in first..=last {
            let block_start = index * BLOCK;
            let from = offset.max(block_start);
            let to = end.min(block_start + BLOCK);
            out.extend_from_slice(&self.cache.read_block(task, index, from, to).await?);
        }
        Ok(out.freeze())
    }
}

impl BlockReads {
    /// Starts fetching the blocks after `last` for a sequential reader;
    /// returns the read-ahead window in blocks (0: not sequential). The
    /// window is counted in bytes (`--read-ahead`), whatever the piece
    /// length: with 64 MiB pieces a window of pieces would be one piece.
    fn read_ahead(
        &self,
        task: &TaskGeometry,
        readahead: &Mutex<Readahead>,
        offset: u64,
        end: u64,
        last: u64,
    ) -> u64 {
        let max_blocks = match self.read_ahead {
            0 => 0,
            bytes => (bytes / BLOCK).max(1),
        };
        let window = readahead.lock().unwrap_or_else(|p| p.into_inner()).on_read(
            offset,
            end - offset,
            max_blocks,
        );
        dfcache_metrics::mount().readahead_window(window * BLOCK);
        let end = (last + 1 + window).min(task.content_length.div_ceil(BLOCK));
        // In order, nearest first, in runs of blocks, while read-ahead
        // slots are free.
        let mut index = last + 1;
        while index < end {
            match self.cache.prefetch(task, index, end - index) {
                0 => break,
                coming => index += coming,
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
