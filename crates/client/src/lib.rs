//! The one client of a dfdaemon (real or embedded), shared by the CLI and
//! the mount. Streaming RPCs are tried first; a daemon that answers
//! UNIMPLEMENTED is remembered as legacy and gets the legacy RPCs from then
//! on, with one logged warning.
//!
//! Beside it: [`short_reads`], the lean channel for a random read's pages;
//! [`mapping`], container/host path mapping for the paths a daemon opens.

mod channel;
mod error;
mod legacy;
mod local;
mod read;
mod source;
mod write;

pub mod mapping;
pub mod short_reads;

pub use channel::{connect_channel, connect_channel_with};

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use tonic::transport::Channel;
use tracing::warn;

use crate::short_reads::ShortReads;
use dfcache_wire::pb::common::PersistentCacheTask;
use dfcache_wire::pb::dfdaemon::dfdaemon_download_client::DfdaemonDownloadClient;
use dfcache_wire::pb::dfdaemon::*;
use dfcache_wire::short_reads::MAX_LEN;
use dfcache_wire::transport::{Windows, GRPC_MAX_MESSAGE};

pub use error::{ClientError, ClientResult};
pub use legacy::{DownloadedPiece, PieceStream};
pub use local::{Deliver, LocalCopy};
pub use read::{ReadRange, TaskReader};
pub use source::MAX_FILE_STREAM_MEMORY;
pub use tonic::Code;
pub use write::{ChunkReceiver, WriteSummary};

/// Receives transfer progress; the CLI draws bars with it, the mount ignores it.
pub trait Progress: Send + Sync {
    fn set_total(&self, _total: u64) {}
    fn advance(&self, _bytes: u64) {}
}

/// Progress that goes nowhere.
pub struct NoProgress;
impl Progress for NoProgress {}

/// What a new task is created with (upstream dfcache import's flags).
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    pub persistent_replica_count: u64,
    pub tag: Option<String>,
    pub application: Option<String>,
    pub ttl: Option<Duration>,
    pub piece_length: Option<u64>,
    pub content_for_calculating_task_id: Option<String>,
    /// Upper bound for the whole transfer.
    pub timeout: Option<Duration>,
}

/// How long the client waits on the daemon. Every call has one of these
/// bounds, so a frozen daemon (one whose socket still accepts) gives an
/// error instead of a hang.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// A unary call (stat, list, delete, the capability probe) and the
    /// first answer of a stream.
    pub call: Duration,
    /// A transfer that moves no byte for this long fails; a slow transfer
    /// that keeps moving (a big P2P download) is never cut off by this.
    pub progress: Duration,
}

impl Default for Deadlines {
    /// For the CLI: a daemon answers a stat within seconds; a P2P download
    /// may wait on peers for minutes between pieces.
    fn default() -> Self {
        Deadlines {
            call: Duration::from_secs(30),
            progress: Duration::from_secs(300),
        }
    }
}

/// What the client knows of the daemon's RPCs.
const UNKNOWN: u8 = 0;
const STREAMING: u8 = 1;
const LEGACY: u8 = 2;

#[derive(Clone)]
pub struct Client {
    rpc: DfdaemonDownloadClient<Channel>,
    socket: PathBuf,
    /// UNKNOWN until a probe or a streaming call got an answer; LEGACY once
    /// the daemon answered UNIMPLEMENTED to a streaming RPC.
    mode: Arc<AtomicU8>,
    deadlines: Deadlines,
    /// The mount's: short ranges asked on the daemon's short-read channel.
    short_reads: Option<Arc<ShortReads>>,
}

impl Client {
    /// A client of the daemon listening on `socket`. Connects lazily, and
    /// reconnects by itself after the daemon restarts.
    pub fn new(socket: &Path) -> Self {
        Self::with_windows(socket, Windows::TRANSFER)
    }

    /// A client whose HTTP/2 receive windows bound what it buffers.
    pub fn with_windows(socket: &Path, windows: Windows) -> Self {
        let rpc = DfdaemonDownloadClient::new(connect_channel_with(socket, windows))
            .max_decoding_message_size(GRPC_MAX_MESSAGE)
            .max_encoding_message_size(GRPC_MAX_MESSAGE);
        Self {
            rpc,
            socket: socket.to_path_buf(),
            mode: Arc::new(AtomicU8::new(UNKNOWN)),
            deadlines: Deadlines::default(),
            short_reads: None,
        }
    }

    /// The same client, asking short ranges (a random read's pages) on the
    /// daemon's short-read channel where it has one: a round trip there
    /// costs half the CPU of a gRPC read (see `short_reads`). Each exchange
    /// is bounded by the call deadline.
    pub fn with_short_reads(mut self) -> Self {
        self.short_reads = Some(Arc::new(ShortReads::new(self.socket.clone())));
        self
    }

