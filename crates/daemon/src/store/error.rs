use std::path::PathBuf;

/// Why a store operation failed. The gRPC server maps each variant to a status.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("persistent cache task {0} not found")]
    NotFound(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("{path}: already exists")]
    AlreadyExists { path: PathBuf },
    #[error("{path}: permission denied")]
    PermissionDenied { path: PathBuf },
    /// A delete by a uid that did not import the task.
    #[error("task {id} was not imported by uid {uid}: only its importers and root may delete it")]
    NotAnImporter { id: String, uid: u32 },
    #[error("no space left while {context}")]
    NoSpace { context: String },
    /// Another process holds the store's lock file: two daemons on one
    /// directory would delete each other's temporary files at start and
    /// race on every commit.
    #[error(
        "store {} is in use by {} (another dfcache serve or mount --embedded); refusing to start",
        dir.display(),
        holder(*pid)
    )]
    InUse { dir: PathBuf, pid: Option<u32> },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Wraps an I/O error with what was being done, keeping "no space" and
    /// "permission denied" recognisable for the status mapping.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        let context = context.into();
        match source.kind() {
            std::io::ErrorKind::StorageFull => StoreError::NoSpace { context },
            _ => StoreError::Io { context, source },
        }
    }

    /// Like `io`, for an error about a path a client named.
    pub fn path(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        match source.kind() {
            std::io::ErrorKind::PermissionDenied => StoreError::PermissionDenied { path },
            std::io::ErrorKind::AlreadyExists => StoreError::AlreadyExists { path },
            std::io::ErrorKind::NotFound => StoreError::InvalidArgument(format!(
                "{}: no such file or directory (as the daemon sees it)",
                path.display()
            )),
            _ => StoreError::io(path.display().to_string(), source),
        }
    }
}

fn holder(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("process {pid}"),
        // The holder took the lock but has not written its pid yet.
        None => "another process".to_string(),
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

impl From<dfcache_wire::domain::ttl::TtlOutOfRange> for StoreError {
    fn from(e: dfcache_wire::domain::ttl::TtlOutOfRange) -> Self {
        StoreError::InvalidArgument(e.to_string())
    }
}
