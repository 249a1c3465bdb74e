use std::path::PathBuf;

use tonic::Code;

/// Why a daemon call failed, typed so the CLI can word it and the mount can
/// turn it into an errno.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("task {0} does not exist")]
    NotFound(String),
    #[error("cannot reach the daemon at {socket}: {message}")]
    Unavailable { socket: PathBuf, message: String },
    #[error(
        "the connection to the daemon at {socket} broke mid-call (did the daemon exit?): {message}"
    )]
    ConnectionLost { socket: PathBuf, message: String },
    #[error("the daemon at {socket} does not support {what}")]
    Unsupported { socket: PathBuf, what: &'static str },
    #[error("the daemon can only import by path, and {path} has no path it can open: {reason}")]
    NoDaemonPath { path: PathBuf, reason: String },
    #[error("the daemon refused the request: {message}")]
    InvalidArgument { message: String },
    #[error("the daemon is out of space: {message}")]
    NoSpace { message: String },
    #[error("permission denied by the daemon: {message}")]
    PermissionDenied { message: String },
    #[error("{message}")]
    AlreadyExists { message: String },
    #[error("the daemon failed ({code:?}): {message}")]
    Daemon { code: Code, message: String },
    /// The daemon accepted the connection but did not answer (a frozen or
    /// overloaded daemon): the mount says ETIMEDOUT.
    #[error("the daemon at {socket} did not answer {what} within {after:?}")]
    TimedOut {
        socket: PathBuf,
        what: &'static str,
        after: std::time::Duration,
    },
    #[error("the daemon sent a malformed response: {0}")]
    Protocol(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type ClientResult<T> = Result<T, ClientError>;

impl ClientError {
    pub fn from_status(
        status: tonic::Status,
        task_id: Option<&str>,
        socket: &std::path::Path,
    ) -> Self {
        let message = status.message().to_string();
        // Released dfdaemon reports an unknown task as INTERNAL "... not found".
        let not_found = status.code() == Code::NotFound
            || (status.code() == Code::Internal
                && message.to_ascii_lowercase().contains("not found"));
        match (status.code(), task_id) {
            (_, Some(id)) if not_found => ClientError::NotFound(id.to_string()),
            (Code::Unavailable, _) => ClientError::Unavailable {
                socket: socket.to_path_buf(),
                message,
            },
            // tonic reports a connection that died under a call as UNKNOWN
            // (or CANCELLED) with the transport's words.
            (Code::Unknown | Code::Cancelled, _) => ClientError::ConnectionLost {
                socket: socket.to_path_buf(),
                message,
            },
            (Code::InvalidArgument | Code::OutOfRange, _) => {
                ClientError::InvalidArgument { message }
            }
            (Code::ResourceExhausted, _) => ClientError::NoSpace { message },
            (Code::PermissionDenied, _) => ClientError::PermissionDenied { message },
            (Code::AlreadyExists, _) => ClientError::AlreadyExists { message },
            (Code::DeadlineExceeded, _) => ClientError::Daemon {
                code: Code::DeadlineExceeded,
                message,
            },
            (code, _) => ClientError::Daemon { code, message },
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ClientError::Io {
            context: context.into(),
            source,
        }
    }

    /// The errno a file system call should fail with (the fault table in docs/SEMANTICS.md).
    pub fn errno(&self) -> i32 {
        match self {
            ClientError::NotFound(_) => libc::ENOENT,
            ClientError::PermissionDenied { .. } => libc::EACCES,
            ClientError::NoSpace { .. } => libc::ENOSPC,
            ClientError::InvalidArgument { .. } => libc::EINVAL,
            ClientError::AlreadyExists { .. } => libc::EEXIST,
            ClientError::TimedOut { .. } => libc::ETIMEDOUT,
            ClientError::Daemon {
                code: Code::Unimplemented,
                ..
            } => libc::EOPNOTSUPP,
            ClientError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EIO,
        }
    }
}
