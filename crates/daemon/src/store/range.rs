//! Serving a range of a task's content in large blocks.
//!
//! Ranges of a piece or more whose content is not in the page cache are read with
//! `O_DIRECT` in 16 MiB blocks into reused aligned storage and cut into
//! chunks without copying. Reading them through the page cache was most of
//! the daemon's CPU on a cold export (the kernel's copy out of fresh pages,
//! perf: 43%), and it would cache the task a second time when the reader is
//! the mount, whose own page cache keeps what programs read. Content that
//! is already cached, and short ranges, are read through the page cache as
//! before.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::read_at;
use dfcache_direct_io::{
    self as direct_io, is_cached, is_direct_refusal, read_full_at, BlockPool, ALIGN,
};
use dfcache_wire::domain::piece::MIN_PIECE_LENGTH;

/// Ranges at least this long may be read directly: a whole piece, which is
/// what the mount fetches for a sequential reader (several at once) and
/// what a P2P peer asks for. Shorter reads (a random 4 KiB read through
/// the mount) stay in the page cache, where neighbours may hit.
const DIRECT_MIN: u64 = MIN_PIECE_LENGTH;
/// Bytes per direct read (`dd iflag=direct` of 2 GiB: 1 MiB 1.68 s, 16 MiB
/// 1.15 s).
const BLOCK: usize = 16 << 20;
/// Spare blocks kept by the store: a few ranges' worth (for each, the block
/// being read, the queued chunks', the one being sent).
const SPARE_BLOCKS: usize = 4;
/// Bytes per read through the page cache.
const BUFFERED_READ: usize = 1 << 20;

/// Reads `offset..end` of one task's content front to back.
pub struct RangeReader {
    file: Arc<File>,
    direct: Option<Arc<File>>,
    pos: u64,
    end: u64,
    blocks: BlockPool,
}

impl RangeReader {
    /// The most [`RangeReader::next`] returns at once.
    pub const MAX_BLOCK: usize = BLOCK;

    /// The pool every reader of one store draws its blocks from.
    pub(super) fn block_pool() -> BlockPool {
        BlockPool::new(BLOCK, SPARE_BLOCKS)
    }

    pub(super) fn new(
        path: &Path,
        file: Arc<File>,
        offset: u64,
        end: u64,
        blocks: BlockPool,
    ) -> Self {
        let direct = if end.saturating_sub(offset) >= DIRECT_MIN {
            direct_io::open_direct(path).map(Arc::new)
        } else {
            None
        };
        Self {
            file,
            direct,
            pos: offset,
            end,
            blocks,
        }
    }

    /// The next part of the range with its offset, at most a block; `None`
    /// at the end. Content shorter than the range is `UnexpectedEof`.
    pub async fn next(&mut self) -> std::io::Result<Option<(u64, Bytes)>> {
        let pos = self.pos;
        if pos >= self.end {
            return Ok(None);
        }
        let content = match self.direct.clone() {
            Some(direct) => {
                let (file, blocks, end) = (self.file.clone(), self.blocks.clone(), self.end);
                let read = tokio::task::spawn_blocking(move || {
                    read_direct(&file, &direct, &blocks, pos, end)
                })
                .await
                .map_err(std::io::Error::other)?;
                match read {
                    Ok(Some(content)) => content,
                    Ok(None) => self.read_buffered(pos).await?,
                    Err(e) if is_direct_refusal(&e) => {
                        self.direct = None;
                        self.read_buffered(pos).await?
                    }
                    Err(e) => return Err(e),
                }
            }
            None => self.read_buffered(pos).await?,
        };
        if content.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "task content is shorter than recorded",
            ));
        }
        self.pos += content.len() as u64;
        Ok(Some((pos, content)))
    }

    async fn read_buffered(&self, pos: u64) -> std::io::Result<Bytes> {
        let len = (self.end - pos).min(BUFFERED_READ as u64) as usize;
        read_at(self.file.clone(), pos, len).await
    }
}

/// One block from `pos` read directly, or `None` when the page cache holds
/// it already (the buffered read is then cheaper). The read starts at the
/// alignment boundary below `pos`; the part before `pos` is sliced off.
fn read_direct(
    file: &File,
    direct: &File,
    blocks: &BlockPool,
    pos: u64,
    end: u64,
) -> std::io::Result<Option<Bytes>> {
    let start = pos - pos % ALIGN as u64;
    let len = (end - start)
        .next_multiple_of(ALIGN as u64)
        .min(blocks.block_size() as u64) as usize;
    if is_cached(file, start, len) {
        return Ok(None);
    }
    let block = blocks.read(len, |buf| read_full_at(direct, buf, start))?;
    let skip = (pos - start) as usize;
    let take = block.len().min((end - start) as usize);
    Ok(Some(block.slice(skip.min(take)..take)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// A file past `DIRECT_MIN`, written back and dropped from the page
    /// cache so that long ranges are read directly.
    fn uncached_file(dir: &Path, len: usize) -> (std::path::PathBuf, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
        let path = dir.join("content");
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        file.sync_all().unwrap();
        // SAFETY: integer arguments on a descriptor we own.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
        (path, data)
    }

    async fn read_range(path: &Path, offset: u64, end: u64) -> std::io::Result<(Vec<u8>, bool)> {
        let file = Arc::new(File::open(path).unwrap());
        let mut reader = RangeReader::new(path, file, offset, end, RangeReader::block_pool());
        let direct = reader.direct.is_some();
        let mut out = Vec::new();
        while let Some((at, part)) = reader.next().await? {
            assert_eq!(at, offset + out.len() as u64, "parts arrive in order");
            out.extend_from_slice(&part);
        }
        Ok((out, direct))
    }

    #[tokio::test]
    async fn long_ranges_read_directly_give_the_exact_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let len = DIRECT_MIN as usize + BLOCK + 12_345;
        let (path, data) = uncached_file(dir.path(), len);
        let ranges = [
            (0, len),
            (4097, len - 3),
            (BLOCK - 1, DIRECT_MIN as usize + BLOCK + 1),
            (len - 100, len),
        ];
        for (offset, end) in ranges {
            let (got, direct) = read_range(&path, offset as u64, end as u64).await.unwrap();
            assert!(got == data[offset..end], "range {offset}..{end}");
            assert_eq!(
                direct,
                end - offset >= DIRECT_MIN as usize,
                "range {offset}..{end}"
            );
        }
        // Read again, now partly cached by nothing but the direct reads:
        // still exact.
        let (got, _) = read_range(&path, 0, len as u64).await.unwrap();
        assert!(got == data);
    }

    #[tokio::test]
    async fn content_shorter_than_the_range_is_unexpected_eof() {
        let dir = tempfile::tempdir().unwrap();
        let len = DIRECT_MIN as usize + 10;
        let (path, _) = uncached_file(dir.path(), len);
        for end in [len as u64 + 5000, len as u64 + 1] {
            let err = read_range(&path, 0, end).await.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "end {end}");
        }
    }
}
