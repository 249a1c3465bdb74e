//! What the mount needs of a daemon, as a trait: the gRPC client
//! implements it (`grpc.rs`), and so does an in-memory fake that injects
//! the faults of the real world (`fake.rs`), so the file system's
//! semantics are testable without a kernel or a daemon process;
//! `metered.rs` counts and times the calls of any of them.
//!
//! The trait speaks the client's language (ClientError, WriteSummary):
//! deadlines, retries of the capability probe and the wire's checks
//! (chunk offsets, complete ranges) happen below it, in `grpc::client`;
//! what crosses it is what the file system acts on.

pub mod fake;
mod grpc;
pub mod metered;

use std::path::Path;
use std::time::SystemTime;

use bytes::Bytes;

pub use dfcache_client::{
    ChunkReceiver, ClientError, ClientResult, Code, DownloadedPiece, ImportOptions, LocalCopy,
    ReadRange, WriteSummary,
};

/// A task as the daemon describes it (a stat, or one entry of a listing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    pub id: String,
    pub content_length: u64,
    /// None (or 0) when the daemon did not say: the default rule applies.
    pub piece_length: Option<u64>,
    pub created_at: Option<SystemTime>,
}

/// The chunks of one range read, in order.
#[tonic::async_trait]
pub trait ChunkStream: Send {
    /// The next chunk, or None once the whole range came.
    async fn next_chunk(&mut self) -> ClientResult<Option<Bytes>>;
}

/// The pieces of one whole-task download, in any order.
#[tonic::async_trait]
pub trait PieceSource: Send {
    /// The next piece, or None once the daemon finished.
    async fn next_piece(&mut self) -> ClientResult<Option<DownloadedPiece>>;
}

/// The calls the mount makes.
#[tonic::async_trait]
pub trait DaemonClient: Send + Sync + 'static {
    /// Whether the daemon has the streaming RPCs (asked when not known yet).
    async fn streams(&self) -> ClientResult<bool>;
    /// Whether the daemon is known to lack them (no call is made).
    fn is_legacy(&self) -> bool;
    async fn stat(&self, task_id: &str) -> ClientResult<TaskInfo>;
    /// The daemon's local tasks.
    async fn list(&self) -> ClientResult<Vec<TaskInfo>>;
    /// The daemon's own copy of a task (None: it holds none).
    async fn stat_local(&self, task_id: &str) -> ClientResult<Option<LocalCopy>>;
    /// A byte range of a task, streamed.
    async fn read(&self, task_id: &str, range: ReadRange) -> ClientResult<Box<dyn ChunkStream>>;
    /// A new task from the chunks received on `chunks` (closing the channel
    /// ends the content; an `Err` item aborts the write).
    async fn write(
        &self,
        chunks: ChunkReceiver,
        options: &ImportOptions,
    ) -> ClientResult<WriteSummary>;
    /// A new task from a local file: streamed, or (to a daemon without the
    /// streaming RPCs) uploaded by `daemon_path`, the file as the daemon
    /// sees it (or the reason there is none).
    async fn import_file(
        &self,
        local: &Path,
        daemon_path: Result<&Path, &str>,
        options: &ImportOptions,
    ) -> ClientResult<WriteSummary>;
    /// The whole task as piece content (a daemon without range reads).
    async fn download(&self, task_id: &str) -> ClientResult<Box<dyn PieceSource>>;
    /// The whole task in a file at `daemon_path` (a path as the daemon
    /// sees it, which must not exist): the daemon hard-links its own
    /// content file there, or fails, and reports each piece, without its
    /// content, once it has landed in that file. `persistent` is what the
    /// daemon's copy is to be marked (a released dfdaemon marks it at
    /// every download: the mount passes what the copy already was).
    async fn download_linked(
        &self,
        task_id: &str,
        daemon_path: &Path,
        persistent: bool,
    ) -> ClientResult<Box<dyn PieceSource>>;
}
