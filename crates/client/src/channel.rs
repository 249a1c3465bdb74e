//! Dialing the daemon's Unix socket: a lazily connecting tonic channel
//! with the transport settings both ends share (`dfcache_wire::transport`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use dfcache_wire::transport::Windows;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// HTTP/2 keepalive: a PING every interval on an idle or busy connection,
/// and a connection whose PING is unanswered for the timeout is closed, so
/// a frozen or vanished daemon is noticed and the next call reconnects
/// instead of queueing behind a dead connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Dialing the socket (a daemon whose accept backlog is full never answers).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A lazily connecting channel to a daemon's Unix socket. The connection is
/// made on first use and re-made after the daemon restarts.
pub fn connect_channel(socket: &Path) -> Channel {
    connect_channel_with(socket, Windows::TRANSFER)
}

/// `connect_channel` with the given receive settings.
pub fn connect_channel_with(socket: &Path, windows: Windows) -> Channel {
    let socket: PathBuf = socket.to_path_buf();
    // The URI is required by tonic but never resolved: the connector below
    // ignores it and dials the socket.
    Endpoint::from_static("http://dfdaemon.sock")
        .max_frame_size(windows.frame)
        .initial_stream_window_size(windows.stream)
        .initial_connection_window_size(windows.connection)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
}