    /// Bytes of a short `range` from the short-read channel, or None when
    /// it is to be read through gRPC (no channel, or not a short range).
    pub async fn short_read(&self, task_id: &str, range: ReadRange) -> ClientResult<Option<Bytes>> {
        match (&self.short_reads, range.length) {
            // Longer ranges (read-ahead's blocks) go straight to gRPC.
            (Some(short), Some(length)) if length <= u64::from(MAX_LEN) => {
                short
                    .read(task_id, range.offset, length, self.deadlines.call)
                    .await
            }
            _ => Ok(None),
        }
    }

    /// Whether the daemon answered the short-read hello (None: not asked
    /// yet, or this client does not use the channel).
    pub fn short_reads_offered(&self) -> Option<bool> {
        self.short_reads.as_ref().and_then(|s| s.offered())
    }

    /// The same client with other deadlines.
    pub fn with_deadlines(mut self, deadlines: Deadlines) -> Self {
        self.deadlines = deadlines;
        self
    }

    pub fn deadlines(&self) -> Deadlines {
        self.deadlines
    }

    /// Whether the daemon is known to lack the streaming RPCs.
    pub fn is_legacy(&self) -> bool {
        self.mode.load(Ordering::Relaxed) == LEGACY
    }

    /// Whether the daemon streams: known from an earlier answer, or asked
    /// now (so a daemon that came up after the mount gets its own RPCs).
    pub async fn streams(&self) -> ClientResult<bool> {
        match self.mode.load(Ordering::Relaxed) {
            STREAMING => Ok(true),
            LEGACY => Ok(false),
            _ => self.probe_streaming().await,
        }
    }

    /// Records that the daemon answered a streaming RPC.
    fn streaming_seen(&self) {
        let _ =
            self.mode
                .compare_exchange(UNKNOWN, STREAMING, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Records that the daemon lacks `rpc`; warns the first time only.
    fn fall_back(&self, rpc: &str) {
        if self.mode.swap(LEGACY, Ordering::Relaxed) != LEGACY {
            warn!(
                socket = %self.socket.display(),
                rpc,
                "daemon does not implement the streaming RPCs; using the legacy path-based RPCs"
            );
        }
    }

    /// Runs `call` under `limit`: past it the call is dropped (which resets
    /// its HTTP/2 stream) and `what` is reported as timed out.
    pub(crate) async fn within<T>(
        &self,
        what: &'static str,
        limit: Duration,
        call: impl Future<Output = ClientResult<T>>,
    ) -> ClientResult<T> {
        tokio::time::timeout(limit, call)
            .await
            .unwrap_or_else(|_| Err(self.timed_out(what, limit)))
    }

    pub(crate) fn timed_out(&self, what: &'static str, after: Duration) -> ClientError {
        ClientError::TimedOut {
            socket: self.socket.clone(),
            what,
            after,
        }
    }

    pub async fn stat(&self, task_id: &str) -> ClientResult<PersistentCacheTask> {
        let req = StatPersistentCacheTaskRequest {
            task_id: task_id.to_string(),
            remote_ip: None,
        };
        self.within("a stat", self.deadlines.call, async {
            let resp = self.rpc.clone().stat_persistent_cache_task(req).await;
            resp.map(|r| r.into_inner())
                .map_err(|s| self.error(s, Some(task_id)))
        })
        .await
    }

    pub async fn list_local(&self) -> ClientResult<Vec<StatLocalPersistentCacheTaskResponse>> {
        let req = ListLocalPersistentCacheTasksRequest { remote_ip: None };
        self.within("a listing", self.deadlines.call, async {
            let resp = self
                .rpc
                .clone()
                .list_local_persistent_cache_tasks(req)
                .await;
            resp.map(|r| r.into_inner().tasks)
                .map_err(|s| self.error(s, None))
        })
        .await
    }

    pub async fn delete(&self, task_id: &str) -> ClientResult<()> {
        let req = DeletePersistentCacheTaskRequest {
            task_id: task_id.to_string(),
            remote_ip: None,
        };
        let call = self.within("a delete", self.deadlines.call, async {
            Ok(self.rpc.clone().delete_persistent_cache_task(req).await)
        });
        match call.await? {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::Unimplemented => Err(ClientError::Unsupported {
                socket: self.socket.clone(),
                what: "deleting tasks through this socket (its download service has no \
                       delete; the task expires with its TTL)",
            }),
            Err(s) => Err(self.error(s, Some(task_id))),
        }
    }

    /// Turns a status into a typed error, naming the task where one is known.
    fn error(&self, status: tonic::Status, task_id: Option<&str>) -> ClientError {
        ClientError::from_status(status, task_id, &self.socket)
    }
}
