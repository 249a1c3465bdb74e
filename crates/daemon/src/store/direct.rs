//! Sequential writes of a task's content that bypass the page cache.
//!
//! Copying a stream into the page cache was the daemon's largest cost on
//! import: on these VMs freshly allocated page-cache pages are slow to touch
//! (the write thread spent a third of all CPU in the kernel's copy), and the
//! final fsync then had the whole file to flush. With `O_DIRECT` the disk
//! reads straight from reused, aligned blocks ([`AlignedBuf`]) and the fsync
//! has only metadata left.
//!
//! Where the file system refuses `O_DIRECT` (EINVAL at open or on a write),
//! the sink falls back to ordinary buffered writes with periodic writeback,
//! so correctness never depends on it.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use dfcache_direct_io::{is_direct_refusal, AlignedBuf, ALIGN};
/// In buffered mode, start writeback every this many bytes, so the final
/// fsync has little left.
const WRITEBACK_EVERY: u64 = 32 << 20;

/// A task's content file, written front to back in blocks.
pub struct ContentSink {
    file: File,
    direct: bool,
    written: u64,
    /// Buffered mode: how far writeback has been started.
    flushed: u64,
}

impl ContentSink {
    /// Creates `path` (which must not exist) for writing.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        let direct = options.clone().custom_flags(libc::O_DIRECT).open(path);
        let (file, direct) = match direct {
            Ok(file) => (file, true),
            Err(e) if is_direct_refusal(&e) => (options.open(path)?, false),
            Err(e) => return Err(e),
        };
        Ok(Self {
            file,
            direct,
            written: 0,
            flushed: 0,
        })
    }

    /// Appends the block's content. A block of whole alignment units goes
    /// straight to the disk; the rare one that is not (the content's tail)
    /// goes through the page cache rather than being padded and truncated.
    pub fn append(&mut self, block: &AlignedBuf) -> std::io::Result<()> {
        let data = block.filled();
        if self.direct && data.len() % ALIGN == 0 {
            // Positional, so a write refused halfway is simply redone at
            // the same offset through the page cache.
            match self.file.write_all_at(data, self.written) {
                Ok(()) => {
                    self.written += data.len() as u64;
                    return Ok(());
                }
                Err(e) if is_direct_refusal(&e) => self.stop_direct()?,
                Err(e) => return Err(e),
            }
        } else if self.direct {
            self.stop_direct()?;
        }
        self.file.write_all_at(data, self.written)?;
        self.written += data.len() as u64;
        if self.written - self.flushed >= WRITEBACK_EVERY {
            start_writeback(&self.file, self.flushed, self.written - self.flushed);
            self.flushed = self.written;
        }
        Ok(())
    }

    /// Makes everything written durable.
    pub fn finish(self) -> std::io::Result<()> {
        self.file.sync_all()
    }

    /// Clears `O_DIRECT`: buffered writes from here on.
    fn stop_direct(&mut self) -> std::io::Result<()> {
        let fd = self.file.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own, with integer arguments only.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.direct = false;
        self.flushed = self.written;
        Ok(())
    }
}

/// Asks the kernel to start writing a range back now (no wait), so the
/// fsync on finish does not have the whole file to flush at once.
fn start_writeback(file: &File, offset: u64, len: u64) {
    // SAFETY: sync_file_range only reads its integer arguments; the fd is
    // valid for the lifetime of `file`. A failure only loses the hint.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: usize = 4 * ALIGN;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// Writes `data` as the writer does: uneven chunks staged into full
    /// blocks, then the tail.
    fn write_staged(path: &Path, data: &[u8]) {
        let mut sink = ContentSink::create(path).unwrap();
        let mut block = AlignedBuf::new(BLOCK);
        for mut chunk in data.chunks(5_003) {
            while !chunk.is_empty() {
                chunk = &chunk[block.fill(chunk)..];
                if block.is_full() {
                    sink.append(&block).unwrap();
                    block.clear();
                }
            }
        }
        if !block.is_empty() {
            sink.append(&block).unwrap();
        }
        sink.finish().unwrap();
    }

    #[test]
    fn odd_sized_content_lands_exactly() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 1, ALIGN - 1, ALIGN, BLOCK, BLOCK + 1, 3 * BLOCK + 4097] {
            let path = dir.path().join(format!("f{len}"));
            let data = pattern(len);
            write_staged(&path, &data);
            assert_eq!(std::fs::read(&path).unwrap(), data, "length {len}");
        }
    }

    #[test]
    fn a_tail_of_whole_units_and_a_short_block_mid_file_both_land() {
        // A short block before full ones turns the sink buffered for good.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut sink = ContentSink::create(&path).unwrap();
        let mut expected = Vec::new();
        for len in [BLOCK, 100, BLOCK, ALIGN] {
            let data = pattern(len);
            let mut block = AlignedBuf::new(BLOCK);
            assert_eq!(block.fill(&data), len);
            sink.append(&block).unwrap();
            expected.extend_from_slice(&data);
        }
        sink.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }

    #[test]
    fn refuses_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        assert!(ContentSink::create(&path).is_err());
    }
}
