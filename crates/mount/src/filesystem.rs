//! The file system's semantics, free of fuser: every operation takes plain
//! values and returns a value or an errno, so most of it is testable
//! without a kernel (the fuser adapter in `fuse.rs` only translates).
//!
//! ```text
//! /            tasks/  import/
//! tasks/<id>   read-only task files (looked up by asking the daemon)
//! import/<n>   written to create tasks (see import.rs)
//! ```

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use dfcache_budget::MemoryBudget;
use tracing::debug;

use crate::attr::{Attr, Kind, Modes, Owner, SetAttr};
use crate::daemon::{ClientError, DaemonClient, ImportOptions, TaskInfo};
use crate::error::{Errno, FsResult};
pub use crate::handles::DirEntry;
use crate::handles::{Handles, OpenFile, Opened};
use crate::import::state::ImportState;
use crate::inodes::*;
use crate::passthrough::LocalContent;
use crate::read::backend::BlockReads;
use crate::read::block_cache::BlockCache;
use crate::read::drop_behind::{DropBehind, PageCache};
use crate::read::geometry::TaskGeometry;
use crate::space;
use crate::takeover::journal::Journal;
use crate::takeover::state::StateLog;
use crate::task_files::prefetch::Prefetcher;
use crate::task_files::TaskFiles;
use crate::trees::node::TreeNode;
use dfcache_client::mapping::PathMapper;
use dfcache_client::Code;
use dfcache_wire::domain::task_id::is_task_id;

/// In-flight fetch budget when read-ahead is off or tiny.
const MIN_INFLIGHT: u64 = 8 << 20;

/// A known task is asked of the daemon again at its next lookup once this
/// long has passed, so a deleted or expired task stops resolving (the
/// kernel's entry for it lives as long).
pub const REVALIDATE_AFTER: Duration = Duration::from_secs(5);

/// The xattr that holds a file's task id.
pub const TASK_ID_XATTR: &str = "user.dfcache.task_id";
/// The xattr of a directory in `import/` that commits it as a tree.
pub const TREE_ID_XATTR: &str = "user.dfcache.tree_id";

/// Everything the mount is configured with.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Bytes of pieces kept in memory.
    pub cache_size: u64,
    /// Most bytes fetched ahead of a sequential reader.
    pub read_ahead: u64,
    /// Spool directory: imports are written there and uploaded on close.
    pub spool: Option<PathBuf>,
    /// A directory on the disk that takes this machine's imports (the
    /// spool, else the embedded daemon's store): statfs reports its free
    /// space. None: a daemon elsewhere, whose free space is unknown.
    pub free_space_of: Option<PathBuf>,
    /// Mapping for paths handed to the daemon (the spool files).
    pub path_mapping: PathMapper,
    /// What new tasks are created with.
    pub import: ImportOptions,
    /// A piece fetch that takes longer fails with EIO.
    pub fetch_timeout: Duration,
    /// The mount's memory budget for streamed imports: each takes
    /// `import::state::IMPORT_SHARE` of it from its first write to its end.
    pub import_memory: MemoryBudget,
    /// How long an unknown task id is remembered as unknown.
    pub negative_ttl: Duration,
    /// Disk bytes for whole-task downloads from a daemon without range
    /// reads (in the spool directory, else the system's temp directory).
    pub task_cache_size: u64,
    /// With such a daemon, the first open of a file of a tree also starts
    /// downloading the tree's other files in the background.
    pub prefetch_trees: bool,
    /// Owner of the mount's own entries (the mounting user by default).
    pub owner: Owner,
    /// Their permission bits.
    pub modes: Modes,
}

/// What statfs reports, in blocks of `block_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    /// Used (the known tasks) plus free.
    pub blocks: u64,
    pub free_blocks: u64,
    pub files: u64,
    pub free_files: u64,
    pub block_size: u32,
}

