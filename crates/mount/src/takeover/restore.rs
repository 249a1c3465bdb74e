//! A process that took a mount over answers for every name the kernel
//! holds: the inodes, handles and directory listings its predecessors
//! gave, rebuilt from the state journal (`restore`), and handles nobody
//! recorded (files read through the mount, listings of a tree's
//! directories) rebuilt from the inode the kernel sends with each request
//! (`adopt_handle`, `adopt_listing`).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::{info, warn};

use super::records::*;
use super::state::listing_entries;
use crate::error::{Errno, FsResult};
use crate::filesystem::{DfcacheFs, DirEntry, REVALIDATE_AFTER};
use crate::handles::OpenFile;
use crate::import::state::{Finished, ImportState};
use crate::inodes::{ImportDir, ImportEntry, ImportMeta, ImportNode, Node, TaskNode};
use crate::read::geometry::TaskGeometry;
use crate::trees::node::{build as build_tree, TreeNode};
use dfcache_wire::tree::{Limits, Manifest};

/// What a restore leaves for the adapter.
#[derive(Debug, Default)]
pub struct Restored {
    /// How the connection was set up (None: a journal without it).
    pub connection: Option<ConnectionRecord>,
    /// This process's generation.
    pub generation: u64,
    /// Handles open in the passthrough bookkeeping.
    pub opens: Vec<OpenRecord>,
}

/// The cause of EIO on an import that was being written when its process
/// went away: its daemon stream went with it.
fn interrupted() -> Errno {
    Errno::EIO.because(std::io::Error::other(
        "the import was being written when the mount's process went away; nothing was stored \
         (write the file again)",
    ))
}

impl DfcacheFs {
    /// Rebuilds the inodes and handles in `records` (a journal's live
    /// records), before the kernel's first request reaches this process.
    /// Imports that were being written are failed (EIO at their next write
    /// or close) and lose their names, as a failed import does.
    pub fn restore(&self, records: Vec<Record>) -> Restored {
        let mut restored = Restored::default();
        let mut imports = Vec::new();
        let mut outcomes = std::collections::HashMap::new();
        let mut last = 0u64;
        let mut counts = (0usize, 0usize, 0usize);
        for record in records {
            match record.entry {
                Some(Entry::Connection(c)) => restored.connection = Some(c),
                Some(Entry::Task(t)) => {
                    last = last.max(t.ino);
                    counts.0 += 1;
                    self.inodes().insert_task(Arc::new(TaskNode {
                        ino: t.ino,
                        geometry: TaskGeometry::new(&t.id, t.content_length, Some(t.piece_length)),
                        created: from_ns(t.created_ns),
                        // Asked of the daemon again at its next lookup.
                        confirmed: Mutex::new(
                            Instant::now()
                                .checked_sub(REVALIDATE_AFTER)
                                .unwrap_or_else(Instant::now),
                        ),
                    }));
                }
                Some(Entry::Tree(t)) => {
                    last = last.max(t.root + t.count.saturating_sub(1));
                    counts.1 += 1;
                    self.restore_tree(&t);
                }
                Some(Entry::Import(i)) => {
                    last = last.max(i.ino);
                    imports.push(i);
                }
                Some(Entry::Outcome(o)) => {
                    outcomes.insert(o.ino, o.finished);
                }
                Some(Entry::Open(o)) => restored.opens.push(o),
                Some(Entry::Listing(l)) => {
                    counts.2 += 1;
                    self.handles.insert_dir(l.fh, listing_entries(l));
                }
                Some(Entry::NodeGone(_) | Entry::Closed(_)) | None => {}
            }
        }
        let (mut files, mut failed) = (0usize, 0usize);
        for record in imports {
            let finished = outcomes.remove(&record.ino).flatten();
            let was_failed = failed;
            let entry = self.restore_import(record, finished, &mut files, &mut failed);
            let mut inodes = self.inodes();
            inodes.insert_import(entry.clone());
            if failed > was_failed {
                // Its name is gone now: so it is in the journal too.
                inodes.record(&entry);
            }
        }
        self.inodes().allocate_after(last);
        restored.generation = restored.connection.as_ref().map_or(1, |c| c.generation + 1);
        self.handles.start_generation(restored.generation);
        // The next process starts after this one's handles.
        let (minor, passthrough) = restored
            .connection
            .as_ref()
            .map_or((0, false), |c| (c.minor, c.passthrough));
        self.state_log()
            .connection(minor, passthrough, restored.generation);
        info!(
            tasks = counts.0,
            trees = counts.1,
            listings = counts.2,
            imports = files,
            interrupted_imports = failed,
            passthrough_opens = restored.opens.len(),
            generation = restored.generation,
            "state of the mount restored"
        );
        restored
    }

