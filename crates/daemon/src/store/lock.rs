//! One store, one owner: the process that opens a store holds an exclusive
//! `flock` on `DIR/lock` for as long as its `Store` lives. A second
//! `serve` or `mount --embedded` on the same directory would otherwise
//! empty `tmp/` under the first one's imports in progress and race with it
//! on every commit and delete.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use crate::store::error::{StoreError, StoreResult};

/// Name of the lock file inside the store directory.
pub const LOCK_FILE: &str = "lock";

/// Takes the store's lock without waiting; the lock is released when the
/// returned file is closed (also when the process dies, so a crashed
/// daemon never locks its successor out).
pub fn take(dir: &Path) -> StoreResult<File> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&path)
        .map_err(|e| StoreError::io(format!("open {}", path.display()), e))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut text = String::new();
            let pid = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse::<u32>().ok());
            return Err(StoreError::InUse {
                dir: dir.to_path_buf(),
                pid,
            });
        }
        return Err(StoreError::io(format!("lock {}", path.display()), err));
    }
    // The pid is written only once the lock is ours, so what a refused
    // process reads names the holder (or nothing, during this window).
    let pid = format!("{}\n", std::process::id());
    file.set_len(0)
        .and_then(|()| file.write_all_at(pid.as_bytes(), 0))
        .map_err(|e| StoreError::io(format!("write {}", path.display()), e))?;
    Ok(file)
}
