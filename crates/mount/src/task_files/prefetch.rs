//! Trees that fetch themselves: when a program first opens a file of a
//! tree on a daemon without range reads, the tree's other files are
//! queued here (in path order, from the file after the one opened) and
//! downloaded in the background, so a program that walks the model finds
//! each next file already local.
//!
//! Prefetching comes after what programs wait for:
//! - at most [`PREFETCHES_AT_ONCE`] prefetched downloads run at a time;
//! - none starts while a program waits for a piece or a download a
//!   program opened is under way (the daemon's bandwidth goes to what
//!   programs want; prefetches already running go on);
//! - a prefetch takes only room in `--task-cache-size` that no program
//!   needs: free space, or downloads that are complete and were read. A
//!   file that does not fit waits at the head of the queue until a program
//!   has read enough of what came before it.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tracing::{debug, Instrument};

use super::{TaskFiles, Want};
use crate::daemon::DaemonClient;
use crate::read::geometry::TaskGeometry;

/// Prefetched downloads running at once. Two keep one file landing while
/// the next starts (a released dfdaemon spends a scheduler round trip or
/// two before the first piece of a task moves); more split the daemon's
/// bandwidth between files a program will want one after the other.
pub const PREFETCHES_AT_ONCE: usize = 2;

/// A file of a tree to fetch ahead: its task and the size the manifest
/// gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub task_id: String,
    pub size: u64,
}

/// The queue of files to prefetch and the task that works it.
pub struct Prefetcher {
    shared: Arc<Shared>,
    worker: Mutex<Option<tokio::task::AbortHandle>>,
}

struct Shared {
    files: Arc<TaskFiles>,
    client: Arc<dyn DaemonClient>,
    queue: Mutex<VecDeque<Wanted>>,
    wake: Arc<Notify>,
}

impl Prefetcher {
    pub fn new(files: Arc<TaskFiles>, client: Arc<dyn DaemonClient>) -> Self {
        let wake = files.changed();
        Prefetcher {
            shared: Arc::new(Shared {
                files,
                client,
                queue: Mutex::new(VecDeque::new()),
                wake,
            }),
            worker: Mutex::new(None),
        }
    }

    /// Queues `wanted` (files already queued, and empty files, are left
    /// out) and makes sure the queue is being worked. Must be called on
    /// the runtime.
    pub fn enqueue(&self, wanted: Vec<Wanted>) {
        {
            let mut queue = self.shared.queue();
            let mut known: HashSet<String> = queue.iter().map(|w| w.task_id.clone()).collect();
            queue.extend(
                wanted
                    .into_iter()
                    .filter(|w| w.size > 0 && known.insert(w.task_id.clone())),
            );
            dfcache_metrics::mount().tree_prefetch_queued(queue.len() as u64);
        }
        let mut worker = self.worker.lock().unwrap_or_else(|p| p.into_inner());
        if worker.is_none() {
            let shared = self.shared.clone();
            let span = tracing::info_span!("tree_prefetch");
            *worker = Some(tokio::spawn(shared.run().instrument(span)).abort_handle());
        }
        self.shared.wake.notify_one();
    }

    /// Files waiting to be prefetched.
    pub fn queued(&self) -> usize {
        self.shared.queue().len()
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            worker.abort();
        }
    }
}

impl Shared {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Wanted>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts what may start, then sleeps until something changes (a
    /// download ended, a program stopped waiting or used a prefetched
    /// file, more files were queued).
    async fn run(self: Arc<Self>) {
        loop {
            self.start_what_may_start().await;
            self.wake.notified().await;
        }
    }

    async fn start_what_may_start(&self) {
        loop {
            if !self.files.may_prefetch(PREFETCHES_AT_ONCE) {
                return;
            }
            let Some(next) = self.queue().pop_front() else {
                return;
            };
            if self.files.has(&next.task_id) {
                continue;
            }
            // The piece length is the daemon's to say.
            let info = match self.client.stat(&next.task_id).await {
                Ok(info) => info,
                Err(e) => {
                    debug!(task_id = %next.task_id, error = %e, "not prefetched: no stat");
                    continue;
                }
            };
            if info.content_length != next.size {
                // Its open says why (the manifest and the task disagree).
                debug!(task_id = %next.task_id, "not prefetched: not the size the manifest gives");
                continue;
            }
            let geometry = TaskGeometry::new(&next.task_id, info.content_length, info.piece_length);
            match self.files.prefetch(&geometry) {
                Prefetch::Started => debug!(task_id = %next.task_id, "prefetching"),
                Prefetch::AlreadyThere => {}
                Prefetch::TooLarge => {
                    debug!(task_id = %next.task_id, "not prefetched: larger than --task-cache-size")
                }
                Prefetch::NoRoom => {
                    self.queue().push_front(next);
                    return;
                }
            }
            dfcache_metrics::mount().tree_prefetch_queued(self.queue().len() as u64);
        }
    }
}

/// What [`TaskFiles::prefetch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefetch {
    Started,
    /// The task is downloaded or being downloaded already.
    AlreadyThere,
    /// Larger than --task-cache-size: never downloaded ahead.
    TooLarge,
    /// No room without evicting what a program may still need.
    NoRoom,
}

impl TaskFiles {
    /// Starts a download for the tree prefetcher, only into room no
    /// program needs: free space, or downloads that are complete and a
    /// program has read (least recently used first). It evicts nothing
    /// when that is not enough.
    pub fn prefetch(&self, task: &TaskGeometry) -> Prefetch {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(download) = state.downloads.peek(&task.id) {
            if download.progress.borrow().failed.is_none() {
                return Prefetch::AlreadyThere;
            }
        }
        if task.content_length > self.capacity {
            return Prefetch::TooLarge;
        }
        let need = (state.bytes + task.content_length).saturating_sub(self.capacity);
        if need > 0 {
            let mut victims = vec![];
            let mut freed = 0;
            // Least recently used first.
            for (id, download) in state.downloads.iter().rev() {
                if freed >= need {
                    break;
                }
                if download.done_with() {
                    victims.push(id.clone());
                    freed += download.geometry.content_length;
                }
            }
            if freed < need {
                return Prefetch::NoRoom;
            }
            for id in victims {
                if let Some(old) = state.downloads.pop(&id) {
                    debug!(task_id = %id, "evicting a downloaded task to prefetch another");
                    state.bytes -= old.geometry.content_length;
                }
            }
        }
        let download = self.start(task, Want::Prefetch);
        state.bytes += task.content_length;
        state.downloads.put(task.id.clone(), download);
        dfcache_metrics::mount().task_downloads_hold(state.bytes);
        dfcache_metrics::mount().tree_prefetch_started(task.content_length);
        Prefetch::Started
    }

    /// Whether a download of the task is under way or done.
    pub fn has(&self, task_id: &str) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .downloads
            .peek(task_id)
            .is_some_and(|d| d.progress.borrow().failed.is_none())
    }

    /// Whether the prefetcher may start a download now: no program waits
    /// for a piece, no download a program uses is under way, and fewer
    /// than `at_once` prefetched ones are.
    pub fn may_prefetch(&self, at_once: usize) -> bool {
        if self.waiting.load(Ordering::Relaxed) > 0 {
            return false;
        }
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut prefetching = 0;
        for (_, download) in state.downloads.iter() {
            if !download.in_flight() {
                continue;
            }
            if download.used.load(Ordering::Relaxed) {
                return false;
            }
            prefetching += 1;
        }
        prefetching < at_once
    }

    /// What the prefetcher waits on.
    pub fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }
}
