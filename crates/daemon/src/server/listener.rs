//! The daemon's Unix socket (bound by `dfcache_wire::socket`).

use dfcache_wire::socket::BindError;
pub use dfcache_wire::socket::{bind_socket, SocketId};

use super::ServeError;

/// Only the daemon's user may connect unless told otherwise.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

impl From<BindError> for ServeError {
    fn from(e: BindError) -> Self {
        match e {
            BindError::Io { path, source } => ServeError::Socket { path, source },
            BindError::InUse(path) => ServeError::SocketInUse(path),
        }
    }
}
