//! The plugin's Unix socket and gRPC server.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::info;

use dfcache_wire::pb::csi::identity_server::IdentityServer;
use dfcache_wire::pb::csi::node_server::NodeServer;

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
    let listener = bind(socket)?;
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
    let _ = std::fs::remove_file(socket);
    result.map_err(ServeError::from)
}

/// Binds `socket`, replacing a stale one (a plugin that crashed leaves
/// its socket file; kubelet's registration finds the new one there).
fn bind(socket: &Path) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Socket {
        path: socket.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(socket) {
        if !meta.file_type().is_socket() {
            return Err(err(std::io::Error::other("exists and is not a socket")));
        }
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(ServeError::SocketInUse(socket.to_path_buf()));
        }
        std::fs::remove_file(socket).map_err(err)?;
    }
    if let Some(parent) = socket.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let listener = UnixListener::bind(socket).map_err(err)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(err)?;
    Ok(listener)
}
