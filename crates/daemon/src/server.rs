//! The embedded daemon: `DfdaemonDownload` served from a [`Store`] on a Unix
//! socket. It shares nothing with the client but the generated types.

mod download;
pub(crate) mod feed;
mod link;
mod listener;
mod outgoing;
mod output;
pub(crate) mod read;
pub(crate) mod reply;
mod upload;
mod write;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dfcache_budget::MemoryBudget;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, info_span, Instrument};

use crate::caller::{Acting, Caller};
use crate::memory::{TransferMemory, DEFAULT_MEMORY_BUDGET, RECEIVE};
use crate::store::{Deleter, Store, TaskMeta};
use dfcache_wire::domain::ttl::{duration_to_proto, MIN_TTL};
use dfcache_wire::pb::common::PersistentCacheTask;
use dfcache_wire::pb::dfdaemon::dfdaemon_download_server::{
    DfdaemonDownload, DfdaemonDownloadServer,
};
use dfcache_wire::pb::dfdaemon::*;
use dfcache_wire::transport::{DAEMON_MAX_STREAMS, GRPC_MAX_MESSAGE};

pub use listener::{bind_socket, SocketId, DEFAULT_SOCKET_MODE};
use reply::{status_of, ResponseStream};

/// How the daemon behaves beyond its store.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Permission bits of the socket file.
    pub socket_mode: u32,
    /// How often expired tasks are collected.
    pub gc_interval: Duration,
    /// Which published daemon to behave like.
    pub emulate: Emulation,
    /// Legacy only: deliver download pieces in order, each after this
    /// delay, instead of out of order (a slow in-order P2P download, of a
    /// task the node does not hold: local stats find none).
    pub legacy_piece_delay: Option<Duration>,
    /// Shortest TTL a client may ask for: 5 minutes, as upstream dfcache.
    /// Only tests lower it (an expiry test cannot wait five minutes).
    pub min_ttl: Duration,
    /// Imports (streamed writes and uploads) stored at once; more wait
    /// for a slot, their streams held back by HTTP/2 flow control. Each
    /// import costs two threads.
    pub max_concurrent_imports: usize,
    /// What every transfer's memory is taken from (`--memory-budget`; see
    /// `memory.rs`). A mount with an embedded daemon passes its own.
    pub memory_budget: MemoryBudget,
    /// A transfer whose client moves nothing for this long fails with
    /// DEADLINE_EXCEEDED and gives back what it held of the budget
    /// (`--progress-timeout`).
    pub progress_timeout: Duration,
}

/// Default for [`ServeOptions::progress_timeout`]: the CLI's own
/// no-progress deadline (`dfcache import` and `export` give up on a daemon
/// after 5 minutes without progress).
pub const DEFAULT_PROGRESS_TIMEOUT: Duration = Duration::from_secs(300);

/// Default for [`ServeOptions::max_concurrent_imports`]: far more than the
/// disk needs to be busy, few enough that the blocks stay under 512 MiB.
pub const DEFAULT_MAX_CONCURRENT_IMPORTS: usize = 16;

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            socket_mode: DEFAULT_SOCKET_MODE,
            gc_interval: Duration::from_secs(60),
            emulate: Emulation::Current,
            legacy_piece_delay: None,
            min_ttl: MIN_TTL,
            max_concurrent_imports: DEFAULT_MAX_CONCURRENT_IMPORTS,
            memory_budget: MemoryBudget::new(DEFAULT_MEMORY_BUDGET),
            progress_timeout: DEFAULT_PROGRESS_TIMEOUT,
        }
    }
}

/// Older daemons the embedded one can stand in for, so clients are tested
/// against each behaviour they meet in the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Emulation {
    /// Everything, extensions included.
    #[default]
    Current,
    /// The streaming RPCs as dragonfly-api 2.1.12 defined them: no
    /// extensions, so reads ignore the range and chunks carry no offset.
    Api2_1_12,
    /// Today's released dfdaemon: no streaming RPCs, no delete on this
    /// service, export pieces delivered out of order.
    Legacy,
}

