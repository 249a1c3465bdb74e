//! `cachestat(2)`: how much of a range the page cache holds.

use std::fs::File;
use std::os::fd::AsRawFd;

/// Whether every page of `offset..offset + len` is in the page cache,
/// asked with `cachestat(2)` (Linux 6.5); `false` where it is missing, so
/// older kernels read large files directly.
pub fn is_cached(file: &File, offset: u64, len: usize) -> bool {
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