pub struct DfcacheFs {
    pub(crate) client: Arc<dyn DaemonClient>,
    pub(crate) config: FsConfig,
    pub(crate) inodes: Mutex<Inodes>,
    pub(crate) cache: Arc<BlockCache>,
    pub(crate) task_files: Arc<TaskFiles>,
    /// Downloads of a tree's files ahead of the programs (`--prefetch-trees`).
    pub(crate) prefetch: Prefetcher,
    /// The trees (their root inodes) whose files were queued for prefetch.
    pub(crate) prefetched_trees: Mutex<HashSet<u64>>,
    pub(crate) block_reads: BlockReads,
    pub(crate) handles: Handles,
    /// Big tasks' pages dropped from the kernel's page cache behind
    /// sequential readers.
    pub(crate) drop_behind: DropBehind,
    /// Where task content is a local file (the embedded daemon's store).
    pub(crate) local: Option<Arc<dyn LocalContent>>,
    /// Task ids recently found unknown, so repeated lookups of a wrong id
    /// do not hammer the daemon.
    negative: Mutex<HashMap<String, Instant>>,
    mounted_at: SystemTime,
}

impl DfcacheFs {
    pub fn new(client: Arc<dyn DaemonClient>, config: FsConfig) -> Self {
        // --cache-size bounds the pieces in memory, cached or being
        // fetched: read-ahead (the fetch budget) takes at most half of it,
        // the LRU the rest.
        let mut config = config;
        config.read_ahead = config.read_ahead.min(config.cache_size / 2);
        let inflight = config
            .read_ahead
            .max(MIN_INFLIGHT.min(config.cache_size / 2))
            .max(1);
        let lru_capacity = config.cache_size.saturating_sub(inflight);
        let cache = Arc::new(BlockCache::new(client.clone(), lru_capacity, inflight));
        let task_files = Arc::new(TaskFiles::new(
            client.clone(),
            config.spool.clone().unwrap_or_else(std::env::temp_dir),
            // A daemon that sees the spool links its files into it.
            config.spool.as_ref().map(|_| config.path_mapping.clone()),
            config.task_cache_size,
            config.fetch_timeout,
        ));
        let prefetch = Prefetcher::new(task_files.clone(), client.clone());
        let block_reads = BlockReads {
            cache: cache.clone(),
            read_ahead: config.read_ahead,
        };
        Self {
            client,
            block_reads,
            config,
            inodes: Mutex::new(Inodes::default()),
            cache,
            task_files,
            prefetch,
            prefetched_trees: Mutex::new(HashSet::new()),
            handles: Handles::default(),
            drop_behind: DropBehind::new(0),
            local: None,
            negative: Mutex::new(HashMap::new()),
            mounted_at: SystemTime::now(),
        }
    }

    /// Task content is a local file in `local` (the embedded daemon's
    /// store): opens may pass through to it.
    pub fn with_local_content(mut self, local: Arc<dyn LocalContent>) -> Self {
        self.local = Some(local);
        self
    }

    /// Tasks longer than `above` bytes (0: none) are dropped from the
    /// kernel's page cache behind a sequential reader.
    pub fn with_drop_behind(mut self, above: u64) -> Self {
        self.drop_behind = DropBehind::new(above);
        self
    }

    /// Where drops go, once the session is mounted.
    pub fn attach_page_cache(&self, page_cache: Arc<dyn PageCache>) {
        self.drop_behind.attach(page_cache);
    }

    /// Where the names the kernel is given are recorded for a takeover.
    pub fn state_log(&self) -> StateLog {
        self.inodes().log.clone()
    }

    /// From now on, every new name is recorded in `journal`.
    pub fn attach_journal(&self, journal: Arc<Journal>) {
        self.inodes().log.attach(journal);
    }

    /// Imports open for writing (a process handing the mount over waits
    /// for them to close).
    pub fn imports_being_written(&self) -> usize {
        self.inodes().imports_being_written()
    }

