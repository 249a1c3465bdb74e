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
//! Blocks are reused once every chunk cut from them has been sent: a fresh
//! 16 MiB block per read cost a memset and new pages, a fifth of the
//! client's CPU on a cold 2 GiB import.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::write::CHUNK_SIZE;

/// Files at least this large are read with `O_DIRECT`: below it the disk
/// round trips are not worth saving a few page-cache copies.
const DIRECT_MIN: u64 = 64 << 20;
/// Bytes per read: large direct reads reach the disk's speed, and the block
/// is cut into `CHUNK_SIZE` messages without copying.
const BLOCK: usize = 16 << 20;
/// Alignment `O_DIRECT` needs for buffer, offset and length.
const ALIGN: usize = 4096;
/// Spare blocks kept for reuse: about as many as are in flight at once
/// (the one being read, the queued chunks', the one being sent).
const SPARE_BLOCKS: usize = 4;

/// A file opened for streaming: always a normal descriptor, and a direct
/// one when the file is large and its file system allows it.
pub(super) struct Source {
    buffered: File,
    direct: Option<File>,
    /// A pipe or device is read in order; only regular files by offset.
    positional: bool,
    spare: Spare,
}

/// Blocks whose chunks have all been sent, ready for the next read.
type Spare = Arc<Mutex<Vec<Vec<u8>>>>;

/// A block read from the file; the chunks cut from it share it, and the
/// last one dropped gives its storage back to the spares.
struct Block {
    storage: Vec<u8>,
    start: usize,
    len: usize,
    spare: Spare,
}

impl AsRef<[u8]> for Block {
    fn as_ref(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if let Ok(mut spare) = self.spare.lock() {
            if spare.len() < SPARE_BLOCKS {
                spare.push(std::mem::take(&mut self.storage));
            }
        }
    }
}

impl Source {
    pub(super) fn open(path: &Path) -> std::io::Result<Self> {
        let buffered = File::open(path)?;
        let meta = buffered.metadata()?;
        let direct = if meta.is_file() && meta.len() >= DIRECT_MIN {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .ok()
        } else {
            None
        };
        Ok(Self {
            buffered,
            direct,
            positional: meta.is_file(),
            spare: Spare::default(),
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
        // Over-allocate by one alignment and use the aligned part: no unsafe
        // allocation, and `Bytes::slice` hands that part out uncopied.
        let spare = self.spare.lock().ok().and_then(|mut spare| spare.pop());
        let mut storage = spare.unwrap_or_else(|| vec![0u8; BLOCK + ALIGN]);
        let start = storage.as_ptr().align_offset(ALIGN);
        let buf = &mut storage[start..start + BLOCK];
        let filled = match &self.direct {
            // A pipe is sent a chunk at a time: its writer may be slow.
            None if !self.positional => read_full_in_order(&self.buffered, &mut buf[..CHUNK_SIZE])?,
            None => read_full(&self.buffered, buf, offset)?,
            Some(_) if is_cached(&self.buffered, offset, BLOCK) => {
                read_full(&self.buffered, buf, offset)?
            }
            Some(direct) => match read_full(direct, buf, offset) {
                Ok(n) => n,
                // Refused by a file system that accepted the open:
                // read normally from here on.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.direct = None;
                    read_full(&self.buffered, buf, offset)?
                }
                Err(e) => return Err(e),
            },
        };
        Ok(Bytes::from_owner(Block {
            storage,
            start,
            len: filled,
            spare: self.spare.clone(),
        }))
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read_at(&mut buf[filled..], offset + filled as u64)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// `read_full` for a pipe or device, which has no offsets.
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

/// Whether every page of `offset..offset + len` is in the page cache,
/// asked with `cachestat(2)` (Linux 6.5); `false` where it is missing, so
/// older kernels read large files directly.
fn is_cached(file: &File, offset: u64, len: usize) -> bool {
    // Not in every libc target yet; 451 is its number on every
    // architecture Linux added it to.
    const SYS_CACHESTAT: libc::c_long = 451;
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    let range = Range {
        off: offset,
        len: len as u64,
    };
    let mut stat = Stat::default();
    // SAFETY: both pointers are to live, properly laid out structs for the
    // duration of the call; the fd is open for the lifetime of `file`.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut Stat,
            0u32,
        )
    };
    // Pages past the end of the file are not counted, so compare with the
    // part of the range the file has.
    let in_file = file
        .metadata()
        .map(|m| m.len().saturating_sub(offset).min(len as u64))
        .unwrap_or(len as u64);
    let page = 4096u64;
    rc == 0 && stat.nr_cache >= in_file.div_ceil(page)
}

#[cfg(test)]
mod tests {
    use super::*;

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
