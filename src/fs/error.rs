//! Errors of the file system layer: an errno for the kernel, logged with
//! its cause when it is EIO (an EIO alone tells the user nothing).

use tracing::warn;

use crate::grpc::client::ClientError;

/// A positive errno value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const EXDEV: Errno = Errno(libc::EXDEV);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const ETIMEDOUT: Errno = Errno(libc::ETIMEDOUT);
    pub const EOPNOTSUPP: Errno = Errno(libc::EOPNOTSUPP);
    pub const ESTALE: Errno = Errno(libc::ESTALE);
}

pub type FsResult<T> = Result<T, Errno>;

impl From<&ClientError> for Errno {
    fn from(err: &ClientError) -> Self {
        let errno = Errno(err.errno());
        match errno {
            Errno::EIO | Errno::ETIMEDOUT => {
                warn!(error = %err, errno = errno.0, "daemon call failed")
            }
            Errno::EOPNOTSUPP => warn!(
                error = %err,
                "the daemon lacks the streaming RPCs (a released dfdaemon): mount with --spool DIR"
            ),
            _ => {}
        }
        errno
    }
}

impl From<ClientError> for Errno {
    fn from(err: ClientError) -> Self {
        Errno::from(&err)
    }
}
