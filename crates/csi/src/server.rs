//! The plugin's Unix socket and gRPC server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::wrappers::UnixListenerStream;
use tracing::info;

use dfcache_wire::pb::csi::identity_server::IdentityServer;
use dfcache_wire::pb::csi::node_server::NodeServer;
use dfcache_wire::socket::{bind_socket, BindError};

use crate::identity::IdentityService;
use crate::node::NodeService;
use crate::node_mount::NodeMount;
use crate::warmup::Warmups;

/// kubelet and the registrar run as root: nobody else needs the socket.
const SOCKET_MODE: u32 = 0o600;

#[derive(Debug, Clone)]
pub struct PluginOptions {
    /// The node's dfcache mount.
    pub mountpoint: PathBuf,
    /// What NodeGetInfo reports (the node's name).
    pub node_id: String,
    /// What GetPluginInfo reports.
    pub version: String,
    /// Bound on looking a tree or task up in the node's mount.
    pub lookup_timeout: Duration,
    /// Files a warm-up reads at once.
    pub warmup_concurrency: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("socket {0} is in use by a running plugin")]
    SocketInUse(PathBuf),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the Identity and Node services on `socket` until `shutdown`.
pub async fn serve(
    socket: &Path,
    options: PluginOptions,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    // A stale socket (a plugin that crashed leaves its file) is replaced;
    // kubelet's registration finds the new one there.
    let (listener, socket_id) = bind_socket(socket, SOCKET_MODE)?;
    let node_mount = NodeMount::new(&options.mountpoint, options.lookup_timeout);
    let identity = IdentityService {
        node_mount: node_mount.clone(),
        version: options.version.clone(),
    };
    let node = NodeService {
        node_mount,
        node_id: options.node_id.clone(),
        warmups: Warmups::new(options.warmup_concurrency),
        mount_table: Arc::default(),
    };
    info!(socket = %socket.display(), mountpoint = %options.mountpoint.display(), node_id = %options.node_id, "CSI plugin listening");
    let result = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(identity))
        .add_service(NodeServer::new(node))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    socket_id.remove_if_ours(socket);
    result.map_err(ServeError::from)
}

impl From<BindError> for ServeError {
    fn from(e: BindError) -> Self {
        match e {
            BindError::Io { path, source } => ServeError::Socket { path, source },
            BindError::InUse(path) => ServeError::SocketInUse(path),
        }
    }
}