/// Serves `store` on `socket` until `shutdown` resolves.
pub async fn serve(
    store: Store,
    socket: &Path,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (listener, socket_id) = bind_socket(socket, options.socket_mode)?;
    let gc = store.spawn_gc(options.gc_interval);
    info!(
        socket = %socket.display(),
        memory_budget = options.memory_budget.capacity(),
        "embedded daemon listening"
    );
    let memory = TransferMemory::new(options.memory_budget.clone());
    let service = service(store.clone(), &options, memory.clone());
    // Short reads have a channel of their own on the same socket, unless
    // this daemon stands in for one that had none.
    let short_reads = options.emulate == Emulation::Current;
    let incoming = crate::short_reads::Incoming::new(listener, store, memory, short_reads);
    let result = tonic::transport::Server::builder()
        .max_frame_size(RECEIVE.frame)
        .initial_stream_window_size(RECEIVE.stream)
        .initial_connection_window_size(RECEIVE.connection)
        .max_concurrent_streams(DAEMON_MAX_STREAMS)
        .layer(dfcache_metrics::rpc_layer::RpcMetricsLayer)
        .layer(outgoing::layer())
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    gc.abort();
    socket_id.remove_if_ours(socket);
    result.map_err(ServeError::Transport)
}

/// The tonic service, with message limits raised for 1 MiB chunks; its
/// transfers take their memory from `memory`.
pub fn service(
    store: Store,
    options: &ServeOptions,
    memory: TransferMemory,
) -> DfdaemonDownloadServer<Daemon> {
    DfdaemonDownloadServer::new(Daemon {
        store,
        emulate: options.emulate,
        legacy_piece_delay: options.legacy_piece_delay,
        min_ttl: options.min_ttl,
        imports: Arc::new(Semaphore::new(options.max_concurrent_imports.max(1))),
        memory,
        progress_timeout: options.progress_timeout,
    })
    .max_decoding_message_size(GRPC_MAX_MESSAGE)
    .max_encoding_message_size(GRPC_MAX_MESSAGE)
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("socket {0} is in use by a running daemon")]
    SocketInUse(PathBuf),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The `DfdaemonDownload` implementation.
pub struct Daemon {
    store: Store,
    emulate: Emulation,
    legacy_piece_delay: Option<Duration>,
    min_ttl: Duration,
    /// One permit per import being stored.
    imports: Arc<Semaphore>,
    memory: TransferMemory,
    progress_timeout: Duration,
}

/// A client's piece length: 0 means "pick the default", as unset does
/// (proto3 clients cannot always tell the two apart); any other value must
/// be in `MIN_PIECE_LENGTH..=MAX_REQUESTED_PIECE_LENGTH` (4 MiB..=1 GiB:
/// the CLI's minimum, and pieces are held whole in memory), checked by
/// `WriteParams::validate`.
pub(crate) fn requested_piece_length(piece_length: Option<u64>) -> Option<u64> {
    piece_length.filter(|&n| n != 0)
}

/// A path a client asks the daemon to open or write: it must be absolute
/// (the daemon's working directory means nothing to the client) and free
/// of NUL bytes (no file name can hold one).
pub(crate) fn client_path(path: &str, what: &str) -> Result<PathBuf, Status> {
    let shown: String = path.chars().take(200).collect();
    if path.contains('\0') {
        return Err(Status::invalid_argument(format!(
            "{what} path {shown:?} contains a NUL byte"
        )));
    }
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        return Err(Status::invalid_argument(format!(
            "{what} path {shown:?} is not absolute"
        )));
    }
    Ok(path)
}

/// Who sent `request`: the credentials of its connection (see
/// [`crate::caller`]). A request without them (a service not served by
/// [`serve`]) is refused rather than served with nobody's rights.
pub(crate) fn caller_of<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::permission_denied("the daemon cannot tell who is calling"))
}

impl Daemon {
    fn refuse_streaming(&self, rpc: &str) -> Result<(), Status> {
        if self.emulate == Emulation::Legacy {
            return Err(Status::unimplemented(format!(
                "{rpc} is not implemented by this daemon"
            )));
        }
        Ok(())
    }

    /// A daemon of dragonfly-api 2.1.12 has only the two streaming RPCs.
    fn refuse_beyond_streaming(&self, rpc: &str) -> Result<(), Status> {
        if self.emulate == Emulation::Api2_1_12 {
            return Err(Status::unimplemented(format!(
                "{rpc} is not implemented by this daemon"
            )));
        }
        Ok(())
    }

