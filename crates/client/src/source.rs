//! Reading a local file to stream it into a task.
//!
//! A large file is read with `O_DIRECT` in 16 MiB requests on a thread of
//! its own, and each read is cut into 1 MiB chunks without copying. Going
//! around the page cache matters twice here: the kernel's copy out of
//! freshly filled page-cache pages was the client's largest cost (on these
//! VMs new pages are slow to touch), and a multi-gigabyte import should not
//! push a pod's working set out of its memory cgroup's page cache. Large
//! direct reads reach the disk's speed (`dd iflag=direct` of 2 GiB: 1 MiB
//! 1.68 s, 4 MiB 1.56 s, 16 MiB 1.15 s; buffered cold 1.3-3.9 s).
//!
//! Blocks already in the page cache (a file just downloaded or written) are
//! still copied from there: `cachestat(2)` tells, block by block.
//!
//! Small files, and file systems that refuse `O_DIRECT`, are read through
//! the page cache as usual.
//!
//! Blocks come from a [`BlockPool`], so they are reused once every chunk
//! cut from them has been sent.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use bytes::Bytes;
use tokio::sync::mpsc;

use dfcache_direct_io::{self as direct_io, is_cached, is_direct_refusal, read_full_at, BlockPool};
use dfcache_wire::domain::CHUNK_SIZE;

/// Files at least this large are read with `O_DIRECT`: below it the disk
/// round trips are not worth saving a few page-cache copies.
const DIRECT_MIN: u64 = 64 << 20;
/// Bytes per read: large direct reads reach the disk's speed, and the block
/// is cut into `CHUNK_SIZE` messages without copying.
const BLOCK: usize = 16 << 20;
/// Chunks queued between the reader thread and the socket: a whole block
/// and a few, so the next block is read while the previous one is sent
/// (with 4, the disk and the socket took turns).
pub(super) const CHUNKS_IN_FLIGHT: usize = BLOCK / CHUNK_SIZE + 4;
/// Spare blocks kept for reuse: about as many as are in flight at once
/// (the one being read, the queued chunks', the one being sent).
const SPARE_BLOCKS: usize = 4;
/// What streaming a file holds at most: its blocks (those in flight and
/// those kept for reuse; a block is only touched as far as the file goes)
/// and the message being encoded and sent.
pub const MAX_FILE_STREAM_MEMORY: u64 = ((SPARE_BLOCKS + 1) * BLOCK + 2 * CHUNK_SIZE) as u64;

/// A file opened for streaming: always a normal descriptor, and a direct
/// one when the file is large and its file system allows it.
pub(super) struct Source {
    buffered: File,
    direct: Option<File>,
    /// A pipe or device is read in order; only regular files by offset.
    positional: bool,
    blocks: BlockPool,
}

impl Source {
    pub(super) fn open(path: &Path) -> std::io::Result<Self> {
        let buffered = File::open(path)?;
        let meta = buffered.metadata()?;
        let direct = if meta.is_file() && meta.len() >= DIRECT_MIN {
            direct_io::open_direct(path)
        } else {
            None
        };
        Ok(Self {
            buffered,
            direct,
            positional: meta.is_file(),
            blocks: BlockPool::new(BLOCK, SPARE_BLOCKS),
        })
    }

    pub(super) fn metadata(&self) -> std::io::Result<std::fs::Metadata> {
        self.buffered.metadata()
    }

    /// Sends the content as chunks of `CHUNK_SIZE` until the end or the
    /// receiver is gone; a read error is the last item sent. Blocking: run
    /// it on a thread of its own.
    pub(super) fn send_chunks(mut self, tx: mpsc::Sender<std::io::Result<Bytes>>) {
        let mut offset = 0u64;
        loop {
            let block = match self.read_block(offset) {
                Ok(block) => block,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            if block.is_empty() {
                return;
            }
            offset += block.len() as u64;
            let mut at = 0;
            while at < block.len() {
                let end = (at + CHUNK_SIZE).min(block.len());
                if tx.blocking_send(Ok(block.slice(at..end))).is_err() {
                    return;
                }
                at = end;
            }
        }
    }

    /// Up to `BLOCK` bytes at `offset`; empty at the end of the file.
    fn read_block(&mut self, offset: u64) -> std::io::Result<Bytes> {
        let buffered = &self.buffered;
        if !self.positional {
            // A pipe is sent a chunk at a time: its writer may be slow.
            return self
                .blocks
                .read(CHUNK_SIZE, |buf| read_full_in_order(buffered, buf));
        }
        if let Some(direct) = &self.direct {
            if !is_cached(buffered, offset, BLOCK) {
                match self
                    .blocks
                    .read(BLOCK, |buf| read_full_at(direct, buf, offset))
                {
                    // Refused by a file system that accepted the open:
                    // read normally from here on.
                    Err(e) if is_direct_refusal(&e) => self.direct = None,
                    read => return read,
                }
            }
        }
        self.blocks
            .read(BLOCK, |buf| read_full_at(buffered, buf, offset))
    }
}

/// `read_full_at` for a pipe or device, which has no offsets.
fn read_full_in_order(mut file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn collect(path: &Path) -> Vec<u8> {
        let source = Source::open(path).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let reader = std::thread::spawn(move || source.send_chunks(tx));
        let mut out = Vec::new();
        while let Some(chunk) = rx.blocking_recv() {
            let chunk = chunk.unwrap();
            assert!(!chunk.is_empty() && chunk.len() <= CHUNK_SIZE);
            out.extend_from_slice(&chunk);
        }
        reader.join().unwrap();
        out
    }

    #[test]
    fn direct_and_buffered_reads_give_the_exact_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let big = DIRECT_MIN as usize + BLOCK + 12_345;
        for len in [0, 1, CHUNK_SIZE + 1, big] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
            let path = dir.path().join(format!("f{len}"));
            std::fs::write(&path, &data).unwrap();
            // From the page cache (just written), then from the disk.
            assert!(collect(&path) == data, "length {len}, cached");
            evict(&path);
            assert!(collect(&path) == data, "length {len}, from disk");
        }
    }

    /// Writes the file back and drops it from the page cache.
    fn evict(path: &Path) {
        let file = File::open(path).unwrap();
        file.sync_all().unwrap();
        // SAFETY: integer arguments on a descriptor we own.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
    }
}
