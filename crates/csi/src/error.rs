//! What a publish or unpublish can fail with, and the CSI spec's status
//! code for each: kubelet retries UNAVAILABLE and DEADLINE_EXCEEDED, shows
//! the others in the pod's events.

use std::path::PathBuf;
use std::time::Duration;

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{kind} {id} is neither on this node nor in the P2P network")]
    NotFound { kind: &'static str, id: String },
    #[error("task {id} is not a tree manifest (use task and file for one file)")]
    NotATree { id: String },
    #[error(
        "the node's dfcache mount is not mounted at {0} (is the dfcache container of this pod running?)"
    )]
    NodeMountMissing(PathBuf),
    #[error("the node's dfcache mount at {path} does not answer: {source}")]
    NodeMountDead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the node's daemon did not answer for {what} within the mount's fetch timeout")]
    DaemonTimedOut { what: String },
    #[error("looking up {what} in the node's dfcache mount took longer than {after:?}")]
    LookupTimedOut { what: String, after: Duration },
    #[error("{path} already holds another volume ({existing}); unpublish it first")]
    AlreadyPublished { path: PathBuf, existing: String },
    #[error(
        "{0} exists and is not an empty directory: a volume is published on a path of its own"
    )]
    TargetOccupied(PathBuf),
    #[error("the parent directory of {0} does not exist (kubelet creates it)")]
    NoParent(PathBuf),
    #[error("still mounted at {0} after detaching every mount there")]
    StillMounted(PathBuf),
    #[error("warming up {path}: {source}")]
    Warmup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl PublishError {
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PublishError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub fn code(&self) -> Code {
        match self {
            PublishError::NotFound { .. } => Code::NotFound,
            PublishError::NotATree { .. } => Code::InvalidArgument,
            PublishError::NodeMountMissing(_)
            | PublishError::NodeMountDead { .. }
            | PublishError::DaemonTimedOut { .. } => Code::Unavailable,
            PublishError::LookupTimedOut { .. } => Code::DeadlineExceeded,
            PublishError::AlreadyPublished { .. } => Code::AlreadyExists,
            PublishError::TargetOccupied(_) | PublishError::NoParent(_) => Code::FailedPrecondition,
            // The daemon not answering or failing a read: worth a retry.
            PublishError::Warmup { source, .. }
                if matches!(
                    source.raw_os_error(),
                    Some(libc::ETIMEDOUT | libc::ENOTCONN | libc::ECONNABORTED | libc::EIO)
                ) =>
            {
                Code::Unavailable
            }
            PublishError::StillMounted(_)
            | PublishError::Warmup { .. }
            | PublishError::Io { .. } => Code::Internal,
        }
    }
}

impl From<PublishError> for Status {
    fn from(e: PublishError) -> Status {
        // Every message carries its cause: pod events show only this.
        Status::new(e.code(), e.to_string())
    }
}
