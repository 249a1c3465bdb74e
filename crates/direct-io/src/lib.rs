//! Linux I/O around the page cache, shared by the client (reading files it
//! imports) and the store (writing and serving task content): aligned
//! buffers for `O_DIRECT`, reused read blocks handed out as `Bytes`, and
//! `cachestat(2)` to tell when the page cache already holds a range.
//!
//! Why: on these VMs the kernel's copies into and out of fresh page-cache
//! pages were the largest cost of moving a multi-gigabyte task (see
//! docs/BENCHMARKING.md), and a node-wide daemon or a pod should not push
//! everyone else's working set out of the page cache for a one-off copy.
//! Nothing here is specific to the client or the daemon.

mod aligned;
mod blocks;
mod cachestat;

pub use aligned::AlignedBuf;
pub use blocks::{BlockPool, BlockRoom, StorageSlot};
pub use cachestat::is_cached;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Alignment `O_DIRECT` needs for buffer, offset and length (covers 512-byte
/// and 4 KiB logical blocks).
pub const ALIGN: usize = 4096;

/// Opens `path` for direct reads; `None` where the file system refuses.
pub fn open_direct(path: &Path) -> Option<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

/// Reads until `buf` is full or the file ends; returns how much was read.
pub fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Whether an error is the file system refusing `O_DIRECT` for this
/// request (alignment or support), as opposed to a real I/O error.
pub fn is_direct_refusal(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}