    /// The local content source, for passthrough opens restored after a
    /// takeover.
    pub fn local_content(&self) -> Option<&dyn LocalContent> {
        self.local.as_deref()
    }

    /// The task id behind task inode `ino`.
    pub fn task_of(&self, ino: u64) -> Option<String> {
        match self.inodes().get(ino)? {
            Node::Task(task) => Some(task.geometry.id.to_string()),
            _ => None,
        }
    }

    pub fn cache(&self) -> &BlockCache {
        &self.cache
    }

    pub(crate) fn inodes(&self) -> std::sync::MutexGuard<'_, Inodes> {
        self.inodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn node(&self, ino: u64) -> FsResult<Node> {
        self.inodes().get(ino).ok_or(Errno::ENOENT)
    }

    pub(crate) fn add_handle(&self, file: OpenFile) -> Opened {
        self.handles.add_file(file)
    }

    pub(crate) fn handle(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        self.handles.file(fh)
    }

    /// The inode an open handle is on.
    pub fn handle_ino(&self, fh: u64) -> Option<u64> {
        self.handle(fh).ok().map(|file| file.node.ino())
    }

    pub(crate) fn take_handle(&self, fh: u64) -> Option<Arc<OpenFile>> {
        self.handles.take_file(fh)
    }

    fn dir_attr(&self, ino: u64, perm: u16) -> Attr {
        Attr::directory(ino, perm, self.config.owner, self.mounted_at)
    }

    pub(crate) fn task_attr(&self, task: &TaskNode) -> Attr {
        Attr::task(
            task.ino,
            task.geometry.content_length,
            self.config.owner,
            self.config.modes,
            task.created,
        )
    }

    pub(crate) async fn import_attr(&self, node: &ImportNode) -> Attr {
        // Waits while the import is being finished: the size and mode
        // reported after close() are the final ones.
        let state = node.state.lock().await;
        let meta = node.meta().clone();
        let finished = matches!(&*state, ImportState::Finished(_));
        let perm = if finished {
            meta.perm & 0o555
        } else {
            meta.perm
        };
        meta.attr(node.ino, Kind::File, state.size(), perm)
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        match ino {
            ROOT_INO => Ok(self.dir_attr(ROOT_INO, self.config.modes.read_only_dir())),
            TASKS_INO => Ok(self.dir_attr(TASKS_INO, self.config.modes.read_only_dir())),
            IMPORT_INO => Ok(self.dir_attr(IMPORT_INO, self.config.modes.import_dir())),
            TREES_INO => Ok(self.dir_attr(TREES_INO, self.config.modes.read_only_dir())),
            _ => match self.node(ino)? {
                Node::Task(task) => Ok(self.task_attr(&task)),
                Node::Import(node) => Ok(self.import_attr(&node).await),
                Node::ImportDir(dir) => Ok(self.import_dir_attr(&dir)),
                Node::Tree(node) => Ok(self.tree_attr(&node)),
            },
        }
    }

