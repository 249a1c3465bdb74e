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
pub mod piece;
mod range;
pub mod task_id;
mod writer;

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tracing::{debug, info, warn};

use crate::direct_io::BlockPool;
pub use error::{StoreError, StoreResult};
pub use meta::{duration_from_proto, duration_to_proto, TaskMeta};
pub use range::RangeReader;
pub use writer::{TaskWriter, WriteParams, DEFAULT_TTL};

const DATA_SUFFIX: &str = ".data";
const META_SUFFIX: &str = ".meta";
/// Size of the reads that feed a write from a file on disk.
const IMPORT_READ_SIZE: usize = 1 << 20;

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
    /// Blocks for direct reads, shared by every range being served so a
    /// piece read reuses warm memory instead of zeroing a new block.
    read_blocks: BlockPool,
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
        let tasks = load_tasks(&tasks_dir)?;
        info!(dir = %dir.display(), tasks = tasks.len(), "opened task store");
        Ok(Self {
            inner: Arc::new(Inner {
                _lock: lock,
                tasks_dir,
                tmp_dir,
                tasks: RwLock::new(tasks),
                commit: Mutex::new(()),
                next_temp: AtomicU64::new(0),
                read_blocks: RangeReader::block_pool(),
            }),
        })
    }

    /// Every live (unexpired) task.
    pub fn list(&self) -> Vec<TaskMeta> {
        let now = SystemTime::now();
        let mut tasks: Vec<TaskMeta> = self
            .read_tasks()
            .values()
            .filter(|t| t.expires_at() > now)
            .cloned()
            .collect();
        tasks.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        tasks
    }

    pub fn get(&self, id: &str) -> StoreResult<TaskMeta> {
        self.read_tasks()
            .get(id)
            .filter(|t| t.expires_at() > SystemTime::now())
            .cloned()
            .ok_or_else(|| StoreError::NotFound(id.to_string()))
    }

    /// The task's metadata and its content file, opened for positional reads.
    pub fn open_content(&self, id: &str) -> StoreResult<(TaskMeta, Arc<File>)> {
        let meta = self.get(id)?;
        let path = self.data_path(id);
        match File::open(&path) {
            Ok(file) => Ok((meta, Arc::new(file))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::NotFound(id.to_string()))
            }
            Err(e) => Err(StoreError::io(format!("open {}", path.display()), e)),
        }
    }

    /// A reader of `offset..end` of a task opened with `open_content`.
    pub fn range_reader(&self, id: &str, file: Arc<File>, offset: u64, end: u64) -> RangeReader {
        let blocks = self.inner.read_blocks.clone();
        RangeReader::new(&self.data_path(id), file, offset, end, blocks)
    }

    /// Starts writing a new task; it exists only once `finish` returns.
    pub fn begin_write(&self, params: WriteParams) -> StoreResult<TaskWriter> {
        TaskWriter::start(self.clone(), params, self.temp_path("part"))
    }

    /// A fresh name in the temporary directory (emptied at start).
    fn temp_path(&self, suffix: &str) -> PathBuf {
        let n = self.inner.next_temp.fetch_add(1, Ordering::Relaxed);
        self.inner
            .tmp_dir
            .join(format!("{}-{n}.{suffix}", std::process::id()))
    }

    /// Imports a file the daemon can open itself (the legacy upload RPC).
    pub async fn import_path(&self, path: &Path, mut params: WriteParams) -> StoreResult<TaskMeta> {
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| StoreError::path(path, e))?;
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
        let mut writer = self.begin_write(params)?;
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

    pub fn delete(&self, id: &str) -> StoreResult<()> {
        let _guard = lock(&self.inner.commit);
        if self.write_tasks().remove(id).is_none() {
            return Err(StoreError::NotFound(id.to_string()));
        }
        self.remove_files(id);
        info!(task_id = id, "deleted task");
        Ok(())
    }

    /// Removes every task whose TTL ran out; returns how many.
    pub fn collect_expired(&self) -> usize {
        let _guard = lock(&self.inner.commit);
        let now = SystemTime::now();
        let expired: Vec<String> = self
            .read_tasks()
            .values()
            .filter(|t| t.expires_at() <= now)
            .map(|t| t.id.clone())
            .collect();
        for id in &expired {
            self.write_tasks().remove(id);
            self.remove_files(id);
            info!(task_id = %id, "collected expired task");
        }
        expired.len()
    }

    /// Runs `collect_expired` every `interval` until the runtime stops.
    pub fn spawn_gc(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            loop {
                ticker.tick().await;
                let store = store.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || store.collect_expired()).await {
                    warn!(error = %e, "task collection failed");
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
            self.write_meta(&meta)?;
            debug!(task_id = %meta.id, "content already stored; refreshed its metadata");
        } else {
            let data = self.data_path(&meta.id);
            if let Err(e) = std::fs::rename(temp, &data) {
                let _ = std::fs::remove_file(temp);
                return Err(StoreError::io(format!("rename into {}", data.display()), e));
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

/// Reads up to `len` bytes at `offset` without a shared seek pointer.
pub async fn read_at(file: Arc<File>, offset: u64, len: usize) -> std::io::Result<Bytes> {
    tokio::task::spawn_blocking(move || pread_full(&file, offset, len))
        .await
        .map_err(std::io::Error::other)?
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

fn lock(m: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
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

/// Loads every task with valid metadata and content of the recorded length;
/// removes the rest.
fn load_tasks(tasks_dir: &Path) -> StoreResult<HashMap<String, TaskMeta>> {
    let entries = std::fs::read_dir(tasks_dir)
        .map_err(|e| StoreError::io(format!("read {}", tasks_dir.display()), e))?;
    let mut tasks = HashMap::new();
    let mut data_files = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(DATA_SUFFIX) {
            data_files.push(path);
            continue;
        }
        let Some(id) = name.strip_suffix(META_SUFFIX) else {
            continue;
        };
        let loaded = std::fs::read(&path)
            .map_err(|e| StoreError::io(format!("read {}", path.display()), e))
            .and_then(|bytes| TaskMeta::decode(&bytes));
        let data_len =
            std::fs::metadata(tasks_dir.join(format!("{id}{DATA_SUFFIX}"))).map(|m| m.len());
        match (loaded, data_len) {
            (Ok(meta), Ok(len)) if meta.id == id && meta.content_length == len => {
                tasks.insert(meta.id.clone(), meta);
            }
            _ => {
                warn!(path = %path.display(), "dropping task with broken metadata or content");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    for path in data_files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let id = name.trim_end_matches(DATA_SUFFIX);
        if !tasks.contains_key(id) {
            warn!(path = %path.display(), "removing content without metadata");
            let _ = std::fs::remove_file(&path);
        }
    }
    Ok(tasks)
}
