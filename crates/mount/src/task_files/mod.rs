//! Reads of task content from a daemon without range reads (today's
//! released dfdaemon): the whole task is downloaded once into a local
//! file, and each read is answered as soon as the pieces covering it have
//! landed, not after the whole download.
//!
//! The download comes one of two ways (`download.rs`):
//! - linked: the daemon hard-links its own content file into the spool and
//!   reports pieces as they land in it; no piece content crosses the
//!   socket, and a finished download is the daemon's file itself, which
//!   the kernel can read directly (passthrough);
//! - content: every piece arrives with its content and is written here by
//!   offset (the daemon cannot link into the spool: another file system,
//!   or no spool).
//!
//! Pieces arrive in whatever order the P2P download delivers them, so a
//! per-piece map says what has landed. Files are unlinked as soon as they
//! are open: they live as long as a download or a reader holds them, and
//! a name left by a crash is removed at the next start (its pid is in it).
//! Their total size is bounded: the least recently used task is evicted
//! whole (a download being waited on lives until its readers are done).
//!
//! A task the daemon already holds whole is linked and complete within a
//! round trip or two: `open` waits for that, so the first open of such a
//! task already finds a local file (and passes through to it). The tree
//! prefetcher (`prefetch.rs`) starts downloads of its own here, into room
//! no program needs.

mod download;
pub mod prefetch;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use lru::LruCache;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, Instrument};

use crate::daemon::DaemonClient;
use crate::error::{Errno, FsError, FsResult};
use crate::read::geometry::TaskGeometry;
use dfcache_client::mapping::PathMapper;

pub use download::{is_download_file_of, DOWNLOAD_FILE_PREFIX};
pub use prefetch::Prefetch;

/// Downloads of whole tasks into local files, at most `capacity` bytes.
pub struct TaskFiles {
    client: Arc<dyn DaemonClient>,
    dir: PathBuf,
    capacity: u64,
    /// Longest wait for a download to make progress.
    stall_timeout: Duration,
    /// How the daemon sees `dir`, when it may link its files into it.
    link: Option<PathMapper>,
    /// Set once the daemon failed to link: later downloads carry content.
    link_failed: Arc<AtomicBool>,
    state: Mutex<State>,
    /// Programs waiting for pieces that have not landed yet.
    waiting: AtomicUsize,
    /// Told when a download ends, a program stops waiting, or a program
    /// uses a prefetched download: what the prefetcher waits for.
    changed: Arc<Notify>,
}

struct State {
    downloads: LruCache<Arc<str>, Arc<Download>>,
    bytes: u64,
}

/// One task's download: its file and what has landed in it.
struct Download {
    /// Set before the first piece is marked landed.
    file: OnceLock<Arc<File>>,
    geometry: TaskGeometry,
    progress: watch::Sender<Landed>,
    task: OnceLock<tokio::task::AbortHandle>,
    /// Started by the prefetcher, not by a program.
    prefetched: bool,
    /// A program opened or read it.
    used: AtomicBool,
    /// Open handles reading it.
    readers: AtomicUsize,
}

#[derive(Debug, Clone)]
struct Landed {
    pieces: Vec<bool>,
    /// Set when the download failed; readers of missing pieces get it.
    failed: Option<Errno>,
    /// Whether the daemon held the whole task before this download
    /// (None: not known yet). A held task lands at once.
    daemon_held: Option<bool>,
}

impl Landed {
    fn covers(&self, first: u64, last: u64) -> bool {
        (first..=last).all(|i| self.pieces.get(i as usize).copied().unwrap_or(false))
    }

    fn complete(&self) -> bool {
        self.pieces.iter().all(|&p| p)
    }

    /// Whether an open has nothing more to wait for: the download failed,
    /// the daemon did not hold the task, or it did and it has landed.
    fn settled(&self) -> bool {
        self.failed.is_some()
            || match self.daemon_held {
                Some(true) => self.complete(),
                Some(false) => true,
                None => false,
            }
    }
}

impl Download {
    fn in_flight(&self) -> bool {
        let landed = self.progress.borrow();
        landed.failed.is_none() && !landed.complete()
    }

    /// Failed, or complete, used by a program and open in none: room a
    /// prefetch may take.
    fn done_with(&self) -> bool {
        let landed = self.progress.borrow();
        landed.failed.is_some()
            || (landed.complete()
                && self.used.load(Ordering::Relaxed)
                && self.readers.load(Ordering::Relaxed) == 0)
    }
}