    pub async fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        match parent {
            ROOT_INO if name == TASKS_DIR => self.getattr(TASKS_INO).await,
            ROOT_INO if name == IMPORT_DIR => self.getattr(IMPORT_INO).await,
            ROOT_INO if name == TREES_DIR => self.getattr(TREES_INO).await,
            ROOT_INO => Err(Errno::ENOENT),
            TREES_INO => self.lookup_tree(name).await,
            TASKS_INO => {
                let task = self.lookup_task(name).await?;
                Ok(self.task_attr(&task))
            }
            IMPORT_INO => self.lookup_import(IMPORT_INO, name).await,
            _ => match self.node(parent)? {
                Node::ImportDir(dir) if !dir.is_link() => self.lookup_import(dir.ino, name).await,
                Node::Tree(node) => match &*node {
                    TreeNode::Dir(dir) => self.lookup_in_tree(dir, name).await,
                    _ => Err(Errno::ENOTDIR),
                },
                _ => Err(Errno::ENOTDIR),
            },
        }
    }

    /// A task by id: known, or asked of the daemon (so a task the P2P
    /// network has opens even if it is not listed locally).
    pub(crate) async fn lookup_task(&self, name: &OsStr) -> FsResult<Arc<TaskNode>> {
        let id = name
            .to_str()
            .filter(|id| is_task_id(id))
            .ok_or(Errno::ENOENT)?;
        tracing::Span::current().record("task_id", id);
        let known = self.inodes().task(id);
        if let Some(task) = &known {
            if task.confirmed_within(REVALIDATE_AFTER) {
                return Ok(task.clone());
            }
        } else if self.recently_unknown(id) {
            return Err(Errno::ENOENT);
        }
        let stat = self.client.stat(id).await;
        if let Some(task) = known {
            return match stat {
                Ok(_) => {
                    task.confirm();
                    Ok(task)
                }
                Err(ClientError::NotFound(_)) => {
                    self.forget_task(id);
                    self.remember_unknown(id);
                    Err(Errno::ENOENT)
                }
                Err(e) => {
                    // A daemon without stat (2.1.12), or one that does not
                    // answer now: what this mount knows still stands (its
                    // content is immutable); reads say if it is gone.
                    debug!(task_id = id, error = %e, "cannot confirm a known task; keeping it");
                    Ok(task)
                }
            };
        }
        match stat {
            Ok(task) => {
                let created = task.created_at.unwrap_or(self.mounted_at);
                let geometry = TaskGeometry::new(id, task.content_length, task.piece_length);
                Ok(self.inodes().add_task(geometry, created))
            }
            Err(ClientError::Daemon {
                code: Code::Unimplemented,
                ..
            }) => {
                // A daemon without stat (2.1.12): only what this mount
                // imported or listed can be known.
                debug!(task_id = id, "the daemon cannot stat tasks; unknown id");
                Err(Errno::ENOENT)
            }
            Err(e) => {
                let errno = Errno::from(&e);
                if errno == Errno::ENOENT {
                    self.remember_unknown(id);
                }
                Err(errno)
            }
        }
    }

    fn recently_unknown(&self, id: &str) -> bool {
        let mut negative = self.negative.lock().unwrap_or_else(|p| p.into_inner());
        match negative.get(id) {
            Some(at) if at.elapsed() < self.config.negative_ttl => true,
            Some(_) => {
                negative.remove(id);
                false
            }
            None => false,
        }
    }

    fn remember_unknown(&self, id: &str) {
        let mut negative = self.negative.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: stale entries go when the map grows.
        if negative.len() > 4096 {
            let ttl = self.config.negative_ttl;
            negative.retain(|_, at| at.elapsed() < ttl);
        }
        negative.insert(id.to_string(), Instant::now());
    }

    /// A task that just appeared (an import finished) is no longer unknown.
    pub(crate) fn forget_unknown(&self, id: &str) {
        self.negative
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Opens a directory: its listing, kept until releasedir.
    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        let entries = self.readdir(ino).await?;
        let changes = self.listing_changes(ino);
        let log = self.state_log();
        match changes && log.is_on() {
            true => {
                let entries = Arc::new(entries);
                let fh = self.handles.add_dir_shared(entries.clone());
                // Recorded before the kernel hears of the handle.
                log.listing(fh, &entries);
                Ok(fh)
            }
            false => Ok(self.handles.add_dir(entries)),
        }
    }

    /// Whether directory `ino`'s entries can change (so a takeover needs
    /// its listing snapshot recorded): all but the root's and a tree's.
    fn listing_changes(&self, ino: u64) -> bool {
        ino != ROOT_INO && !matches!(self.node(ino), Ok(Node::Tree(_)))
    }

    /// The listing taken when `fh` was opened.
    pub fn dir_listing(&self, fh: u64) -> FsResult<Arc<Vec<DirEntry>>> {
        self.handles.dir(fh)
    }

    pub fn releasedir(&self, ino: u64, fh: u64) {
        self.handles.remove_dir(fh);
        if self.listing_changes(ino) {
            self.state_log().closed(fh);
        }
    }

    /// The entries of directory `ino`, asked of the daemon for `tasks/`.
    pub async fn readdir(&self, ino: u64) -> FsResult<Vec<DirEntry>> {
        let dir = |ino, name: &str| DirEntry {
            ino,
            kind: Kind::Directory,
            name: name.into(),
        };
        let mut entries: Vec<DirEntry> = match ino {
            ROOT_INO => vec![
                dir(ROOT_INO, "."),
                dir(ROOT_INO, ".."),
                dir(TASKS_INO, TASKS_DIR),
                dir(IMPORT_INO, IMPORT_DIR),
                dir(TREES_INO, TREES_DIR),
            ],
            TASKS_INO => DirEntry::dots(TASKS_INO, ROOT_INO),
            IMPORT_INO => return Ok(self.import_listing(IMPORT_INO, ROOT_INO)),
            // The trees this mount has opened: which tasks are manifests is
            // not known until one is read.
            TREES_INO => {
                let mut entries = DirEntry::dots(TREES_INO, ROOT_INO);
                for (id, ino) in self.inodes().trees() {
                    entries.push(dir(ino, &id));
                }
                return Ok(entries);
            }
            _ => match self.node(ino)? {
                Node::Tree(node) => match &*node {
                    TreeNode::Dir(d) => return Ok(self.tree_listing(d)),
                    _ => return Err(Errno::ENOTDIR),
                },
                Node::ImportDir(d) if !d.is_link() => {
                    let parent = d.meta().parent;
                    return Ok(self.import_listing(d.ino, parent));
                }
                _ => return Err(Errno::ENOTDIR),
            },
        };
        if ino == TASKS_INO {
            let tasks = match self.client.list().await {
                Ok(tasks) => tasks,
                Err(ClientError::Daemon {
                    code: Code::Unimplemented,
                    ..
                }) => {
                    // A daemon without the listing (dragonfly-api
                    // 2.1.12): what this mount imported or opened.
                    debug!("the daemon cannot list its tasks; listing the tasks this mount knows");
                    entries.extend(self.inodes().known_tasks().iter().map(|t| DirEntry {
                        ino: t.ino,
                        kind: Kind::File,
                        name: (*t.geometry.id).into(),
                    }));
                    return Ok(entries);
                }
                Err(e) => return Err(Errno::from(e)),
            };
            self.forget_unlisted(&tasks);
            let mut inodes = self.inodes();
            for t in tasks {
                let created = t.created_at.unwrap_or(self.mounted_at);
                let geometry = TaskGeometry::new(&t.id, t.content_length, t.piece_length);
                let node = inodes.add_task(geometry, created);
                entries.push(DirEntry {
                    ino: node.ino,
                    kind: Kind::File,
                    name: t.id.into(),
                });
            }
        }
        Ok(entries)
    }

    /// Known tasks the daemon no longer lists were deleted or expired:
    /// their names stop resolving and their cached pieces go, so `ls`,
    /// `stat` and reads agree. (Tasks opened by id from the P2P network are
    /// not local, so they are asked for again at their next lookup.)
    fn forget_unlisted(&self, listed: &[TaskInfo]) {
        let listed: HashSet<&str> = listed.iter().map(|t| t.id.as_str()).collect();
        let gone: Vec<Arc<TaskNode>> = self
            .inodes()
            .known_tasks()
            .into_iter()
            .filter(|t| !listed.contains(&*t.geometry.id))
            .collect();
        for task in gone {
            self.forget_task(&task.geometry.id);
        }
    }

    /// A task that is gone: its name, its cached pieces.
    pub(crate) fn forget_task(&self, id: &str) {
        if self.inodes().forget_task(id).is_some() {
            debug!(task_id = id, "task is gone from the daemon; forgotten");
        }
        self.cache.forget_task(id);
    }

    pub fn statfs(&self) -> FsStats {
        let (files, bytes) = self.inodes().task_count_and_bytes();
        let (free_bytes, free_files) = space::free_space(self.config.free_space_of.as_deref());
        let block = u64::from(space::BLOCK_SIZE);
        let free_blocks = free_bytes / block;
        FsStats {
            blocks: bytes.div_ceil(block).saturating_add(free_blocks),
            free_blocks,
            files: files.saturating_add(free_files),
            free_files,
            block_size: space::BLOCK_SIZE,
        }
    }

    /// The task id behind a file: its task, or a finished import's.
    pub async fn task_id_of(&self, ino: u64) -> FsResult<Option<String>> {
        match self.node(ino)? {
            Node::Task(task) => Ok(Some(task.geometry.id.to_string())),
            Node::Tree(node) => Ok(match &*node {
                TreeNode::File(f) => Some(f.task_id.clone()),
                _ => None,
            }),
            Node::ImportDir(_) => Ok(None),
            Node::Import(node) => match &*node.state.lock().await {
                ImportState::Finished(f) => Ok(Some(f.task_id.clone())),
                _ => Ok(None),
            },
        }
    }

    pub async fn getxattr(&self, ino: u64, name: &OsStr) -> FsResult<Vec<u8>> {
        if name == TREE_ID_XATTR {
            return match self.node(ino) {
                Ok(Node::ImportDir(d)) if !d.is_link() => {
                    Ok(self.commit_tree(ino).await?.into_bytes())
                }
                _ => Err(Errno::ENODATA),
            };
        }
        if name != TASK_ID_XATTR || ino <= IMPORT_INO {
            return Err(Errno::ENODATA);
        }
        self.task_id_of(ino)
            .await?
            .map(String::into_bytes)
            .ok_or(Errno::ENODATA)
    }

    pub async fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        if matches!(self.node(ino), Ok(Node::ImportDir(d)) if !d.is_link()) {
            let mut names = TREE_ID_XATTR.as_bytes().to_vec();
            names.push(0);
            return Ok(names);
        }
        if ino <= IMPORT_INO || self.task_id_of(ino).await?.is_none() {
            return Ok(Vec::new());
        }
        let mut names = TASK_ID_XATTR.as_bytes().to_vec();
        names.push(0);
        Ok(names)
    }

    /// chmod, chown, utimes and truncate. Task files are read-only; finished
    /// imports accept mode, owner and times (so `cp -p`, `install` and
    /// `rsync` work) but not a size change.
    pub async fn setattr(&self, ino: u64, change: SetAttr) -> FsResult<Attr> {
        if ino <= IMPORT_INO {
            return Err(Errno::EPERM);
        }
        let node = match self.node(ino)? {
            Node::Task(_) | Node::Tree(_) => return Err(Errno::EACCES),
            Node::ImportDir(dir) => return self.setattr_import_dir(&dir, &change),
            Node::Import(node) => node,
        };
        if let Some(size) = change.size {
            let mut state = node.state.lock().await;
            match &mut *state {
                ImportState::Spooling(spool) => spool.truncate(size)?,
                other if other.size() == size => {}
                _ => {
                    debug!(
                        size,
                        "truncate of an import to another size than it has is refused"
                    );
                    return Err(Errno::EINVAL);
                }
            }
        }
        node.meta().apply(&change);
        self.inodes().log.import_file(&node);
        Ok(self.import_attr(&node).await)
    }

    /// Unlinked and closed: the inode can go.
    pub(crate) fn drop_if_unused(&self, node: &ImportNode) {
        let meta = node.meta();
        if !meta.linked && meta.writers == 0 {
            drop(meta);
            self.inodes().release_import(node.ino);
        }
    }
}
