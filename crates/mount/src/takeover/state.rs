//! What the file system records of itself for a takeover, as it changes:
//! the hooks the core calls where it gives the kernel a new name (an inode
//! or, on mounts that pass opens through, a file handle). Without a holder
//! there is no journal and every hook is a no-op.
//!
//! Recorded: task inodes (at first sight), trees (at first open, with their
//! manifest), `import/` entries (create, rename, chmod, unlink, commit),
//! passthrough opens and closes, and directory listings of directories
//! whose entries can change (at opendir, until releasedir). Not recorded,
//! because a new process derives them: listings of a tree's directories
//! (from its manifest), the block cache, read-ahead state, handles of files
//! read through the mount (rebuilt from the inode the kernel sends with
//! each read).

use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use super::journal::Journal;
use super::records::*;
use crate::attr::Kind;
use crate::handles::DirEntry;
use crate::import::state::Finished;
use crate::inodes::{ImportDir, ImportMeta, ImportNode, TaskNode};

/// The journal the file system writes to, once it has one.
#[derive(Clone, Default)]
pub struct StateLog(Arc<OnceLock<Arc<Journal>>>);

impl StateLog {
    /// From now on, changes are recorded in `journal`.
    pub fn attach(&self, journal: Arc<Journal>) {
        let _ = self.0.set(journal);
    }

    pub fn is_on(&self) -> bool {
        self.0.get().is_some()
    }

    fn append(&self, entry: Entry) {
        if let Some(journal) = self.0.get() {
            journal.append(&Record::of(entry));
        }
    }

    pub fn connection(&self, minor: u32, passthrough: bool, generation: u64) {
        self.append(Entry::Connection(ConnectionRecord {
            minor,
            passthrough,
            generation,
        }));
    }

    pub fn task(&self, task: &TaskNode) {
        if !self.is_on() {
            return;
        }
        self.append(Entry::Task(TaskRecord {
            ino: task.ino,
            id: task.geometry.id.to_string(),
            content_length: task.geometry.content_length,
            piece_length: task.geometry.piece_length,
            created_ns: to_ns(task.created),
        }));
    }

    /// A tree whose `count` inodes are numbered from `root`.
    pub fn tree(
        &self,
        id: &str,
        root: u64,
        count: u64,
        parent: u64,
        created: SystemTime,
        manifest: impl FnOnce() -> Vec<u8>,
    ) {
        if !self.is_on() {
            return;
        }
        self.append(Entry::Tree(TreeRecord {
            root,
            count,
            id: id.to_string(),
            parent,
            created_ns: to_ns(created),
            manifest: manifest(),
        }));
    }

    pub fn import_file(&self, node: &ImportNode) {
        if self.is_on() {
            self.append(Entry::Import(import_record(
                node.ino,
                &node.meta(),
                ImportKind::File,
                None,
            )));
        }
    }

    pub fn import_dir(&self, dir: &ImportDir) {
        if !self.is_on() {
            return;
        }
        let kind = if dir.is_link() {
            ImportKind::Symlink
        } else {
            ImportKind::Directory
        };
        self.append(Entry::Import(import_record(
            dir.ino,
            &dir.meta(),
            kind,
            dir.target.as_deref(),
        )));
    }

    /// What import `ino` became: None while it is being written.
    pub fn outcome(&self, ino: u64, finished: Option<&Finished>) {
        if !self.is_on() {
            return;
        }
        self.append(Entry::Outcome(OutcomeRecord {
            ino,
            finished: finished.map(|f| FinishedRecord {
                task_id: f.task_id.clone(),
                content_length: f.content_length,
                piece_length: f.piece_length,
            }),
        }));
    }

    pub fn node_gone(&self, ino: u64) {
        self.append(Entry::NodeGone(ino));
    }

    pub fn open(&self, fh: u64, ino: u64, backing_id: Option<u32>) {
        self.append(Entry::Open(OpenRecord {
            fh,
            ino,
            passthrough: backing_id.is_some(),
            backing_id: backing_id.unwrap_or(0),
        }));
    }

    pub fn closed(&self, fh: u64) {
        self.append(Entry::Closed(fh));
    }

    /// The listing handle `fh` was opened with.
    pub fn listing(&self, fh: u64, entries: &[DirEntry]) {
        if !self.is_on() {
            return;
        }
        self.append(Entry::Listing(ListingRecord {
            fh,
            entries: entries
                .iter()
                .map(|e| ListingEntry {
                    ino: e.ino,
                    kind: match e.kind {
                        Kind::Directory => EntryKind::Directory,
                        Kind::File => EntryKind::File,
                        Kind::Symlink => EntryKind::Symlink,
                    } as i32,
                    name: e.name.as_bytes().to_vec(),
                })
                .collect(),
        }));
    }
}

/// A listing as the journal holds it.
pub fn listing_entries(record: ListingRecord) -> Vec<DirEntry> {
    record
        .entries
        .into_iter()
        .map(|e| DirEntry {
            ino: e.ino,
            kind: match EntryKind::try_from(e.kind) {
                Ok(EntryKind::File) => Kind::File,
                Ok(EntryKind::Symlink) => Kind::Symlink,
                _ => Kind::Directory,
            },
            name: std::ffi::OsString::from_vec(e.name),
        })
        .collect()
}

fn import_record(
    ino: u64,
    meta: &ImportMeta,
    kind: ImportKind,
    target: Option<&std::ffi::OsStr>,
) -> ImportRecord {
    ImportRecord {
        ino,
        parent: meta.parent,
        name: meta.name.as_bytes().to_vec(),
        perm: u32::from(meta.perm),
        uid: meta.uid,
        gid: meta.gid,
        atime_ns: to_ns(meta.atime),
        mtime_ns: to_ns(meta.mtime),
        ctime_ns: to_ns(meta.ctime),
        linked: meta.linked,
        kind: kind as i32,
        target: target.map(|t| t.as_bytes().to_vec()).unwrap_or_default(),
    }
}
