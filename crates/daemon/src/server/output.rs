//! The file an export is copied into: created under a temporary name in
//! the target's directory and renamed over the target only when complete.
//!
//! Everything is done with the caller's rights ([`Acting`]): the directory
//! is opened once, and each later step (the create, the rename, the
//! directory's fsync, the removal of a failed export's file) is relative
//! to that descriptor. A directory swapped for a symlink after the open
//! changes nothing, and each step is one the caller could take itself; the
//! file belongs to the caller. The directory is opened without the
//! daemon's own access to /proc ([`caller::open`]).

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{Error, ErrorKind};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tonic::Status;

use crate::caller::{self, Acting};

use super::reply::{acting_status, path_status};

static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

pub(super) struct Output {
    file: Arc<File>,
    /// The target's directory, as opened when the export began.
    dir: Arc<File>,
    temp: CString,
    name: CString,
    /// The path the client named, for messages.
    target: PathBuf,
    acting: Acting,
    overwrite: bool,
    committed: bool,
}

impl Output {
    /// Creates the temporary file; refuses a target that exists unless
    /// `overwrite`.
    pub async fn create(acting: &Acting, target: &Path, overwrite: bool) -> Result<Self, Status> {
        let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
            return Err(Status::invalid_argument(format!(
                "output path {} names no file",
                target.display()
            )));
        };
        let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
        let temp = format!(
            ".{}.dfcache-{}-{n}.part",
            name.to_string_lossy(),
            std::process::id()
        );
        // Neither holds a NUL: `client_path` refused any path with one.
        let (Ok(temp), Ok(name)) = (CString::new(temp), CString::new(name.as_bytes())) else {
            return Err(Status::invalid_argument(format!(
                "output path {} contains a NUL byte",
                target.display()
            )));
        };
        let parent = parent.to_path_buf();
        let (t, n) = (temp.clone(), name.clone());
        let confine = !acting.is_daemon();
        let (dir, file) = acting
            .run(move || {
                let dir = caller::open(&parent, libc::O_DIRECTORY, confine)?;
                if !overwrite && exists_at(&dir, &n)? {
                    return Err(Error::new(ErrorKind::AlreadyExists, "already exists"));
                }
                let file = create_at(&dir, &t)?;
                Ok((dir, file))
            })
            .await
            .map_err(|e| acting_status(target, e))?
            .map_err(|e| path_status(target, e, acting))?;
        Ok(Self {
            file: Arc::new(file),
            dir: Arc::new(dir),
            temp,
            name,
            target: target.to_path_buf(),
            acting: acting.clone(),
            overwrite,
            committed: false,
        })
    }

    pub async fn write_at(&self, content: bytes::Bytes, offset: u64) -> Result<(), Status> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.write_all_at(&content, offset))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| path_status(&self.target, e, &self.acting))
    }

    /// fsync, rename, fsync the directory: the export is complete at its
    /// name after a power loss, or absent, never a name with missing bytes.
    /// Without `overwrite`, a file that appeared at the target meanwhile is
    /// left alone (ALREADY_EXISTS).
    pub async fn commit(mut self) -> Result<(), Status> {
        let (file, dir) = (self.file.clone(), self.dir.clone());
        let (temp, name, overwrite) = (self.temp.clone(), self.name.clone(), self.overwrite);
        let (renamed, result) = self
            .acting
            .run(move || {
                if let Err(e) = file.sync_all() {
                    return (false, Err(e));
                }
                if let Err(e) = rename_at(&dir, &temp, &name, overwrite) {
                    return (false, Err(e));
                }
                (true, dir.sync_all())
            })
            .await
            .map_err(|e| acting_status(&self.target, e))?;
        self.committed = renamed;
        result.map_err(|e| path_status(&self.target, e, &self.acting))
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let (dir, temp) = (self.dir.clone(), self.temp.clone());
        let removed = self.acting.run_blocking(move || {
            // SAFETY: a NUL-terminated name relative to a directory
            // descriptor open for the call.
            unsafe { libc::unlinkat(dir.as_raw_fd(), temp.as_ptr(), 0) }
        });
        if !matches!(removed, Ok(0)) {
            tracing::warn!(target = %self.target.display(), "could not remove a failed export's temporary file");
        }
    }
}

/// Whether `dir` has an entry `name` (a dangling symlink counts).
fn exists_at(dir: &File, name: &CStr) -> std::io::Result<bool> {
    // SAFETY: `stat` is written by the call only; the name is
    // NUL-terminated and the descriptor open for the call.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut stat,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let e = Error::last_os_error();
    match e.kind() {
        ErrorKind::NotFound => Ok(false),
        _ => Err(e),
    }
}

/// A new file `name` in `dir`, never through a symlink at that name.
fn create_at(dir: &File, name: &CStr) -> std::io::Result<File> {
    // SAFETY: as in `exists_at`; the mode is the third argument O_CREAT
    // takes.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o666 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: a descriptor just opened, owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Renames `from` to `to` in `dir`; without `overwrite`, atomically only if
/// `to` does not exist (RENAME_NOREPLACE), or by a check then a rename on a
/// file system without that flag (some network and FUSE ones).
fn rename_at(dir: &File, from: &CStr, to: &CStr, overwrite: bool) -> std::io::Result<()> {
    let fd = dir.as_raw_fd();
    let flags = if overwrite { 0 } else { libc::RENAME_NOREPLACE };
    // SAFETY: NUL-terminated names relative to a descriptor open for the
    // call.
    if unsafe { libc::renameat2(fd, from.as_ptr(), fd, to.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let e = Error::last_os_error();
    if overwrite || e.raw_os_error() != Some(libc::EINVAL) {
        return Err(e);
    }
    if exists_at(dir, to)? {
        return Err(Error::new(ErrorKind::AlreadyExists, "already exists"));
    }
    // SAFETY: as above.
    if unsafe { libc::renameat(fd, from.as_ptr(), fd, to.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(Error::last_os_error())
    }
}