/// A download held in use by an open handle, until the handle is released.
pub struct Reading {
    download: std::sync::Weak<Download>,
    changed: Arc<Notify>,
}

impl Drop for Reading {
    fn drop(&mut self) {
        if let Some(download) = self.download.upgrade() {
            if download.readers.fetch_sub(1, Ordering::Relaxed) == 1 {
                // Perhaps room for a prefetch now.
                self.changed.notify_one();
            }
        }
    }
}

/// Who wants a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// A program opened or read the task.
    Program,
    /// The tree prefetcher.
    Prefetch,
}

impl Drop for Download {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

impl TaskFiles {
    /// Downloads into `dir`; with `link`, the mapping of `dir` to the
    /// daemon's view, the daemon is asked to hard-link its files there.
    pub fn new(
        client: Arc<dyn DaemonClient>,
        dir: PathBuf,
        link: Option<PathMapper>,
        capacity: u64,
        stall_timeout: Duration,
    ) -> Self {
        Self {
            client,
            dir,
            capacity,
            stall_timeout,
            link,
            link_failed: Arc::default(),
            state: Mutex::new(State {
                downloads: LruCache::unbounded(),
                bytes: 0,
            }),
            waiting: AtomicUsize::new(0),
            changed: Arc::new(Notify::new()),
        }
    }

