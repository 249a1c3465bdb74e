//! Binding a server's Unix socket safely: the daemon's and the CSI
//! plugin's.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// Why a socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Something still accepts connections on it.
    #[error("socket {0} is in use")]
    InUse(PathBuf),
}

/// Which socket file a server bound: its device and inode. A server
/// removes the file at `path` on shutdown only while it is still this one,
/// so it never unlinks a socket another server bound there since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketId {
    dev: u64,
    ino: u64,
}

impl SocketId {
    fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::symlink_metadata(path)?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Removes `path` if it is still the socket this id was taken from.
    pub fn remove_if_ours(self, path: &Path) {
        match Self::of(path) {
            Ok(now) if now == self => {
                if let Err(e) = std::fs::remove_file(path) {
                    tracing::warn!(socket = %path.display(), error = %e, "could not remove the socket");
                }
            }
            Ok(_) => tracing::info!(
                socket = %path.display(),
                "the socket was replaced by another server; leaving it"
            ),
            Err(_) => {}
        }
    }
}

/// Binds `path` with permission bits `mode`.
///
/// The socket is bound under a temporary name, given its mode, then renamed
/// into place, so it is never reachable at `path` with looser permissions.
/// A stale socket left by a crashed server is replaced; one that still
/// accepts connections is refused.
pub fn bind_socket(path: &Path, mode: u32) -> Result<(UnixListener, SocketId), BindError> {
    let err = |source| BindError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(err(std::io::Error::other("exists and is not a socket")));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let mut temp_name = path.as_os_str().to_owned();
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = PathBuf::from(temp_name);
    let _ = std::fs::remove_file(&temp);
    let listener = UnixListener::bind(&temp).map_err(err)?;
    // A rename keeps the inode, so the id taken here is the placed file's.
    let placed = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode))
        .and_then(|()| SocketId::of(&temp))
        .and_then(|id| std::fs::rename(&temp, path).map(|()| id));
    match placed {
        Ok(id) => Ok((listener, id)),
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(err(e))
        }
    }
}
