//! The one client of a dfdaemon (real or embedded), shared by the CLI and
//! the mount. Streaming RPCs are tried first; a daemon that answers
//! UNIMPLEMENTED is remembered as legacy and gets the legacy RPCs from then
//! on, with one logged warning.

mod error;
mod legacy;
mod read;
mod source;
mod write;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;
use tracing::warn;

use crate::grpc::pb::common::PersistentCacheTask;
use crate::grpc::pb::dfdaemon::dfdaemon_download_client::DfdaemonDownloadClient;
use crate::grpc::pb::dfdaemon::*;
use crate::grpc::socket::{connect_channel_with, Windows, GRPC_MAX_MESSAGE};

pub use error::{ClientError, ClientResult};
pub use legacy::{DownloadedPiece, PieceStream};
pub use read::{ReadRange, TaskReader};
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

#[derive(Clone)]
pub struct Client {
    rpc: DfdaemonDownloadClient<Channel>,
    socket: PathBuf,
    /// Set once the daemon answered UNIMPLEMENTED to a streaming RPC.
    legacy: Arc<AtomicBool>,
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
            legacy: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether the daemon is known to lack the streaming RPCs.
    pub fn is_legacy(&self) -> bool {
        self.legacy.load(Ordering::Relaxed)
    }

    /// Records that the daemon lacks `rpc`; warns the first time only.
    fn fall_back(&self, rpc: &str) {
        if !self.legacy.swap(true, Ordering::Relaxed) {
            warn!(
                socket = %self.socket.display(),
                rpc,
                "daemon does not implement the streaming RPCs; using the legacy path-based RPCs"
            );
        }
    }

    pub async fn stat(&self, task_id: &str) -> ClientResult<PersistentCacheTask> {
        let req = StatPersistentCacheTaskRequest {
            task_id: task_id.to_string(),
            remote_ip: None,
        };
        let resp = self.rpc.clone().stat_persistent_cache_task(req).await;
        resp.map(|r| r.into_inner())
            .map_err(|s| self.error(s, Some(task_id)))
    }

    pub async fn stat_local(
        &self,
        task_id: &str,
    ) -> ClientResult<StatLocalPersistentCacheTaskResponse> {
        let req = StatLocalPersistentCacheTaskRequest {
            task_id: task_id.to_string(),
            remote_ip: None,
        };
        let resp = self.rpc.clone().stat_local_persistent_cache_task(req).await;
        resp.map(|r| r.into_inner())
            .map_err(|s| self.error(s, Some(task_id)))
    }

    pub async fn list_local(&self) -> ClientResult<Vec<StatLocalPersistentCacheTaskResponse>> {
        let req = ListLocalPersistentCacheTasksRequest { remote_ip: None };
        let resp = self
            .rpc
            .clone()
            .list_local_persistent_cache_tasks(req)
            .await;
        resp.map(|r| r.into_inner().tasks)
            .map_err(|s| self.error(s, None))
    }

    pub async fn delete(&self, task_id: &str) -> ClientResult<()> {
        let req = DeletePersistentCacheTaskRequest {
            task_id: task_id.to_string(),
            remote_ip: None,
        };
        match self.rpc.clone().delete_persistent_cache_task(req).await {
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
