//! The embedded daemon's on-disk task store.
//!
//! Layout under the store directory:
//! - `tasks/<id>.data`: the content, one file per task;
//! - `tasks/<id>.meta`: its metadata (an encoded `PersistentCacheTask`);
//! - `tmp/`: writes in progress, removed at start.
//!
//! A task exists once its `.meta` is in `tasks/`: content is renamed into
//! place first, metadata last, each fsynced, so a crash at any point leaves
//! either a whole task or leftovers that `open` removes.

mod direct;
mod error;
mod link;
mod lock;
mod meta;
mod range;
mod writer;

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use dfcache_budget::Lease;
use tokio::io::AsyncReadExt;
use tracing::{debug, info, warn};

use crate::memory::TransferMemory;
pub use error::{StoreError, StoreResult};
pub use meta::{TaskMeta, MAX_IMPORTERS};
pub use range::RangeReader;
pub use writer::{TaskWriter, WriteParams, MAX_APPLICATION_LEN, MAX_ID_CONTENT_LEN, MAX_TAG_LEN};

const DATA_SUFFIX: &str = ".data";
const META_SUFFIX: &str = ".meta";
/// Size of the reads that feed a write from a file on disk.
const IMPORT_READ_SIZE: usize = dfcache_wire::domain::CHUNK_SIZE;

/// A cheaply cloneable handle to one store directory.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// Held, never read: the store's `flock` lives as long as this file.
    _lock: File,
    tasks_dir: PathBuf,
    tmp_dir: PathBuf,
    tasks: RwLock<HashMap<String, TaskMeta>>,
    /// Serialises commits and deletes so two writers of the same content
    /// store it once.
    commit: Mutex<()>,
    next_temp: AtomicU64,
    /// Streams reading each task right now (see [`ReadLease`]): GC leaves
    /// a task alone while it has any.
    readers: Mutex<HashMap<String, usize>>,
}

