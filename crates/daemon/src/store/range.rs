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
//!
//! Every block and buffered read is leased from the daemon's memory budget
//! before it is read, and given back when its last chunk has been sent
//! (see `memory.rs`): a range waits for room rather than allocate past it.
//! It takes what the budget has free at once (a spare block, new room);
//! when there is none, it waits on its own reserve (room for one block,
//! taken when the range starts), which only its own client's progress
//! gives back. So no range waits on another: every range that started
//! can go on, and a full budget cannot deadlock.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::read_at;
use crate::memory::TransferMemory;
use dfcache_budget::{Lease, MemoryBudget};
use dfcache_direct_io::{
    self as direct_io, is_cached, is_direct_refusal, read_full_at, BlockPool, BlockRoom,
    StorageSlot, ALIGN,
};
use dfcache_wire::domain::piece::MIN_PIECE_LENGTH;

/// Ranges at least this long may be read directly: a whole piece, which is
/// what the mount fetches for a sequential reader (several at once) and
/// what a P2P peer asks for. Shorter reads (a random 4 KiB read through
/// the mount) stay in the page cache, where neighbours may hit.
const DIRECT_MIN: u64 = MIN_PIECE_LENGTH;
/// Bytes per read through the page cache.
const BUFFERED_READ: usize = 1 << 20;

/// Reads `offset..end` of one task's content front to back.
pub struct RangeReader {
    file: Arc<File>,
    direct: Option<Arc<File>>,
    pos: u64,
    end: u64,
    memory: TransferMemory,
    /// The range's reserve (see [`RangeReader::reserve`]); without one it
    /// waits on the whole budget.
    own: Option<MemoryBudget>,
    /// The storage of the block its reserve pays for, kept for reuse.
    own_block: StorageSlot,
}

impl RangeReader {
    /// The most [`RangeReader::next`] returns at once: a block (direct
    /// reads of `TransferMemory::block`, 16 MiB at most).
    pub const MAX_BLOCK: usize = 16 << 20;

    pub(super) fn new(
        path: &Path,
        file: Arc<File>,
        offset: u64,
        end: u64,
        memory: TransferMemory,
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
            memory,
            own: None,
            own_block: StorageSlot::default(),
        }
    }

    /// Bytes the range's reserve must hold: one direct read (a block, or
    /// less for a shorter range: a block's pages beyond what is read are
    /// never touched), or one read through the page cache.
    pub fn reserve_bytes(&self) -> u64 {
        let buffered = (self.end - self.pos).min(BUFFERED_READ as u64);
        match self.direct {
            Some(_) => {
                own_direct_bytes(self.memory.read_blocks(), self.pos, self.end).max(buffered)
            }
            None => buffered,
        }
    }

    /// Has the range wait on `lease` (of [`RangeReader::reserve_bytes`])
    /// whenever the budget has no room free, instead of on the budget.
    pub fn reserve(&mut self, lease: Lease) {
        self.own = Some(MemoryBudget::within(lease));
    }

    /// `bytes` from the budget if it has them free now, else from the
    /// reserve once this range's own earlier parts give them back.
    async fn lease(&self, bytes: u64) -> Lease {
        if let Some(lease) = self.memory.budget().try_acquire(bytes) {
            return lease;
        }
        match &self.own {
            Some(own) => own.acquire(bytes).await,
            None => self.memory.budget().acquire(bytes).await,
        }
    }

    /// The next part of the range with its offset, at most a block; `None`
    /// at the end. Content shorter than the range is `UnexpectedEof`.
    pub async fn next(&mut self) -> std::io::Result<Option<(u64, Bytes)>> {
        let pos = self.pos;
        if pos >= self.end {
            return Ok(None);
        }
        let blocks = self.memory.read_blocks();
        let content = match self.direct.clone() {
            // Cached content is cheaper to read through the page cache.
            Some(direct)
                if !is_cached(&self.file, aligned(pos), direct_len(blocks, pos, self.end)) =>
            {
                let room = match (blocks.room_now(), &self.own) {
                    (Some(room), _) => room,
                    (None, Some(own)) => BlockRoom::homed(
                        own.acquire(own_direct_bytes(blocks, pos, self.end)).await,
                        self.own_block.clone(),
                    ),
                    (None, None) => blocks.room().await,
                };
                let (blocks, end) = (blocks.clone(), self.end);
                let read = tokio::task::spawn_blocking(move || {
                    read_direct(&direct, &blocks, room, pos, end)
                })
                .await
                .map_err(std::io::Error::other)?;
                match read {
                    Ok(content) => content,
                    Err(e) if is_direct_refusal(&e) => {
                        self.direct = None;
                        self.read_buffered(pos).await?
                    }
                    Err(e) => return Err(e),
                }
            }
            _ => self.read_buffered(pos).await?,
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
        let lease = self.lease(len as u64).await;
        Ok(lease.attach(read_at(self.file.clone(), pos, len).await?))
    }
}