    /// Released dfdaemon (1.5.10) reports an unknown task as INTERNAL with
    /// "not found" in the message, not NOT_FOUND; the legacy emulation
    /// does the same so the client's handling of it is tested.
    fn as_released(&self, status: Status) -> Status {
        if self.emulate == Emulation::Legacy && status.code() == tonic::Code::NotFound {
            let message = status.message();
            return Status::internal(if message.contains("not found") {
                message.to_string()
            } else {
                format!("{message}: not found")
            });
        }
        status
    }
}

/// State reported for every stored task: the store keeps finished ones only.
const STATE_SUCCEEDED: &str = "Succeeded";

/// A stored task as the wire describes it.
pub(crate) fn task_proto(meta: &TaskMeta) -> PersistentCacheTask {
    PersistentCacheTask {
        id: meta.id.clone(),
        persistent_replica_count: meta.persistent_replica_count,
        current_persistent_replica_count: 1,
        current_replica_count: 1,
        tag: meta.tag.clone(),
        application: meta.application.clone(),
        piece_length: meta.piece_length,
        content_length: meta.content_length,
        piece_count: meta.piece_count(),
        state: STATE_SUCCEEDED.to_string(),
        ttl: Some(duration_to_proto(meta.ttl)),
        created_at: Some(meta.created_at.into()),
        updated_at: Some(meta.updated_at.into()),
    }
}

fn stat_local(meta: &TaskMeta) -> StatLocalPersistentCacheTaskResponse {
    StatLocalPersistentCacheTaskResponse {
        task_id: meta.id.clone(),
        persistent: meta.persistent_replica_count > 0,
        ttl: Some(duration_to_proto(meta.ttl)),
        piece_length: Some(meta.piece_length),
        content_length: Some(meta.content_length),
        uploading_count: 0,
        uploaded_count: 0,
        created_at: Some(meta.created_at.into()),
        updated_at: Some(meta.updated_at.into()),
        failed_at: None,
        finished_at: Some(meta.updated_at.into()),
    }
}

#[tonic::async_trait]
impl DfdaemonDownload for Daemon {
    async fn write_persistent_cache_task(
        &self,
        request: Request<Streaming<WritePersistentCacheTaskRequest>>,
    ) -> Result<Response<WritePersistentCacheTaskResponse>, Status> {
        self.refuse_streaming("WritePersistentCacheTask")?;
        let caller = caller_of(&request)?;
        let span = info_span!("write", task_id = tracing::field::Empty, uid = caller.uid, pid = ?caller.pid);
        let extensions = self.emulate == Emulation::Current;
        let admission = write::Admission {
            imports: &self.imports,
            memory: &self.memory,
            within: self.progress_timeout,
        };
        write::handle(
            &self.store,
            request.into_inner(),
            extensions,
            self.min_ttl,
            caller.uid,
            admission,
        )
        .instrument(span)
        .await
        .map(Response::new)
    }

    type ReadPersistentCacheTaskStream = ResponseStream<ReadPersistentCacheTaskResponse>;

    async fn read_persistent_cache_task(
        &self,
        request: Request<ReadPersistentCacheTaskRequest>,
    ) -> Result<Response<Self::ReadPersistentCacheTaskStream>, Status> {
        self.refuse_streaming("ReadPersistentCacheTask")?;
        let extensions = self.emulate == Emulation::Current;
        read::handle(
            &self.store,
            request.into_inner(),
            extensions,
            &self.memory,
            self.progress_timeout,
        )
        .await
    }

    type DownloadPersistentCacheTaskStream = ResponseStream<DownloadPersistentCacheTaskResponse>;

