//! Opening files and reading task content through the block cache.
//!
//! A read is split on 4 MiB block boundaries (not pieces: see
//! `block_cache.rs`); each block comes from the LRU or one daemon request.
//! A sequential reader also gets the next blocks fetched ahead, in a
//! window that grows while the run lasts; a random reader's miss fetches
//! the small span around it.

use bytes::Bytes;

use crate::error::{Errno, FsResult};
use crate::filesystem::DfcacheFs;
use crate::handles::{OpenFile, Opened};
use crate::import::state::ImportState;
use crate::inodes::{Node, TaskNode};
use crate::passthrough::LocalFile;
use crate::read::backend::ReadBackend;
use crate::read::geometry::TaskGeometry;
use crate::read::readahead::Readahead;
use crate::task_files::Reading;
use crate::trees::node::TreeNode;

impl DfcacheFs {
    /// Opens a file. Task files are read-only; an import may be reopened
    /// for writing only with O_TRUNC (which starts a new import).
    pub async fn open(&self, ino: u64, write: bool, truncate: bool) -> FsResult<Opened> {
        let mut node = self.node(ino)?;
        let mut reading = None;
        match &node {
            Node::Task(_) | Node::Tree(_) if write => return Err(Errno::EACCES),
            Node::Task(task) => reading = self.ready_whole_task(task).await,
            // A tree's file opens as its task: reads are a task's reads.
            Node::Tree(tree) => match &**tree {
                TreeNode::File(file) => {
                    let task = self.tree_file_task(file).await?;
                    reading = self.ready_whole_task(&task).await;
                    if self.fetches_whole_tasks().await {
                        self.prefetch_tree_of(file);
                    }
                    node = Node::Task(task);
                }
                TreeNode::Dir(_) => return Err(Errno::EISDIR),
                TreeNode::Link(_) => return Err(Errno::ELOOP),
            },
            Node::Import(import) if write => self.reopen_for_write(import, truncate).await?,
            Node::Import(_) => {}
            Node::ImportDir(d) if d.is_link() => return Err(Errno::ELOOP),
            Node::ImportDir(_) => return Err(Errno::EISDIR),
        }
        Ok(self.add_handle(OpenFile {
            node,
            writable: write,
            readahead: Default::default(),
            reading,
        }))
    }

    /// The complete local file of the task open as `fh`, if there is one:
    /// the store's content file (embedded daemon), or a finished download
    /// the daemon linked into the spool (released dfdaemon).
    pub fn local_file(&self, fh: u64) -> Option<LocalFile> {
        let file = self.handle(fh).ok()?;
        let Node::Task(task) = &file.node else {
            return None;
        };
        let id = &task.geometry.id;
        match &self.local {
            Some(local) => local.open(id),
            None => self
                .task_files
                .complete_file(id)
                .map(|file| LocalFile::new(file, None)),
        }
    }

    /// Where task files could be local, for the start-up decision.
    pub fn local_source(&self) -> Option<&'static str> {
        if self.local.is_some() {
            Some("the embedded daemon's store")
        } else if self.config.spool.is_some() {
            Some("finished downloads a released dfdaemon linked into the spool")
        } else {
            None
        }
    }

    /// Up to `size` bytes at `offset`.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let file = self.handle(fh)?;
        let geometry = match &file.node {
            Node::Task(task) => task.geometry.clone(),
            Node::Tree(_) | Node::ImportDir(_) => return Err(Errno::EBADF),
            Node::Import(node) => match &*node.state.lock().await {
                ImportState::Finished(f) => f.geometry(),
                _ => {
                    return Err(Errno::EINVAL.because(std::io::Error::other(
                        "read of an import that is not finished: its content is with the daemon",
                    )));
                }
            },
        };
        tracing::Span::current().record("task_id", &*geometry.id);
        match self
            .read_task(&geometry, &file.readahead, offset, size)
            .await
        {
            Ok(data) => {
                self.drop_behind.after_read(
                    file.node.ino(),
                    geometry.content_length,
                    &file.readahead,
                );
                Ok(data)
            }
            Err(e) if e == Errno::ENOENT => {
                // Deleted or expired while open: what the kernel cached
                // still reads; the rest is ESTALE (as NFS says of a file
                // gone under an open handle), and the name stops resolving.
                tracing::info!(task_id = %geometry.id, "task is gone from the daemon while open");
                self.forget_task(&geometry.id);
                Err(Errno::ESTALE)
            }
            other => other,
        }
    }

    async fn read_task(
        &self,
        task: &TaskGeometry,
        readahead: &std::sync::Mutex<Readahead>,
        offset: u64,
        size: u32,
    ) -> FsResult<Bytes> {
        let end = offset
            .saturating_add(u64::from(size))
            .min(task.content_length);
        if offset >= end {
            return Ok(Bytes::new());
        }
        self.read_backend()
            .await?
            .read(task, readahead, offset, end)
            .await
    }

    /// On a daemon without range reads, starts the task's whole-task
    /// download at its open; a task the daemon holds whole lands within
    /// the open, so the open already finds it local (and passes through).
    pub(crate) async fn ready_whole_task(&self, task: &TaskNode) -> Option<Reading> {
        if self.local.is_none() && self.fetches_whole_tasks().await {
            self.task_files.open(&task.geometry).await
        } else {
            None
        }
    }

    /// Whether reads come from whole-task downloads (a daemon without
    /// range reads that answered).
    pub(crate) async fn fetches_whole_tasks(&self) -> bool {
        matches!(self.client.streams().await, Ok(false))
    }

    /// Where reads come from: range reads through the block cache, or (a
    /// daemon without them) whole-task downloads.
    pub(crate) async fn read_backend(&self) -> FsResult<&dyn ReadBackend> {
        Ok(if self.client.streams().await? {
            &self.block_reads
        } else {
            self.task_files.as_ref()
        })
    }
}