    /// Readies the task for a program that opened it: its download starts
    /// (if it has not), and when the daemon holds the whole task this
    /// waits, at most the stall timeout, until it has landed, so the open
    /// finds a local file. Errors are the reads' to report. The download
    /// is in use while the returned `Reading` lives.
    pub async fn open(&self, task: &TaskGeometry) -> Option<Reading> {
        if task.content_length == 0 {
            return None;
        }
        let download = match self.get_or_start(task, Want::Program) {
            Ok(download) => download,
            Err(e) => {
                debug!(task_id = %task.id, error = %e, "no download at open");
                return None;
            }
        };
        download.readers.fetch_add(1, Ordering::Relaxed);
        let reading = Reading {
            download: Arc::downgrade(&download),
            changed: self.changed.clone(),
        };
        let mut rx = download.progress.subscribe();
        let settled = async {
            loop {
                if rx.borrow_and_update().settled() {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(self.stall_timeout, settled)
            .await
            .is_err()
        {
            debug!(task_id = %task.id, "the download was not settled at open; reads wait for it");
        }
        Some(reading)
    }

    /// The bytes `offset..end` of `task`, once the pieces holding them
    /// have landed.
    pub async fn read(&self, task: &TaskGeometry, offset: u64, end: u64) -> FsResult<Bytes> {
        let piece_length = task.piece_length.max(1);
        let (first, last) = (offset / piece_length, (end - 1) / piece_length);
        let download = self.get_or_start(task, Want::Program)?;
        self.wait_for(&download, first, last).await?;
        read_at(download, offset, end - offset).await
    }

    /// The file of a task whose download is complete, if there is one:
    /// every byte of it can be read without asking the daemon.
    pub fn complete_file(&self, task_id: &str) -> Option<Arc<File>> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let download = state.downloads.peek(task_id)?;
        if !download.progress.borrow().complete() {
            return None;
        }
        download.file.get().cloned()
    }

    /// Waits until pieces `first..=last` landed. Fails when the download
    /// failed or made no progress for `stall_timeout`.
    async fn wait_for(&self, download: &Download, first: u64, last: u64) -> FsResult<()> {
        let mut rx = download.progress.subscribe();
        if rx.borrow_and_update().covers(first, last) {
            return Ok(());
        }
        let _waiting = Waiting::new(self);
        loop {
            {
                let landed = rx.borrow_and_update();
                if landed.covers(first, last) {
                    return Ok(());
                }
                if let Some(errno) = &landed.failed {
                    return Err(errno.clone());
                }
            }
            match tokio::time::timeout(self.stall_timeout, rx.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives in `download`, which we hold.
                Ok(Err(_)) => return Err(Errno::EIO),
                Err(_) => {
                    return Err(Errno::ETIMEDOUT.because(std::io::Error::other(format!(
                        "the download of task {} made no progress for {:?}",
                        download.geometry.id, self.stall_timeout
                    ))))
                }
            }
        }
    }

    fn get_or_start(&self, task: &TaskGeometry, want: Want) -> FsResult<Arc<Download>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(download) = state.downloads.get(&task.id) {
            let failed = download.progress.borrow().failed.is_some();
            if !failed {
                let download = download.clone();
                drop(state);
                self.used(&download);
                return Ok(download);
            }
            // A failed download is tried again by the next reader.
            if let Some(old) = state.downloads.pop(&task.id) {
                state.bytes -= old.geometry.content_length;
            }
        }
        if task.content_length > self.capacity {
            return Err(Errno::EFBIG.because(std::io::Error::other(format!(
                "task {} ({} bytes) is larger than --task-cache-size ({}); it cannot be read from this daemon",
                task.id, task.content_length, self.capacity
            ))));
        }
        while state.bytes + task.content_length > self.capacity {
            match state.downloads.pop_lru() {
                Some((id, old)) => {
                    info!(task_id = %id, "evicting downloaded task");
                    state.bytes -= old.geometry.content_length;
                }
                None => break,
            }
        }
        let download = self.start(task, want);
        state.bytes += task.content_length;
        state.downloads.put(task.id.clone(), download.clone());
        dfcache_metrics::mount().task_downloads_hold(state.bytes);
        Ok(download)
    }

    /// A program opened or read `download`: a prefetched one is counted as
    /// used once, and the prefetcher told (once complete, it is room).
    fn used(&self, download: &Download) {
        if !download.used.swap(true, Ordering::Relaxed) && download.prefetched {
            dfcache_metrics::mount().tree_prefetch_used(download.geometry.content_length);
            self.changed.notify_one();
        }
    }

    fn start(&self, task: &TaskGeometry, want: Want) -> Arc<Download> {
        let (progress, _) = watch::channel(Landed {
            pieces: vec![false; task.piece_count() as usize],
            failed: None,
            daemon_held: None,
        });
        let download = Arc::new(Download {
            file: OnceLock::new(),
            geometry: task.clone(),
            progress,
            task: OnceLock::new(),
            prefetched: want == Want::Prefetch,
            used: AtomicBool::new(want == Want::Program),
            readers: AtomicUsize::new(0),
        });
        let way = match &self.link {
            Some(mapper) if !self.link_failed.load(Ordering::Relaxed) => {
                download::Way::Linked(mapper.clone())
            }
            _ => download::Way::Content,
        };
        let job = download::Job {
            client: self.client.clone(),
            dir: self.dir.clone(),
            download: Arc::downgrade(&download),
            task: task.clone(),
            ended: self.changed.clone(),
        };
        let span =
            tracing::info_span!("download", task_id = %task.id, prefetch = download.prefetched);
        dfcache_metrics::mount().task_download_started();
        let handle = tokio::spawn(job.run(way, self.link_failed.clone()).instrument(span));
        let _ = download.task.set(handle.abort_handle());
        download
    }
}

/// A program waiting for pieces, counted while it waits; the prefetcher
/// is told when it stops.
struct Waiting<'a>(&'a TaskFiles);

impl<'a> Waiting<'a> {
    fn new(files: &'a TaskFiles) -> Self {
        files.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(files)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.0.waiting.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.changed.notify_one();
        }
    }
}

/// Bytes past a read that the disk is asked to fetch before they are read:
/// requests reach the mount one at a time, 1 MiB each, and a cold pread
/// of each would leave the disk idle in between.
const READ_AHEAD: i64 = 8 << 20;

/// Starts the disk on the bytes after `from` (asynchronously: the page
/// cache fills while the current read is answered).
fn read_ahead_of(file: &File, from: u64) {
    use std::os::fd::AsRawFd;
    let Ok(from) = i64::try_from(from) else {
        return;
    };
    // SAFETY: a valid descriptor; the advice changes no data.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            from,
            READ_AHEAD,
            libc::POSIX_FADV_WILLNEED,
        )
    };
}

async fn read_at(download: Arc<Download>, offset: u64, len: u64) -> FsResult<Bytes> {
    let file = download.file.get().cloned().ok_or_else(|| {
        FsError::caused_by(
            libc::EIO,
            std::io::Error::other("a piece landed before its file was open"),
        )
    })?;
    tokio::task::spawn_blocking(move || {
        read_ahead_of(&file, offset + len);
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, offset)
            .map(|()| Bytes::from(buf))
    })
    .await
    .map_err(|_| Errno::EIO)?
    .map_err(|e| FsError::caused_by(libc::EIO, e))
}