impl Store {
    /// Opens (creating if needed) the store at `dir`, removing unfinished
    /// writes and any content without metadata.
    ///
    /// Fails with [`StoreError::InUse`] when another process has the store
    /// open; the lock is taken before anything in it is touched.
    pub fn open(dir: &Path) -> StoreResult<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::io(format!("create {}", dir.display()), e))?;
        let lock = lock::take(dir)?;
        let tasks_dir = dir.join("tasks");
        let tmp_dir = dir.join("tmp");
        for d in [&tasks_dir, &tmp_dir] {
            std::fs::create_dir_all(d)
                .map_err(|e| StoreError::io(format!("create {}", d.display()), e))?;
        }
        clean_dir(&tmp_dir)?;
        let tasks = load_tasks(dir, &tasks_dir)?;
        info!(dir = %dir.display(), tasks = tasks.len(), "opened task store");
        Ok(Self {
            inner: Arc::new(Inner {
                _lock: lock,
                tasks_dir,
                tmp_dir,
                tasks: RwLock::new(tasks),
                commit: Mutex::new(()),
                next_temp: AtomicU64::new(0),
                readers: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Every live (unexpired) task.
    pub fn list(&self) -> Vec<TaskMeta> {
        let now = SystemTime::now();
        let mut tasks: Vec<TaskMeta> = self
            .read_tasks()
            .values()
            .filter(|t| t.is_live_at(now))
            .cloned()
            .collect();
        tasks.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        tasks
    }

    pub fn get(&self, id: &str) -> StoreResult<TaskMeta> {
        check_task_id(id)?;
        self.read_tasks()
            .get(id)
            .filter(|t| t.is_live_at(SystemTime::now()))
            .cloned()
            .ok_or_else(|| StoreError::NotFound(id.to_string()))
    }

    /// The task's metadata, its content file opened for positional reads,
    /// and a lease that keeps GC from collecting the task until it is
    /// dropped (hold it as long as the response stream lives).
    pub fn open_content(&self, id: &str) -> StoreResult<(TaskMeta, Arc<File>, ReadLease)> {
        // The lease first: a GC round that starts after this sees it; one
        // that ran before has removed the task, and `get` says NOT_FOUND.
        // A round already under way may still unlink the files after they
        // are opened here, which is harmless: open descriptors keep the
        // content (the direct reader, opened next, then falls back to
        // buffered reads through this one).
        let lease = ReadLease::take(&self.inner, id);
        let meta = self.get(id)?;
        let path = self.data_path(id);
        match File::open(&path) {
            Ok(file) => Ok((meta, Arc::new(file), lease)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::NotFound(id.to_string()))
            }
            Err(e) => Err(StoreError::io(format!("open {}", path.display()), e)),
        }
    }

    /// Where a task's content file is: for a hard link to it (hold a lease
    /// from `open_content` meanwhile, or GC may remove it first).
    pub fn content_path(&self, id: &str) -> PathBuf {
        self.data_path(id)
    }

    /// A reader of `offset..end` of a task opened with `open_content`,
    /// its blocks leased from `memory`'s budget.
    pub fn range_reader(
        &self,
        id: &str,
        file: Arc<File>,
        offset: u64,
        end: u64,
        memory: &TransferMemory,
    ) -> RangeReader {
        RangeReader::new(&self.data_path(id), file, offset, end, memory.clone())
    }

    /// Starts writing a new task; it exists only once `finish` returns.
    ///
    /// An announced length beyond the store's free space is refused before
    /// anything is written (the client learns at once, not after sending
    /// gigabytes); an unknown length can still fill the disk, which then
    /// fails the write with `NoSpace`. `share` is what the import took of
    /// `memory`'s budget (`TransferMemory::import_share`).
    pub fn begin_write(
        &self,
        params: WriteParams,
        memory: &TransferMemory,
        share: Lease,
    ) -> StoreResult<TaskWriter> {
        params.validate()?;
        if let Some(len) = params.expected_length {
            self.check_space(len)?;
        }
        TaskWriter::start(self.clone(), params, self.temp_path("part"), memory, share)
    }

    /// Refuses `len` bytes when the store's file system has fewer free.
    fn check_space(&self, len: u64) -> StoreResult<()> {
        match free_bytes(&self.inner.tmp_dir) {
            Ok(free) if len > free => Err(StoreError::NoSpace {
                context: format!("storing {len} bytes: the store has {free} bytes free"),
            }),
            Ok(_) => Ok(()),
            Err(e) => {
                // Not knowing is no reason to refuse: the write itself
                // still fails cleanly when the disk fills up.
                warn!(error = %e, "cannot read the store's free space");
                Ok(())
            }
        }
    }

    /// A fresh name in the temporary directory (emptied at start).
    fn temp_path(&self, suffix: &str) -> PathBuf {
        let n = self.inner.next_temp.fetch_add(1, Ordering::Relaxed);
        self.inner
            .tmp_dir
            .join(format!("{}-{n}.{suffix}", std::process::id()))
    }

    /// Imports the regular file open as `file` (the upload RPC opened it
    /// with its caller's rights), once `memory`'s budget has room for it;
    /// `path` is its name, for messages.
    pub async fn import_file(
        &self,
        file: File,
        path: &Path,
        mut params: WriteParams,
        memory: &TransferMemory,
    ) -> StoreResult<TaskMeta> {
        let mut file = tokio::fs::File::from_std(file);
        let metadata = file
            .metadata()
            .await
            .map_err(|e| StoreError::path(path, e))?;
        if !metadata.is_file() {
            return Err(StoreError::InvalidArgument(format!(
                "{}: not a regular file",
                path.display()
            )));
        }
        params.expected_length = Some(metadata.len());
        params.validate()?;
        let share = memory
            .budget()
            .acquire(memory.import_share(params.expected_length, false))
            .await;
        let mut writer = self.begin_write(params, memory, share)?;
        loop {
            let mut buf = BytesMut::with_capacity(IMPORT_READ_SIZE);
            let n = file
                .read_buf(&mut buf)
                .await
                .map_err(|e| StoreError::io(format!("read {}", path.display()), e))?;
            if n == 0 {
                break;
            }
            writer.write(buf.freeze()).await?;
        }
        writer.finish().await
    }

    /// Deleting a task that is being read: the task leaves the listing at
    /// once and new reads get NOT_FOUND, while the streams already running
    /// finish with the content they started with. They hold open file
    /// descriptors (the buffered and, for long ranges, the direct one are
    /// both opened before the stream starts), which outlive the unlink, so
    /// the delete never waits on a slow reader and never cuts one short.
    ///
    /// `by` says who asks: an importer's delete of a task it did not
    /// import changes nothing (checked under the lock commits take, so no
    /// import of the same content slips in between).
    pub fn delete(&self, id: &str, by: Deleter) -> StoreResult<()> {
        check_task_id(id)?;
        let _guard = lock(&self.inner.commit);
        let mut tasks = self.write_tasks();
        let Some(meta) = tasks.get(id) else {
            return Err(StoreError::NotFound(id.to_string()));
        };
        if let Deleter::Importer(uid) = by {
            if !meta.importers.contains(&uid) {
                return Err(StoreError::NotAnImporter {
                    id: id.to_string(),
                    uid,
                });
            }
        }
        tasks.remove(id);
        drop(tasks);
        self.remove_files(id);
        // Without this a power loss can bring the deleted task back.
        self.sync_tasks_dir();
        info!(task_id = id, "deleted task");
        Ok(())
    }

    /// Tasks held, their content bytes, and the free bytes of the store's
    /// disk (None when it cannot be read): what the metrics report.
    pub fn usage(&self) -> (usize, u64, Option<u64>) {
        let now = SystemTime::now();
        let (tasks, bytes) = self
            .read_tasks()
            .values()
            .filter(|t| t.is_live_at(now))
            .fold((0, 0), |(n, b), t| (n + 1, b + t.content_length));
        (tasks, bytes, free_bytes(&self.inner.tasks_dir).ok())
    }

    /// Removes every task whose TTL ran out; returns how many.
    pub fn collect_expired(&self) -> usize {
        let _guard = lock(&self.inner.commit);
        let now = SystemTime::now();
        let readers = lock(&self.inner.readers).clone();
        let (expired, in_use): (Vec<String>, Vec<String>) = self
            .read_tasks()
            .values()
            .filter(|t| !t.is_live_at(now))
            .map(|t| t.id.clone())
            .partition(|id| readers.get(id).is_none_or(|&n| n == 0));
        // A task being read is collected in a later round, once its last
        // stream has ended: a read never loses its content mid-way.
        for id in &in_use {
            debug!(task_id = %id, "expired task still being read; collecting it later");
        }
        for id in &expired {
            self.write_tasks().remove(id);
            self.remove_files(id);
            info!(task_id = %id, "collected expired task");
        }
        if !expired.is_empty() {
            self.sync_tasks_dir();
        }
        expired.len()
    }

    /// Runs `collect_expired` every `interval` until the runtime stops.
    pub fn spawn_gc(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        // tokio panics on a zero period and on an Instant overflow; no
        // interval outside these bounds makes sense anyway.
        let interval = interval.clamp(Duration::from_millis(1), Duration::from_secs(365 * 86400));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            loop {
                ticker.tick().await;
                let store = store.clone();
                match tokio::task::spawn_blocking(move || store.collect_expired()).await {
                    Ok(collected) => dfcache_metrics::daemon().gc_ran(collected),
                    Err(e) => warn!(error = %e, "task collection failed"),
                }
            }
        })
    }

    /// Moves a finished temporary file into place as task `meta.id`. When the
    /// task exists already, the duplicate content is dropped and the task's
    /// TTL refreshed instead.
    fn commit(&self, temp: &Path, mut meta: TaskMeta) -> StoreResult<TaskMeta> {
        let _guard = lock(&self.inner.commit);
        let existing = self.read_tasks().get(&meta.id).cloned();
        if let Some(existing) = existing {
            let _ = std::fs::remove_file(temp);
            meta.created_at = existing.created_at;
            let new = std::mem::replace(&mut meta.importers, existing.importers);
            for uid in new {
                meta.add_importer(uid);
            }
            self.write_meta(&meta)?;
            debug!(task_id = %meta.id, "content already stored; refreshed its metadata");
        } else {
            let data = self.data_path(&meta.id);
            if let Err(e) = std::fs::rename(temp, &data) {
                let _ = std::fs::remove_file(temp);
                return Err(StoreError::io(format!("rename into {}", data.display()), e));
            }
            // The content's name must be durable before the metadata that
            // makes it a task can be (on any file system, not only on one
            // that journals renames in order).
            if let Err(e) = File::open(&self.inner.tasks_dir).and_then(|d| d.sync_all()) {
                let _ = std::fs::remove_file(&data);
                return Err(StoreError::io(
                    format!("fsync {}", self.inner.tasks_dir.display()),
                    e,
                ));
            }
            if let Err(e) = self.write_meta(&meta) {
                let _ = std::fs::remove_file(&data);
                return Err(e);
            }
            info!(task_id = %meta.id, content_length = meta.content_length, "stored task");
        }
        self.write_tasks().insert(meta.id.clone(), meta.clone());
        Ok(meta)
    }

    /// Writes the metadata atomically (temp, fsync, rename, fsync the dir).
    fn write_meta(&self, meta: &TaskMeta) -> StoreResult<()> {
        let temp = self.temp_path("meta");
        let target = self.meta_path(&meta.id);
        let result = (|| -> std::io::Result<()> {
            let mut f = File::create(&temp)?;
            f.write_all(&meta.encode())?;
            f.sync_all()?;
            std::fs::rename(&temp, &target)?;
            File::open(&self.inner.tasks_dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result.map_err(|e| StoreError::io(format!("write {}", target.display()), e))
    }

    /// Makes the unlinks and renames in `tasks/` durable. A failure is
    /// logged, not returned: the change is done in memory and on disk
    /// already, only its survival of a power loss is in doubt.
    fn sync_tasks_dir(&self) {
        let dir = &self.inner.tasks_dir;
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            warn!(dir = %dir.display(), error = %e, "could not fsync the task directory");
        }
    }

    /// Metadata first: without it the content is a leftover, never a task.
    fn remove_files(&self, id: &str) {
        for path in [self.meta_path(id), self.data_path(id)] {
            if let Err(e) = std::fs::remove_file(&path) {
                warn!(path = %path.display(), error = %e, "could not remove task file");
            }
        }
    }

    fn data_path(&self, id: &str) -> PathBuf {
        self.inner.tasks_dir.join(format!("{id}{DATA_SUFFIX}"))
    }

    fn meta_path(&self, id: &str) -> PathBuf {
        self.inner.tasks_dir.join(format!("{id}{META_SUFFIX}"))
    }

    fn read_tasks(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, TaskMeta>> {
        self.inner
            .tasks
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_tasks(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, TaskMeta>> {
        self.inner
            .tasks
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Who asks for a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleter {
    /// Root or the daemon's own uid: any task.
    Privileged,
    /// Any other uid: only a task it imported.
    Importer(u32),
}

/// One stream reading a task; GC skips the task while any lease on it
/// lives. Dropping the lease (the stream ended, failed, or its client went
/// away) releases it.
pub struct ReadLease {
    inner: Arc<Inner>,
    id: String,
}

impl ReadLease {
    fn take(inner: &Arc<Inner>, id: &str) -> Self {
        *lock(&inner.readers).entry(id.to_string()).or_insert(0) += 1;
        Self {
            inner: inner.clone(),
            id: id.to_string(),
        }
    }
}

impl Drop for ReadLease {
    fn drop(&mut self) {
        let mut readers = lock(&self.inner.readers);
        if let Some(n) = readers.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                readers.remove(&self.id);
            }
        }
    }
}

/// Reads up to `len` bytes at `offset` without a shared seek pointer.
pub async fn read_at(file: Arc<File>, offset: u64, len: usize) -> std::io::Result<Bytes> {
    tokio::task::spawn_blocking(move || pread_full(&file, offset, len))
        .await
        .map_err(std::io::Error::other)?
}

/// Reads up to `len` bytes at `offset` for a short range (a random read
/// through the mount): answered on the calling thread when the page cache
/// holds it (`preadv2` with `RWF_NOWAIT`), which saves the two thread
/// hand-offs of `spawn_blocking`, a third of a 16 KiB read's round trip
/// measured over the socket. Otherwise read on a blocking thread, with the
/// kernel's read-ahead off for this descriptor: a random 16 KiB read
/// should not wait for 128 KiB from the disk.
pub async fn read_short(file: Arc<File>, offset: u64, len: usize) -> std::io::Result<Bytes> {
    if let Some(cached) = pread_nowait(&file, offset, len) {
        return Ok(cached);
    }
    tokio::task::spawn_blocking(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: advice only; the fd is open for the lifetime of `file`.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
        pread_full(&file, offset, len)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The whole of `offset..offset + len` when it is in the page cache and
/// one non-blocking read returns it, else None (read it the blocking way).
fn pread_nowait(file: &File, offset: u64, len: usize) -> Option<Bytes> {
    use std::os::fd::AsRawFd;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    // SAFETY: the iovec points at the vector's spare capacity of `len`
    // bytes, alive for the call; the fd is open for the lifetime of `file`.
    let n = unsafe {
        libc::preadv2(
            file.as_raw_fd(),
            &iov,
            1,
            offset as libc::off_t,
            libc::RWF_NOWAIT,
        )
    };
    if n < 0 || n as usize != len {
        // EAGAIN (not cached), EOPNOTSUPP (old kernel or file system), or
        // a partial read: the blocking read sorts it out.
        return None;
    }
    // SAFETY: preadv2 initialised the first `len` bytes.
    unsafe { buf.set_len(len) };
    Some(Bytes::from(buf))
}

/// pread into a fresh buffer without zeroing it first (a hot path: every
/// byte served goes through here, and zeroing costs as much as the copy).
fn pread_full(file: &File, offset: u64, len: usize) -> std::io::Result<Bytes> {
    use std::os::fd::AsRawFd;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    let mut filled = 0;
    while filled < len {
        // SAFETY: the pointer and length stay inside the vector's spare
        // capacity; pread writes at most `len - filled` bytes there.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.as_mut_ptr().add(filled).cast(),
                len - filled,
                (offset + filled as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            break;
        }
        filled += n as usize;
    }
    // SAFETY: pread initialised the first `filled` bytes.
    unsafe { buf.set_len(filled) };
    Ok(Bytes::from(buf))
}

/// Bytes an unprivileged writer can still use on the file system of `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs writes only into the zeroed struct we pass; the path
    // is a valid NUL-terminated string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Task ids reach file names: anything but 64 lowercase hex digits is
/// refused before a path is built from it.
fn check_task_id(id: &str) -> StoreResult<()> {
    if dfcache_wire::domain::task_id::is_task_id(id) {
        return Ok(());
    }
    let shown: String = id.chars().take(80).collect();
    Err(StoreError::InvalidArgument(format!(
        "task id {shown:?}{} is not 64 lowercase hex digits",
        if shown.len() < id.len() { "..." } else { "" }
    )))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn clean_dir(dir: &Path) -> StoreResult<()> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| StoreError::io(format!("read {}", dir.display()), e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        debug!(path = %path.display(), "removing leftover of an unfinished write");
        let _ = std::fs::remove_file(&path);
    }
    Ok(())
}

/// Where metadata that cannot be a task is moved, with its content, for
/// a human to look at: never a reason to fail the start, never deleted.
const CORRUPT_DIR: &str = "corrupt";

/// Loads every task with valid metadata and content of the recorded length.
///
/// Nothing is deleted on a guess: metadata that is unreadable right now
/// (EIO, EACCES) is skipped with its content left in place, so it comes
/// back at the next start; metadata that is malformed, names another id
/// or disagrees with its content's length is moved into `corrupt/`; the
/// only files removed are content files with no metadata file at all
/// (a crash between the two renames of a commit, or of a delete) and
/// metadata whose content file does not exist.
fn load_tasks(dir: &Path, tasks_dir: &Path) -> StoreResult<HashMap<String, TaskMeta>> {
    let entries = std::fs::read_dir(tasks_dir)
        .map_err(|e| StoreError::io(format!("read {}", tasks_dir.display()), e))?;
    let mut tasks = HashMap::new();
    let mut data_files = Vec::new();
    // Ids with a metadata file, loaded or not: their content is kept.
    let mut has_meta = std::collections::HashSet::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                warn!(dir = %tasks_dir.display(), error = %e, "cannot list the task directory fully");
                continue;
            }
        };
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(DATA_SUFFIX) {
            data_files.push(path);
            continue;
        }
        let Some(id) = name.strip_suffix(META_SUFFIX) else {
            continue;
        };
        has_meta.insert(id.to_string());
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot read task metadata; skipping the task until the next start");
                continue;
            }
        };
        let data = tasks_dir.join(format!("{id}{DATA_SUFFIX}"));
        let meta = match TaskMeta::decode(&bytes) {
            // Every piece length this store ever wrote is in these bounds;
            // another one would make a download allocate whatever it says.
            Ok(meta)
                if !(dfcache_wire::domain::piece::MIN_PIECE_LENGTH
                    ..=dfcache_wire::domain::piece::MAX_REQUESTED_PIECE_LENGTH)
                    .contains(&meta.piece_length) =>
            {
                let why = format!("piece length {}", meta.piece_length);
                move_aside(dir, &[&path, &data], &why);
                continue;
            }
            Ok(meta) if meta.id == id && dfcache_wire::domain::task_id::is_task_id(id) => meta,
            Ok(meta) => {
                move_aside(dir, &[&path, &data], &format!("names task {:?}", meta.id));
                continue;
            }
            Err(e) => {
                move_aside(dir, &[&path, &data], &e.to_string());
                continue;
            }
        };
        match std::fs::metadata(&data) {
            Ok(m) if m.len() == meta.content_length => {
                tasks.insert(meta.id.clone(), meta);
            }
            Ok(m) => move_aside(
                dir,
                &[&path, &data],
                &format!(
                    "content is {} bytes, metadata says {}",
                    m.len(),
                    meta.content_length
                ),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                warn!(path = %path.display(), "dropping metadata without content");
                let _ = std::fs::remove_file(&path);
            }
            Err(e) => {
                warn!(path = %data.display(), error = %e, "cannot stat task content; skipping the task until the next start");
            }
        }
    }
    for path in data_files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let id = name.trim_end_matches(DATA_SUFFIX);
        if !has_meta.contains(id) {
            warn!(path = %path.display(), "removing content without metadata");
            let _ = std::fs::remove_file(&path);
        }
    }
    Ok(tasks)
}

/// Moves a broken task's files into `DIR/corrupt/`, logging why.
fn move_aside(dir: &Path, paths: &[&Path], why: &str) {
    let corrupt = dir.join(CORRUPT_DIR);
    if let Err(e) = std::fs::create_dir_all(&corrupt) {
        warn!(dir = %corrupt.display(), error = %e, "cannot create the directory for corrupt tasks");
        return;
    }
    for path in paths {
        let Some(name) = path.file_name() else {
            continue;
        };
        match std::fs::rename(path, corrupt.join(name)) {
            Ok(()) => {
                warn!(path = %path.display(), moved_to = %corrupt.display(), why, "moved a corrupt task file aside");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(path = %path.display(), error = %e, why, "cannot move a corrupt task file aside");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfcache_wire::domain::ttl::DEFAULT_TTL;

    fn meta_of(id: &str, len: u64, ttl: Duration) -> TaskMeta {
        let now = SystemTime::now();
        TaskMeta {
            id: id.to_string(),
            content_length: len,
            piece_length: 4 << 20,
            persistent_replica_count: 1,
            tag: None,
            application: None,
            ttl,
            created_at: now,
            updated_at: now,
            importers: Vec::new(),
        }
    }

    /// Writes a task's two files by hand, as an older daemon would have.
    fn put(dir: &Path, meta_bytes: &[u8], id: &str, content: &[u8]) {
        let tasks = dir.join("tasks");
        std::fs::create_dir_all(&tasks).unwrap();
        std::fs::write(tasks.join(format!("{id}{META_SUFFIX}")), meta_bytes).unwrap();
        std::fs::write(tasks.join(format!("{id}{DATA_SUFFIX}")), content).unwrap();
    }

    #[test]
    fn malformed_metadata_is_moved_aside_and_the_rest_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (good, bad, other, absurd) = (
            "a".repeat(64),
            "b".repeat(64),
            "c".repeat(64),
            "9".repeat(64),
        );
        put(
            dir.path(),
            &meta_of(&good, 3, DEFAULT_TTL).encode(),
            &good,
            b"abc",
        );
        put(dir.path(), b"\xff\xff\xff not protobuf", &bad, b"xyz");
        // A piece length no download could serve in bounded memory.
        let mut huge_pieces = meta_of(&absurd, 3, DEFAULT_TTL);
        huge_pieces.piece_length = u64::MAX;
        put(dir.path(), &huge_pieces.encode(), &absurd, b"abc");
        // Metadata that names another task than its file name.
        put(
            dir.path(),
            &meta_of(&good, 3, DEFAULT_TTL).encode(),
            &other,
            b"abc",
        );
        let store = Store::open(dir.path()).unwrap();
        let ids: Vec<String> = store.list().into_iter().map(|t| t.id).collect();
        assert_eq!(ids, vec![good]);
        let corrupt = dir.path().join(CORRUPT_DIR);
        for id in [&bad, &other, &absurd] {
            for suffix in [META_SUFFIX, DATA_SUFFIX] {
                assert!(
                    corrupt.join(format!("{id}{suffix}")).exists(),
                    "{id}{suffix} not moved aside"
                );
            }
        }
    }

    #[test]
    fn metadata_that_cannot_be_read_keeps_its_content_for_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let id = "d".repeat(64);
        let tasks = dir.path().join("tasks");
        std::fs::create_dir_all(&tasks).unwrap();
        // A read error other than "malformed" (EISDIR here; EIO or EACCES
        // in the field, which root cannot provoke with permissions).
        std::fs::create_dir(tasks.join(format!("{id}{META_SUFFIX}"))).unwrap();
        std::fs::write(tasks.join(format!("{id}{DATA_SUFFIX}")), b"content").unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.list().is_empty());
        assert!(
            tasks.join(format!("{id}{DATA_SUFFIX}")).exists(),
            "content deleted on a read error"
        );
    }

    #[test]
    fn content_without_any_metadata_is_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let tasks = dir.path().join("tasks");
        std::fs::create_dir_all(&tasks).unwrap();
        let orphan = tasks.join(format!("{}{DATA_SUFFIX}", "e".repeat(64)));
        std::fs::write(&orphan, b"orphan").unwrap();
        let _store = Store::open(dir.path()).unwrap();
        assert!(!orphan.exists());
    }

    #[test]
    fn stored_metadata_with_an_absurd_ttl_is_expired_and_collected_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let id = "f".repeat(64);
        // Encoded as a TTL of i64::MAX seconds on the wire.
        let absurd = meta_of(&id, 2, Duration::from_secs(i64::MAX as u64));
        put(dir.path(), &absurd.encode(), &id, b"xy");
        let store = Store::open(dir.path()).unwrap();
        assert!(store.list().is_empty());
        assert!(matches!(store.get(&id), Err(StoreError::NotFound(_))));
        assert_eq!(store.collect_expired(), 1);
    }

    /// Stores `content` as `uid` would through the server.
    fn store_as(store: &Store, content: &'static [u8], uid: u32) -> TaskMeta {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let memory = TransferMemory::new(dfcache_budget::MemoryBudget::new(64 << 20));
            let share = memory
                .budget()
                .acquire(memory.import_share(None, true))
                .await;
            let params = WriteParams {
                importer: Some(uid),
                ..WriteParams::default()
            };
            let mut writer = store.begin_write(params, &memory, share).unwrap();
            writer.write(Bytes::from_static(content)).await.unwrap();
            writer.finish().await.unwrap()
        })
    }

    #[test]
    fn a_task_records_its_importers_and_only_they_or_the_privileged_delete_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = store_as(&store, b"shared", 1000).id;
        assert_eq!(store_as(&store, b"shared", 1001).importers, [1000, 1001]);
        assert_eq!(store_as(&store, b"shared", 1000).importers, [1000, 1001]);

        let err = store.delete(&id, Deleter::Importer(1002)).unwrap_err();
        assert!(
            matches!(err, StoreError::NotAnImporter { uid: 1002, .. }),
            "{err}"
        );
        assert!(store.get(&id).is_ok());
        // Kept across a restart.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.get(&id).unwrap().importers, [1000, 1001]);
        store.delete(&id, Deleter::Importer(1001)).unwrap();
        assert!(matches!(store.get(&id), Err(StoreError::NotFound(_))));

        let other = store_as(&store, b"other", 1000).id;
        store.delete(&other, Deleter::Privileged).unwrap();
        assert!(store.list().is_empty());
    }

    #[test]
    fn importers_past_the_limit_are_not_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for uid in 0..MAX_IMPORTERS as u32 + 5 {
            store_as(&store, b"popular", 2000 + uid);
        }
        let meta = store.list().pop().unwrap();
        assert_eq!(meta.importers.len(), MAX_IMPORTERS);
        assert_eq!(
            meta.importers.last(),
            Some(&(2000 + MAX_IMPORTERS as u32 - 1))
        );
    }

    #[test]
    fn a_second_open_of_a_store_in_use_fails_naming_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path())
            .err()
            .expect("second open succeeded");
        let pid = std::process::id();
        assert!(
            matches!(err, StoreError::InUse { pid: Some(p), .. } if p == pid),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("process {pid}")), "{err}");
        drop(first);
        Store::open(dir.path()).unwrap();
    }
}