    async fn download_persistent_cache_task(
        &self,
        request: Request<DownloadPersistentCacheTaskRequest>,
    ) -> Result<Response<Self::DownloadPersistentCacheTaskStream>, Status> {
        self.refuse_beyond_streaming("DownloadPersistentCacheTask")?;
        let acting = Acting::for_caller(&caller_of(&request)?);
        let order = match self.emulate {
            Emulation::Legacy => match self.legacy_piece_delay {
                Some(delay) => download::PieceOrder::Paced(delay),
                None => download::PieceOrder::Scrambled,
            },
            _ => download::PieceOrder::InOrder,
        };
        // A released dfdaemon links its content file at the output path
        // whenever it can; this daemon does so only when asked to
        // (force_hard_link: the mount, which never writes it), because a
        // program that later writes its export in place would write the
        // stored task. Never for a caller other than root or the daemon's
        // uid (see `download::Destination`).
        let links = if self.emulate == Emulation::Legacy {
            download::Links::WhenPossible
        } else {
            download::Links::WhenForced
        };
        download::handle(
            &self.store,
            request.into_inner(),
            order,
            links,
            acting,
            &self.memory,
            self.progress_timeout,
        )
        .await
        .map_err(|s| self.as_released(s))
    }

    async fn upload_persistent_cache_task(
        &self,
        request: Request<UploadPersistentCacheTaskRequest>,
    ) -> Result<Response<PersistentCacheTask>, Status> {
        self.refuse_beyond_streaming("UploadPersistentCacheTask")?;
        let caller = caller_of(&request)?;
        // Today's dfdaemon links a file on its own file system into its
        // storage instead of copying it; the legacy emulation does too.
        let link = self.emulate == Emulation::Legacy;
        upload::handle(
            &self.store,
            request.into_inner(),
            &caller,
            link,
            self.min_ttl,
            &self.imports,
            &self.memory,
        )
        .await
        .map(|meta| Response::new(task_proto(&meta)))
    }

    async fn stat_persistent_cache_task(
        &self,
        request: Request<StatPersistentCacheTaskRequest>,
    ) -> Result<Response<PersistentCacheTask>, Status> {
        self.refuse_beyond_streaming("StatPersistentCacheTask")?;
        let meta = self
            .store
            .get(&request.into_inner().task_id)
            .map_err(|e| self.as_released(status_of(e)))?;
        Ok(Response::new(task_proto(&meta)))
    }

    async fn stat_local_persistent_cache_task(
        &self,
        request: Request<StatLocalPersistentCacheTaskRequest>,
    ) -> Result<Response<StatLocalPersistentCacheTaskResponse>, Status> {
        self.refuse_beyond_streaming("StatLocalPersistentCacheTask")?;
        let id = request.into_inner().task_id;
        if self.legacy_piece_delay.is_some() {
            // Paced pieces stand for a P2P download, which a node makes
            // only of a task it does not hold: its local stat finds none.
            return Err(self.as_released(Status::not_found(format!("task {id} not found"))));
        }
        let meta = self
            .store
            .get(&id)
            .map_err(|e| self.as_released(status_of(e)))?;
        Ok(Response::new(stat_local(&meta)))
    }

    async fn list_local_persistent_cache_tasks(
        &self,
        _request: Request<ListLocalPersistentCacheTasksRequest>,
    ) -> Result<Response<ListLocalPersistentCacheTasksResponse>, Status> {
        self.refuse_beyond_streaming("ListLocalPersistentCacheTasks")?;
        let tasks = self.store.list().iter().map(stat_local).collect();
        Ok(Response::new(ListLocalPersistentCacheTasksResponse {
            tasks,
        }))
    }

    async fn delete_persistent_cache_task(
        &self,
        request: Request<DeletePersistentCacheTaskRequest>,
    ) -> Result<Response<()>, Status> {
        self.refuse_beyond_streaming("DeletePersistentCacheTask")?;
        if self.emulate == Emulation::Legacy {
            // Upstream has delete only on its upload service.
            return Err(Status::unimplemented(
                "DeletePersistentCacheTask is not on DfdaemonDownload",
            ));
        }
        let caller = caller_of(&request)?;
        // Root and the daemon's own uid delete any task; anyone else only
        // the tasks they imported (docs/SECURITY.md, deleting tasks).
        let by = if Acting::for_caller(&caller).is_daemon() {
            Deleter::Privileged
        } else {
            Deleter::Importer(caller.uid)
        };
        let id = request.into_inner().task_id;
        info!(task_id = %id, uid = caller.uid, pid = ?caller.pid, "delete");
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.delete(&id, by))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(status_of)?;
        Ok(Response::new(()))
    }
}
