//! The mount calls of a publish, as the mount(2) family makes them. Each
//! is one syscall; what to undo when a later one fails is the caller's
//! (`publish`).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Bind-mounts `source` at `target`, then makes that mount read-only,
/// nosuid and nodev (a bind takes its flags only from a remount). If the
/// remount fails the bind is detached again.
pub fn bind_read_only(source: &Path, target: &Path) -> std::io::Result<()> {
    let (src, dst) = (c_path(source)?, c_path(target)?);
    // SAFETY: both strings are NUL-terminated and live for the call; the
    // null type and data are what a bind mount takes.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    })?;
    if let Err(e) = remount_read_only(target) {
        let _ = detach(target);
        return Err(e);
    }
    Ok(())
}

/// Makes the mount at `target` read-only (with nosuid and nodev): a
/// per-mount flag, so other mounts of the same file system keep theirs.
pub fn remount_read_only(target: &Path) -> std::io::Result<()> {
    let dst = c_path(target)?;
    let flags =
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    // SAFETY: as in bind_read_only; a remount takes no source.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            dst.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    })
}

/// Mounts a tmpfs named `source` at `target` with `options`
/// (`size=...,mode=...`), nosuid and nodev.
pub fn mount_tmpfs(source: &str, target: &Path, options: &str) -> std::io::Result<()> {
    let (src, dst) = (
        CString::new(source).map_err(std::io::Error::other)?,
        c_path(target)?,
    );
    let fstype = c"tmpfs";
    let data = CString::new(options).map_err(std::io::Error::other)?;
    // SAFETY: every string is NUL-terminated and outlives the call.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    })
}

/// Lazy unmount (MNT_DETACH) of the mount on top at `target`, with every
/// mount below it in the tree: it succeeds even while a reader still has
/// a file open (the pod is gone, a straggler may not be).
pub fn detach(target: &Path) -> std::io::Result<()> {
    let dst = c_path(target)?;
    // SAFETY: `dst` is NUL-terminated and lives for the call.
    check(unsafe { libc::umount2(dst.as_ptr(), libc::MNT_DETACH) })
}
