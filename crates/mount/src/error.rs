//! Errors of the file system layer: the errno the kernel gets, and the
//! cause it came from (a daemon call's error, an I/O error). Nothing logs
//! where an error starts: the adapter (`fuse.rs`) logs each failed
//! operation once, with its cause, in the operation's span (op, inode,
//! task id).

use std::sync::Arc;

use dfcache_client::ClientError;

/// An errno and, when there is one, why.
#[derive(Debug, Clone)]
pub struct FsError {
    code: i32,
    cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// The name the file system's code uses for its error: an errno.
pub type Errno = FsError;

pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    pub const ENOENT: FsError = FsError::new(libc::ENOENT);
    pub const EIO: FsError = FsError::new(libc::EIO);
    pub const EINVAL: FsError = FsError::new(libc::EINVAL);
    pub const EACCES: FsError = FsError::new(libc::EACCES);
    pub const EPERM: FsError = FsError::new(libc::EPERM);
    pub const EEXIST: FsError = FsError::new(libc::EEXIST);
    pub const EXDEV: FsError = FsError::new(libc::EXDEV);
    pub const ENOTDIR: FsError = FsError::new(libc::ENOTDIR);
    pub const ENODATA: FsError = FsError::new(libc::ENODATA);
    pub const ERANGE: FsError = FsError::new(libc::ERANGE);
    pub const EBADF: FsError = FsError::new(libc::EBADF);
    pub const ETIMEDOUT: FsError = FsError::new(libc::ETIMEDOUT);
    pub const EOPNOTSUPP: FsError = FsError::new(libc::EOPNOTSUPP);
    pub const ESTALE: FsError = FsError::new(libc::ESTALE);
    pub const EFBIG: FsError = FsError::new(libc::EFBIG);
    pub const EISDIR: FsError = FsError::new(libc::EISDIR);
    pub const ELOOP: FsError = FsError::new(libc::ELOOP);
    pub const EBUSY: FsError = FsError::new(libc::EBUSY);
    pub const ENOTEMPTY: FsError = FsError::new(libc::ENOTEMPTY);

    /// An errno with no cause beyond the file system's own rules.
    pub const fn new(code: i32) -> Self {
        FsError { code, cause: None }
    }

    /// An errno caused by `cause`.
    pub fn caused_by(code: i32, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        FsError {
            code,
            cause: Some(Arc::new(cause)),
        }
    }

    /// The errno of an I/O error (EIO when it has none).
    pub fn io(err: std::io::Error) -> Self {
        let code = err.raw_os_error().unwrap_or(libc::EIO);
        FsError::caused_by(code, err)
    }

    pub fn code(&self) -> i32 {
        self.code
    }

    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.cause.as_deref()
    }

    /// The same errno with `cause` attached, when it has none yet.
    pub fn because(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        if self.cause.is_none() {
            self.cause = Some(Arc::new(cause));
        }
        self
    }

    /// Whether this is worth a warning in the log: a failure the user
    /// cannot explain from the errno alone (the daemon failed, timed out,
    /// lacks an RPC, is out of space), not an answer such as ENOENT.
    pub fn is_failure(&self) -> bool {
        self.cause.is_some()
            && !matches!(
                self.code,
                libc::ENOENT | libc::EEXIST | libc::ENODATA | libc::ERANGE
            )
    }
}

/// Two errors are the same errno, whatever their causes.
impl PartialEq for FsError {
    fn eq(&self, other: &Self) -> bool {
        self.code == other.code
    }
}

impl Eq for FsError {}

impl std::fmt::Display for FsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = std::io::Error::from_raw_os_error(self.code);
        match &self.cause {
            Some(cause) => write!(f, "{what}: {cause}"),
            None => write!(f, "{what}"),
        }
    }
}

impl std::error::Error for FsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Some(cause) => Some(cause.as_ref()),
            None => None,
        }
    }
}

impl From<ClientError> for FsError {
    fn from(err: ClientError) -> Self {
        FsError::caused_by(err.errno(), err)
    }
}

impl From<&ClientError> for FsError {
    /// For errors that are also kept (a shared fetch's result): the cause
    /// is the error's words.
    fn from(err: &ClientError) -> Self {
        FsError::caused_by(err.errno(), std::io::Error::other(err.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_compares_by_errno_and_shows_its_cause() {
        let timed_out = FsError::from(ClientError::Protocol("bad chunk".into()));
        assert_eq!(timed_out, FsError::EIO);
        assert!(timed_out.is_failure());
        assert!(timed_out.to_string().contains("bad chunk"), "{timed_out}");
        assert!(!FsError::ENOENT.is_failure());
        let io = FsError::io(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(io.code(), libc::ENOSPC);
    }
}
