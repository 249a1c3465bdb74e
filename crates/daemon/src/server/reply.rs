//! What the handlers answer: a store error as the gRPC status a caller
//! sees (shared with the short-read channel), and the streams of replies.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::Status;

use crate::store::StoreError;

pub(crate) fn status_of(err: StoreError) -> Status {
    match &err {
        StoreError::NotFound(_) => Status::not_found(err.to_string()),
        StoreError::InvalidArgument(_) => Status::invalid_argument(err.to_string()),
        StoreError::AlreadyExists { .. } => Status::already_exists(err.to_string()),
        StoreError::PermissionDenied { .. } => Status::permission_denied(err.to_string()),
        StoreError::NoSpace { .. } => Status::resource_exhausted(err.to_string()),
        StoreError::InUse { .. } | StoreError::Io { .. } => Status::internal(err.to_string()),
    }
}

pub(crate) type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;
