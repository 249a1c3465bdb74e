//! Open files and open directories: the handle numbers the kernel holds,
//! what each stands for, and what the kernel is told about it.

use std::collections::HashMap;
use std::ffi::OsString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::attr::Kind;
use crate::error::{Errno, FsResult};
use crate::inodes::Node;
use crate::read::readahead::Readahead;

/// One open file.
pub struct OpenFile {
    pub node: Node,
    pub writable: bool,
    pub readahead: Mutex<Readahead>,
    /// The whole-task download this handle reads (a daemon without range
    /// reads): marked in use while the handle is open, so the tree
    /// prefetcher does not evict it.
    pub reading: Option<crate::task_files::Reading>,
}

/// How a file was opened, for the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    /// Keep the kernel's page cache across opens (immutable content).
    pub keep_cache: bool,
    /// Bypass the kernel's page cache. Writable opens (always imports) do:
    /// an import's bytes go to the daemon once, and caching them first only
    /// costs the writer a copy into freshly allocated pages (cp of 2 GiB
    /// into import/ spent 1.9-2.1 s of system time with the cache, 0.3-1.4 s
    /// without).
    pub direct_io: bool,
    /// The kernel need not send FLUSH at close: a read-only open has
    /// nothing to flush, and a close that waits on the mount would wait for
    /// the next process while nobody serves it (a crash), including the
    /// close of every descriptor a program forks with at its child's exec.
    pub no_flush: bool,
}

impl Opened {
    /// What the kernel is told about handle `fh` on `file`.
    fn new(fh: u64, file: &OpenFile) -> Opened {
        Opened {
            fh,
            keep_cache: matches!(file.node, Node::Task(_)),
            direct_io: file.writable,
            no_flush: !file.writable,
        }
    }
}

/// A directory listing entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    pub name: OsString,
}

impl DirEntry {
    /// A directory's own entries, "." and "..", that every listing starts with.
    pub fn dots(dir: u64, parent: u64) -> Vec<DirEntry> {
        [(dir, "."), (parent, "..")]
            .map(|(ino, name)| DirEntry {
                ino,
                kind: Kind::Directory,
                name: name.into(),
            })
            .to_vec()
    }
}

/// Handle numbers carry the generation of the process that gave them (how
/// many processes served the connection before it) above this bit, so a
/// process that took a mount over never reuses a number the kernel still
/// holds, and knows a handle of its predecessors when it sees one.
const GENERATION_SHIFT: u32 = 40;

/// The handle table: files, and directory listings taken at opendir (a
/// directory of thousands of tasks is asked of the daemon once per
/// opendir, not once per readdir call, and its offsets stay stable while
/// tasks come and go).
pub struct Handles {
    next: AtomicU64,
    /// The first number of this process's generation.
    first: AtomicU64,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
}

impl Default for Handles {
    fn default() -> Self {
        Handles {
            // 0 is what the kernel sends when there is no handle.
            next: AtomicU64::new(1),
            first: AtomicU64::new(1),
            files: Mutex::default(),
            dirs: Mutex::default(),
        }
    }
}

impl Handles {
    fn next(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Numbers this process gives start at its generation's (before any
    /// handle is given).
    pub fn start_generation(&self, generation: u64) {
        let first = (generation << GENERATION_SHIFT).max(1);
        self.first.store(first, Ordering::Relaxed);
        self.next.store(first, Ordering::Relaxed);
    }

    /// A handle given by a process that served the connection before this
    /// one.
    pub fn is_earlier(&self, fh: u64) -> bool {
        fh != 0 && fh < self.first.load(Ordering::Relaxed)
    }

    /// Adds a file under the number an earlier process gave it.
    pub fn insert_file(&self, fh: u64, file: OpenFile) -> Arc<OpenFile> {
        let file = Arc::new(file);
        lock(&self.files).insert(fh, file.clone());
        file
    }

    /// Adds a listing under the number an earlier process gave it.
    pub fn insert_dir(&self, fh: u64, entries: Vec<DirEntry>) -> Arc<Vec<DirEntry>> {
        let entries = Arc::new(entries);
        lock(&self.dirs).insert(fh, entries.clone());
        entries
    }

    pub fn add_file(&self, file: OpenFile) -> Opened {
        let fh = self.next();
        let opened = Opened::new(fh, &file);
        lock(&self.files).insert(fh, Arc::new(file));
        opened
    }

    pub fn file(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        lock(&self.files).get(&fh).cloned().ok_or(Errno::EBADF)
    }

    pub fn take_file(&self, fh: u64) -> Option<Arc<OpenFile>> {
        lock(&self.files).remove(&fh)
    }

    pub fn add_dir(&self, entries: Vec<DirEntry>) -> u64 {
        self.add_dir_shared(Arc::new(entries))
    }

    pub fn add_dir_shared(&self, entries: Arc<Vec<DirEntry>>) -> u64 {
        let fh = self.next();
        lock(&self.dirs).insert(fh, entries);
        fh
    }

    pub fn dir(&self, fh: u64) -> FsResult<Arc<Vec<DirEntry>>> {
        lock(&self.dirs).get(&fh).cloned().ok_or(Errno::EBADF)
    }

    pub fn remove_dir(&self, fh: u64) {
        lock(&self.dirs).remove(&fh);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
