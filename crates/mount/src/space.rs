//! What statfs reports for the mount: the tasks it knows as used space, and
//! as free space what the disk that takes this machine's imports has left.
//!
//! Tools such as installers and model downloaders check free space before
//! they write and refuse a file system that reports none, so reporting 0
//! would make `import/` look full.

use std::path::Path;

use tracing::warn;

/// Block size of the reported figures.
pub const BLOCK_SIZE: u32 = 4096;

/// Free space reported when no local directory receives imported bytes (a
/// node daemon, fed over its socket, whose disk this process cannot see):
/// 1 PiB, so that no tool refuses; an import the daemon cannot store still
/// fails at close().
const UNKNOWN_FREE_BYTES: u64 = 1 << 50;

/// Free inodes reported alongside `UNKNOWN_FREE_BYTES`.
const UNKNOWN_FREE_FILES: u64 = 1 << 20;

/// Free bytes and free inodes for unprivileged users on `dir`'s file
/// system; unknown (see `UNKNOWN_FREE_BYTES`) without a directory or when
/// it cannot be read, since reporting the disk as full would make tools
/// refuse to write.
pub fn free_space(dir: Option<&Path>) -> (u64, u64) {
    let Some(dir) = dir else {
        return (UNKNOWN_FREE_BYTES, UNKNOWN_FREE_FILES);
    };
    statvfs(dir).unwrap_or_else(|e| {
        warn!(dir = %dir.display(), error = %e, "cannot read free space; reporting it as unknown");
        (UNKNOWN_FREE_BYTES, UNKNOWN_FREE_FILES)
    })
}

fn statvfs(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut buf = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is NUL-terminated and `buf` is large enough for statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), buf.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `buf`.
    let s = unsafe { buf.assume_init() };
    Ok((s.f_bavail.saturating_mul(s.f_frsize), s.f_favail))
}