    fn restore_tree(&self, t: &TreeRecord) {
        let manifest = match Manifest::parse(&t.manifest, &Limits::default()) {
            Ok(m) => m,
            Err(e) => {
                warn!(tree_id = %t.id, error = %e, "cannot rebuild a tree from the state journal: its files are unknown to this process");
                return;
            }
        };
        let mut next = t.root.saturating_sub(1);
        let nodes: Vec<Arc<TreeNode>> =
            build_tree(&manifest, t.parent, from_ns(t.created_ns), &mut || {
                next += 1;
                next
            });
        if nodes.len() as u64 != t.count || nodes.first().map(|n| n.ino()) != Some(t.root) {
            warn!(tree_id = %t.id, "a tree in the state journal does not match its manifest: its files are unknown to this process");
            return;
        }
        self.inodes().insert_tree(&t.id, t.root, nodes);
    }

    fn restore_import(
        &self,
        i: ImportRecord,
        finished: Option<FinishedRecord>,
        files: &mut usize,
        failed: &mut usize,
    ) -> ImportEntry {
        let mut meta = ImportMeta {
            parent: i.parent,
            name: OsString::from_vec(i.name),
            perm: i.perm as u16,
            uid: i.uid,
            gid: i.gid,
            atime: from_ns(i.atime_ns),
            mtime: from_ns(i.mtime_ns),
            ctime: from_ns(i.ctime_ns),
            started: Instant::now(),
            writers: 0,
            linked: i.linked,
        };
        match ImportKind::try_from(i.kind).unwrap_or(ImportKind::File) {
            ImportKind::File => {
                *files += 1;
                let state = match finished {
                    Some(f) => ImportState::Finished(Finished {
                        task_id: f.task_id,
                        content_length: f.content_length,
                        piece_length: f.piece_length,
                    }),
                    None => {
                        *failed += 1;
                        meta.linked = false;
                        ImportState::Failed(interrupted())
                    }
                };
                ImportEntry::File(Arc::new(ImportNode {
                    ino: i.ino,
                    state: tokio::sync::Mutex::new(state),
                    meta: Mutex::new(meta),
                }))
            }
            kind => ImportEntry::Dir(Arc::new(ImportDir {
                ino: i.ino,
                meta: Mutex::new(meta),
                target: (kind == ImportKind::Symlink).then(|| OsString::from_vec(i.target)),
            })),
        }
    }

    /// Whether `fh` was given by an earlier process and is not known here
    /// yet.
    pub fn is_unknown_earlier_handle(&self, fh: u64) -> bool {
        self.handles.is_earlier(fh) && self.handle(fh).is_err()
    }

    /// Takes on file handle `fh` of inode `ino`, given by an earlier
    /// process: reads go on from the same inode. An import interrupted
    /// with its process is open for writing, so its next write and its
    /// close fail (EIO).
    pub async fn adopt_handle(&self, fh: u64, ino: u64) -> FsResult<()> {
        let node = match self.node(ino)? {
            Node::Tree(tree) => match &*tree {
                TreeNode::File(file) => Node::Task(self.tree_file_task(file).await?),
                _ => return Err(Errno::EBADF),
            },
            other => other,
        };
        let writable = match &node {
            Node::Import(import) => matches!(&*import.state.lock().await, ImportState::Failed(_)),
            _ => false,
        };
        // A task read from a whole-task download is marked in use, as at
        // an open, so that the tree prefetcher does not evict it.
        let reading = match &node {
            Node::Task(task) => self.ready_whole_task(task).await,
            _ => None,
        };
        self.handles.insert_file(
            fh,
            OpenFile {
                node,
                writable,
                readahead: Default::default(),
                reading,
            },
        );
        Ok(())
    }

    /// The listing of directory `ino` for handle `fh` of an earlier
    /// process that is not in the journal (a tree's directory, which lists
    /// the same every time; or one the journal could not take), taken
    /// again now.
    pub async fn adopt_listing(&self, fh: u64, ino: u64) -> FsResult<Arc<Vec<DirEntry>>> {
        let entries = self.readdir(ino).await?;
        Ok(self.handles.insert_dir(fh, entries))
    }
}
