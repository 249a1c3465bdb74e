//! Opening a path for a caller: `open(2)` with the caller's rights, minus
//! what only the daemon's own process gets.
//!
//! A thread that has taken a caller's uid is still a thread of the
//! daemon, and /proc lets a process's own threads at its files whatever
//! their uid: `/proc/self/environ`, `/proc/self/mem`, the `/proc/self/fd/N`
//! links to every file and directory the daemon has open (another
//! caller's export directory among them), `/proc/<daemon pid>/...` alike.
//! So for a caller no magic link of /proc is followed (`openat2` with
//! `RESOLVE_NO_MAGICLINKS`), and nothing on a proc file system is opened:
//! what the caller gets there would be the daemon's, not its own. The
//! kernel checks everything else as for the caller's own process.

use std::ffi::CString;
use std::fs::File;
use std::io::{Error, ErrorKind};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// `PROC_SUPER_MAGIC` (linux/magic.h), as `statfs` reports it.
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// `struct open_how` (linux/openat2.h); the libc crate's cannot be built
/// outside it.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;

/// Opens `path` for reading with `flags` (O_RDONLY plus those given).
/// `confine`: as for a caller (see the module); otherwise a plain open,
/// as for root and the daemon's own uid.
pub fn open(path: &Path, flags: libc::c_int, confine: bool) -> std::io::Result<File> {
    if !confine {
        return std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(path);
    }
    let name = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| Error::new(ErrorKind::InvalidInput, e))?;
    let how = OpenHow {
        flags: (libc::O_RDONLY | libc::O_CLOEXEC | flags) as u64,
        mode: 0,
        resolve: RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: a NUL-terminated path and an `open_how` of the size given,
    // both alive for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            name.as_ptr(),
            &how,
            std::mem::size_of::<OpenHow>(),
        )
    };
    let file = if fd >= 0 {
        // SAFETY: a descriptor just opened, owned by nothing else.
        unsafe { File::from_raw_fd(fd as libc::c_int) }
    } else {
        let e = Error::last_os_error();
        match e.raw_os_error() {
            // Before Linux 5.6, or a seccomp filter that does not know the
            // call: a plain open; the check below still keeps /proc's
            // files out (a magic link to a directory stays open to it).
            Some(libc::ENOSYS) => std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(flags)
                .open(path)?,
            Some(libc::ELOOP) => return Err(Error::new(
                ErrorKind::PermissionDenied,
                "too many levels of symbolic links, or a /proc link into the daemon's own process",
            )),
            _ => return Err(e),
        }
    };
    if on_proc(&file)? {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            "a file of /proc, which would be the daemon's own process's, not the caller's",
        ));
    }
    Ok(file)
}

fn on_proc(file: &File) -> std::io::Result<bool> {
    // SAFETY: `stat` is written by the call only; the descriptor is open.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut stat) } != 0 {
        return Err(Error::last_os_error());
    }
    Ok(stat.f_type as i64 == PROC_SUPER_MAGIC)
}
