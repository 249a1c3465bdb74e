//! `trees/<tree-id>/`: a read-only view of a committed tree (a manifest
//! task, `dfcache_wire::tree`), on any node. Names, sizes and modes come from the
//! manifest, so `ls -lR` asks the daemon nothing past the manifest; a file
//! is resolved to its task when opened, and read exactly like
//! `tasks/<id>` (same cache, read-ahead and passthrough: the open handle is
//! on the task's node).
//!
//! A tree id whose task is not a valid manifest is EINVAL, logged with the
//! reason; a file whose task does not have the size the manifest gives is
//! EIO at open, logged; nothing is served from either.

use std::ffi::OsStr;
use std::sync::Arc;

use crate::attr::{Attr, Kind};
use crate::error::{Errno, FsError, FsResult};
use crate::filesystem::DfcacheFs;
use crate::handles::DirEntry;
use crate::inodes::{Node, TaskNode};
use dfcache_wire::tree::{Limits, Manifest};

use crate::trees::node::{TreeDir, TreeFile, TreeNode};

impl DfcacheFs {
    /// `trees/<id>`: known, or its manifest read and checked.
    pub(crate) async fn lookup_tree(&self, name: &OsStr) -> FsResult<Attr> {
        let id = name.to_str().ok_or(Errno::ENOENT)?;
        tracing::Span::current().record("task_id", id);
        let known = self.inodes().tree(id);
        if let Some(root) = known {
            return self.getattr(root).await;
        }
        let task = self.lookup_task(name).await?;
        let manifest = self.read_manifest(&task).await?;
        let root = {
            let mut inodes = self.inodes();
            inodes.add_tree(id, &manifest, crate::inodes::TREES_INO, task.created)
        };
        tracing::info!(tree_id = id, "tree opened");
        self.getattr(root).await
    }

    async fn read_manifest(&self, task: &TaskNode) -> FsResult<Manifest> {
        let limits = Limits::default();
        let len = task.geometry.content_length;
        let not_a_tree = |why: String| {
            Errno::EINVAL.because(std::io::Error::other(format!(
                "task {} is not a tree manifest: {why}",
                task.geometry.id
            )))
        };
        if len > limits.max_manifest_bytes as u64 {
            return Err(not_a_tree(format!(
                "{len} bytes, more than a manifest may have ({})",
                limits.max_manifest_bytes
            )));
        }
        let readahead = Default::default();
        let mut bytes = Vec::with_capacity(len as usize);
        while (bytes.len() as u64) < len {
            let at = bytes.len() as u64;
            let chunk = self
                .read_backend()
                .await?
                .read(&task.geometry, &readahead, at, len.min(at + (4 << 20)))
                .await?;
            if chunk.is_empty() {
                return Err(Errno::EIO);
            }
            bytes.extend_from_slice(&chunk);
        }
        Manifest::parse(&bytes, &limits).map_err(|e| not_a_tree(e.to_string()))
    }

    pub(crate) fn tree_attr(&self, node: &TreeNode) -> Attr {
        let owner = self.config.owner;
        match node {
            TreeNode::Dir(d) => {
                let mut attr = Attr::directory(d.ino, d.mode & 0o555, owner, d.created);
                attr.immutable = true;
                attr
            }
            TreeNode::File(f) => {
                let mut attr = Attr::task(f.ino, f.size, owner, self.config.modes, f.created);
                attr.perm = f.mode & 0o555;
                attr
            }
            TreeNode::Link(l) => {
                let mut attr = Attr::task(
                    l.ino,
                    l.target.len() as u64,
                    owner,
                    self.config.modes,
                    l.created,
                );
                attr.kind = Kind::Symlink;
                attr.perm = 0o777;
                attr
            }
        }
    }

    /// A name in a tree directory.
    pub(crate) async fn lookup_in_tree(&self, dir: &TreeDir, name: &OsStr) -> FsResult<Attr> {
        let (ino, _) = dir.children.get(name).ok_or(Errno::ENOENT)?;
        self.getattr(*ino).await
    }

    pub(crate) fn tree_listing(&self, dir: &TreeDir) -> Vec<DirEntry> {
        let mut entries = DirEntry::dots(dir.ino, dir.parent);
        entries.extend(dir.children.iter().map(|(name, (ino, kind))| DirEntry {
            ino: *ino,
            kind: *kind,
            name: name.clone(),
        }));
        entries
    }

    /// The task behind a tree file, checked against the manifest's size.
    pub(crate) async fn tree_file_task(&self, file: &TreeFile) -> FsResult<Arc<TaskNode>> {
        if let Some(task) = file.task.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(task);
        }
        let task = self.lookup_task(OsStr::new(&file.task_id)).await?;
        if task.geometry.content_length != file.size {
            return Err(FsError::caused_by(
                libc::EIO,
                std::io::Error::other(format!(
                    "the tree's manifest says {} bytes, but task {} has {}: not served",
                    file.size, file.task_id, task.geometry.content_length
                )),
            ));
        }
        *file.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.clone());
        Ok(task)
    }

    pub(crate) fn tree_readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        match self.node(ino)? {
            Node::Tree(node) => match &*node {
                TreeNode::Link(l) => {
                    Ok(std::os::unix::ffi::OsStrExt::as_bytes(&*l.target).to_vec())
                }
                _ => Err(Errno::EINVAL),
            },
            _ => Err(Errno::EINVAL),
        }
    }
}
