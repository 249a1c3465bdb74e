//! The node's dfcache mount (`dfcache mount --allow-other`), where every
//! volume comes from: `trees/<id>` and `tasks/<id>`. Looking one up asks
//! the node's daemon (and through it the P2P network), so each lookup is
//! bounded; the mount bounds its own daemon calls too (`--fetch-timeout`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::PublishError;
use crate::mounts::mounts_at;
use crate::volume::Content;

/// statfs is answered by the mount itself, never by the daemon: a live
/// mount answers at once.
const STATFS_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct NodeMount {
    root: PathBuf,
    lookup_timeout: Duration,
}

impl NodeMount {
    /// The mount at `root`. The path is made absolute and its parent
    /// resolved (the mount point itself cannot be, while it is dead), so
    /// it compares equal to what the mount table says.
    pub fn new(root: &Path, lookup_timeout: Duration) -> Self {
        let absolute = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
        let root = match (absolute.parent(), absolute.file_name()) {
            (Some(parent), Some(name)) => std::fs::canonicalize(parent)
                .map(|p| p.join(name))
                .unwrap_or(absolute.clone()),
            _ => absolute,
        };
        NodeMount {
            root,
            lookup_timeout,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `content` is in the mount.
    pub fn source_of(&self, content: &Content) -> PathBuf {
        match content {
            Content::Tree { id } => self.root.join("trees").join(id),
            Content::TaskFile { id, .. } => self.root.join("tasks").join(id),
        }
    }

    /// The mount is a dfcache mount and answers.
    pub async fn check_live(&self) -> Result<(), PublishError> {
        let root = self.root.clone();
        let mounted = mounts_at(&root)
            .map_err(|e| PublishError::io("reading the mount table for", &root, e))?
            .last()
            .is_some_and(|m| m.is_dfcache());
        if !mounted {
            return Err(PublishError::NodeMountMissing(root));
        }
        let probe = root.clone();
        let answered = tokio::time::timeout(
            STATFS_TIMEOUT,
            tokio::task::spawn_blocking(move || statfs(&probe)),
        )
        .await;
        match answered {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(source))) => Err(PublishError::NodeMountDead { path: root, source }),
            Ok(Err(join)) => Err(PublishError::io(
                "checking",
                root,
                std::io::Error::other(join.to_string()),
            )),
            Err(_) => Err(PublishError::NodeMountDead {
                path: root,
                source: std::io::Error::from(std::io::ErrorKind::TimedOut),
            }),
        }
    }

    /// Looks `content` up in the mount (the node's daemon stats it, and a
    /// tree's manifest is read and checked): its path there, once it is
    /// known to exist and be what the volume says.
    pub async fn look_up(&self, content: &Content) -> Result<PathBuf, PublishError> {
        let source = self.source_of(content);
        let path = source.clone();
        let stat = tokio::time::timeout(
            self.lookup_timeout,
            tokio::task::spawn_blocking(move || std::fs::metadata(&path)),
        )
        .await
        .map_err(|_| PublishError::LookupTimedOut {
            what: content.to_string(),
            after: self.lookup_timeout,
        })?
        .map_err(|join| {
            PublishError::io(
                "looking up",
                &source,
                std::io::Error::other(join.to_string()),
            )
        })?;
        let (kind, id) = match content {
            Content::Tree { id } => ("tree", id),
            Content::TaskFile { id, .. } => ("task", id),
        };
        let meta = match stat {
            Ok(meta) => meta,
            Err(e) => {
                return Err(match e.raw_os_error() {
                    Some(libc::ENOENT) => PublishError::NotFound {
                        kind,
                        id: id.clone(),
                    },
                    // The mount refuses a task that is not a manifest.
                    Some(libc::EINVAL) if kind == "tree" => {
                        PublishError::NotATree { id: id.clone() }
                    }
                    Some(libc::ENOTCONN) | Some(libc::ECONNABORTED) => {
                        PublishError::NodeMountDead {
                            path: self.root.clone(),
                            source: e,
                        }
                    }
                    Some(libc::ETIMEDOUT) => PublishError::DaemonTimedOut {
                        what: content.to_string(),
                    },
                    _ => PublishError::io("looking up", &source, e),
                });
            }
        };
        let expected = match content {
            Content::Tree { .. } => meta.is_dir(),
            Content::TaskFile { .. } => meta.is_file(),
        };
        if !expected {
            return Err(PublishError::io(
                "looking up",
                &source,
                std::io::Error::other("the node's mount shows something else there"),
            ));
        }
        Ok(source)
    }
}

fn statfs(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c` is NUL-terminated and `buf` is large enough for statfs.
    let rc = unsafe { libc::statfs(c.as_ptr(), buf.as_mut_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
