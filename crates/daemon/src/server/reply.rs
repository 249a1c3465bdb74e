//! What the handlers answer: a store error, or an error on a path a client
//! named, as the gRPC status a caller sees (shared with the short-read
//! channel), and the streams of replies.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Response, Status};

use super::outgoing::Outgoing;

use crate::caller::{Acting, ActingError};
use crate::store::StoreError;

pub(crate) fn status_of(err: StoreError) -> Status {
    match &err {
        StoreError::NotFound(_) => Status::not_found(err.to_string()),
        StoreError::InvalidArgument(_) => Status::invalid_argument(err.to_string()),
        StoreError::AlreadyExists { .. } => Status::already_exists(err.to_string()),
        StoreError::PermissionDenied { .. } | StoreError::NotAnImporter { .. } => {
            Status::permission_denied(err.to_string())
        }
        StoreError::NoSpace { .. } => Status::resource_exhausted(err.to_string()),
        StoreError::InUse { .. } | StoreError::Io { .. } => Status::internal(err.to_string()),
    }
}

/// An error of an operation on `path` (a path the client named) carried
/// out with `acting`'s rights; the message names the path, and the uid
/// when the rights were a caller's.
pub(crate) fn path_status(path: &Path, e: std::io::Error, acting: &Acting) -> Status {
    let whose = match acting {
        Acting::AsDaemon => String::new(),
        Acting::AsCaller(caller) => format!(" (as uid {})", caller.uid),
    };
    let msg = format!("{}: {e}{whose}", path.display());
    match e.kind() {
        std::io::ErrorKind::NotFound => Status::invalid_argument(format!(
            "{}: no such file or directory (as the daemon sees it){whose}",
            path.display()
        )),
        std::io::ErrorKind::PermissionDenied => Status::permission_denied(msg),
        std::io::ErrorKind::AlreadyExists => Status::already_exists(msg),
        std::io::ErrorKind::StorageFull => Status::resource_exhausted(msg),
        std::io::ErrorKind::NotADirectory | std::io::ErrorKind::IsADirectory => {
            Status::invalid_argument(msg)
        }
        _ => Status::internal(msg),
    }
}

/// Why an operation on `path` could not be run with a caller's rights.
pub(crate) fn acting_status(path: &Path, e: ActingError) -> Status {
    let msg = format!("{}: {e}", path.display());
    match e {
        ActingError::CannotAssume { .. } => Status::permission_denied(msg),
        ActingError::Thread { .. } => Status::unavailable(msg),
        ActingError::Lost { .. } => Status::internal(msg),
    }
}

pub(crate) type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A streamed reply whose encoded messages hold `outgoing`'s share until
/// the connection has written them (see `outgoing::layer`).
pub(crate) fn streamed<T>(
    stream: ResponseStream<T>,
    outgoing: Arc<Outgoing>,
) -> Response<ResponseStream<T>> {
    let mut response = Response::new(stream);
    response.extensions_mut().insert(outgoing);
    response
}