/// The alignment boundary at or below `pos`.
fn aligned(pos: u64) -> u64 {
    pos - pos % ALIGN as u64
}

/// How much a direct read from `pos` covers: to `end`, rounded up to the
/// alignment, at most a block.
fn direct_len(blocks: &BlockPool, pos: u64, end: u64) -> usize {
    (end - aligned(pos))
        .next_multiple_of(ALIGN as u64)
        .min(blocks.block_size() as u64) as usize
}

/// What a direct read from `pos` touches of a block's storage: the read
/// and the alignment slack.
fn own_direct_bytes(blocks: &BlockPool, pos: u64, end: u64) -> u64 {
    (direct_len(blocks, pos, end) + ALIGN) as u64
}

/// One block from `pos` read directly into `room`. The read starts at the
/// alignment boundary below `pos`; the part before `pos` is sliced off.
fn read_direct(
    direct: &File,
    blocks: &BlockPool,
    room: BlockRoom,
    pos: u64,
    end: u64,
) -> std::io::Result<Bytes> {
    let start = aligned(pos);
    let len = direct_len(blocks, pos, end);
    let block = blocks.read_into(room, len, |buf| read_full_at(direct, buf, start))?;
    let skip = (pos - start) as usize;
    let take = block.len().min((end - start) as usize);
    Ok(block.slice(skip.min(take)..take))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfcache_budget::MemoryBudget;
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

    const BLOCK: usize = 16 << 20;

    async fn read_range(path: &Path, offset: u64, end: u64) -> std::io::Result<(Vec<u8>, bool)> {
        let file = Arc::new(File::open(path).unwrap());
        let memory = TransferMemory::new(MemoryBudget::new(256 << 20));
        assert_eq!(memory.block(), BLOCK);
        let mut reader = RangeReader::new(path, file, offset, end, memory.clone());
        let direct = reader.direct.is_some();
        let mut out = Vec::new();
        while let Some((at, part)) = reader.next().await? {
            assert_eq!(at, offset + out.len() as u64, "parts arrive in order");
            out.extend_from_slice(&part);
        }
        drop(reader);
        // What is kept for reuse is leased; nothing else is.
        let kept = memory.budget().held();
        assert!(
            kept <= 4 * (BLOCK as u64 + 4096),
            "{kept} bytes still leased"
        );
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
    async fn a_range_whose_budget_others_hold_reads_through_its_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let len = DIRECT_MIN as usize + (3 << 20) + 5;
        let (path, data) = uncached_file(dir.path(), len);
        let memory = TransferMemory::new(MemoryBudget::new(16 << 20));
        let budget = memory.budget().clone();
        let file = Arc::new(File::open(&path).unwrap());
        let mut reader = RangeReader::new(&path, file, 0, len as u64, memory.clone());
        assert!(reader.direct.is_some());
        reader.reserve(budget.acquire(reader.reserve_bytes()).await);
        // Everything else is held by other transfers.
        let others = budget
            .try_acquire(budget.capacity() - budget.held())
            .unwrap();
        let mut out = Vec::new();
        let read = async {
            while let Some((_, part)) = reader.next().await.unwrap() {
                assert_eq!(budget.held(), budget.capacity());
                out.extend_from_slice(&part);
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), read)
            .await
            .expect("the reserve alone carries the read");
        assert!(out == data);
        drop(reader);
        assert_eq!(budget.held(), others.bytes(), "the reserve is given back");
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
