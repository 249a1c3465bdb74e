//! Reads of task content from a daemon without range reads (today's
//! released dfdaemon): the whole task is downloaded once, as piece content
//! over the socket, into a local file, and each read is answered as soon
//! as the pieces covering it have landed, not after the whole download.
//!
//! Pieces arrive in whatever order the P2P download delivers them, so the
//! file is written by offset and a per-piece map says what has landed.
//! Files are unlinked as soon as they are created: they live as long as a
//! download or a reader holds them, and a crash leaves nothing behind.
//! Their total size is bounded: the least recently used task is evicted
//! whole (a download being waited on lives until its readers are done).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use lru::LruCache;
use tokio::sync::watch;
use tracing::{debug, info, Instrument};

use crate::fs::daemon::{ClientError, DaemonClient};
use crate::fs::error::{Errno, FsError, FsResult};
use crate::fs::geometry::TaskGeometry;

static NEXT_FILE: AtomicU64 = AtomicU64::new(0);

/// Downloads of whole tasks into local files, at most `capacity` bytes.
pub struct TaskFiles {
    client: Arc<dyn DaemonClient>,
    dir: PathBuf,
    capacity: u64,
    /// Longest wait for a download to make progress.
    stall_timeout: Duration,
    state: Mutex<State>,
}

struct State {
    downloads: LruCache<Arc<str>, Arc<Download>>,
    bytes: u64,
}

/// One task's download: its file and what has landed in it.
struct Download {
    file: File,
    geometry: TaskGeometry,
    progress: watch::Sender<Landed>,
    task: tokio::task::AbortHandle,
}

#[derive(Debug, Clone)]
struct Landed {
    pieces: Vec<bool>,
    /// Set when the download failed; readers of missing pieces get it.
    failed: Option<Errno>,
}

impl Landed {
    fn covers(&self, first: u64, last: u64) -> bool {
        (first..=last).all(|i| self.pieces.get(i as usize).copied().unwrap_or(false))
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TaskFiles {
    pub fn new(
        client: Arc<dyn DaemonClient>,
        dir: PathBuf,
        capacity: u64,
        stall_timeout: Duration,
    ) -> Self {
        Self {
            client,
            dir,
            capacity,
            stall_timeout,
            state: Mutex::new(State {
                downloads: LruCache::unbounded(),
                bytes: 0,
            }),
        }
    }

    /// The bytes `offset..end` of `task`, once the pieces holding them
    /// have landed.
    pub async fn read(&self, task: &TaskGeometry, offset: u64, end: u64) -> FsResult<Bytes> {
        let piece_length = task.piece_length.max(1);
        let (first, last) = (offset / piece_length, (end - 1) / piece_length);
        let download = self.get_or_start(task)?;
        self.wait_for(&download, first, last).await?;
        read_at(download, offset, end - offset).await
    }

    /// Waits until pieces `first..=last` landed. Fails when the download
    /// failed or made no progress for `stall_timeout`.
    async fn wait_for(&self, download: &Download, first: u64, last: u64) -> FsResult<()> {
        let mut rx = download.progress.subscribe();
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

    fn get_or_start(&self, task: &TaskGeometry) -> FsResult<Arc<Download>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(download) = state.downloads.get(&task.id) {
            let failed = download.progress.borrow().failed.is_some();
            if !failed {
                return Ok(download.clone());
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
        let download = self.start(task)?;
        state.bytes += task.content_length;
        state.downloads.put(task.id.clone(), download.clone());
        Ok(download)
    }

    fn start(&self, task: &TaskGeometry) -> FsResult<Arc<Download>> {
        let file = self
            .create_file()
            .map_err(|e| FsError::caused_by(libc::EIO, e))?;
        let pieces = vec![false; task.piece_count() as usize];
        let (progress, _) = watch::channel(Landed {
            pieces,
            failed: None,
        });
        let file_for_task = file.try_clone().map_err(|_| Errno::EIO)?;
        let span = tracing::info_span!("download", task_id = %task.id);
        let handle = tokio::spawn(
            download(
                self.client.clone(),
                task.clone(),
                file_for_task,
                progress.clone(),
            )
            .instrument(span),
        );
        Ok(Arc::new(Download {
            file,
            geometry: task.clone(),
            progress,
            task: handle.abort_handle(),
        }))
    }

    /// A new file in the directory, unlinked at once.
    fn create_file(&self) -> std::io::Result<File> {
        let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join(format!(".dfcache-download-{}-{n}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        std::fs::remove_file(&path)?;
        Ok(file)
    }
}

/// Runs one download to its end, recording each piece as it lands.
async fn download(
    client: Arc<dyn DaemonClient>,
    task: TaskGeometry,
    file: File,
    progress: watch::Sender<Landed>,
) {
    let file = Arc::new(file);
    let result = receive_pieces(client.as_ref(), &task, &file, &progress).await;
    match result {
        Ok(()) => info!("whole task downloaded"),
        Err(err) => {
            // Every read waiting on it fails with this, cause included.
            let errno = Errno::from(&err);
            debug!(error = %err, "whole-task download failed");
            progress.send_modify(|landed| landed.failed = Some(errno));
        }
    }
}

async fn receive_pieces(
    client: &dyn DaemonClient,
    task: &TaskGeometry,
    file: &Arc<File>,
    progress: &watch::Sender<Landed>,
) -> Result<(), ClientError> {
    let mut stream = client.download(&task.id).await?;
    while let Some(piece) = stream.next_piece().await? {
        let content = piece.content.ok_or_else(|| {
            ClientError::Protocol(format!("piece {} came without its content", piece.number))
        })?;
        let index = piece.offset / task.piece_length.max(1);
        let (expected_offset, expected_len) = task.piece_range(index);
        if index >= task.piece_count()
            || piece.offset != expected_offset
            || content.len() as u64 != expected_len
        {
            return Err(ClientError::Protocol(format!(
                "piece at {} of {} bytes does not match the task's pieces of {}",
                piece.offset,
                content.len(),
                task.piece_length
            )));
        }
        let file = file.clone();
        let offset = piece.offset;
        tokio::task::spawn_blocking(move || file.write_all_at(&content, offset))
            .await
            .map_err(|e| ClientError::io("write a downloaded piece", std::io::Error::other(e)))?
            .map_err(|e| ClientError::io("write a downloaded piece", e))?;
        progress.send_modify(|landed| landed.pieces[index as usize] = true);
    }
    if !progress
        .borrow()
        .covers(0, task.piece_count().saturating_sub(1))
    {
        return Err(ClientError::Protocol(
            "the download ended before every piece arrived".into(),
        ));
    }
    Ok(())
}

async fn read_at(download: Arc<Download>, offset: u64, len: u64) -> FsResult<Bytes> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len as usize];
        download
            .file
            .read_exact_at(&mut buf, offset)
            .map(|()| Bytes::from(buf))
    })
    .await
    .map_err(|_| Errno::EIO)?
    .map_err(|e| FsError::caused_by(libc::EIO, e))
}
