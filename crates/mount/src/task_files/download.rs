//! One whole-task download, run to its end on the runtime: linked (the
//! daemon hard-links its content file into the spool and reports pieces)
//! or with content (pieces arrive over the socket and are written here).
//!
//! A linked download first asks whether the daemon holds the whole task
//! (`StatLocalPersistentCacheTask`): an open waits for such a task to
//! land, and the download keeps the daemon's copy marked as it was
//! (persistent or not), since a released dfdaemon marks its copy anew at
//! every download.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::Download;
use crate::daemon::{ClientError, DaemonClient, DownloadedPiece};
use crate::error::Errno;
use crate::read::geometry::TaskGeometry;
use dfcache_client::mapping::PathMapper;

/// Names of download files: `<prefix><pid>-<n>`, so the files of a mount
/// that died are recognised (and removed) by the next one.
pub const DOWNLOAD_FILE_PREFIX: &str = ".dfcache-download-";

static NEXT_FILE: AtomicU64 = AtomicU64::new(0);

/// The pid in the name of a download file, if `name` is one.
pub fn is_download_file_of(name: &str) -> Option<u32> {
    name.strip_prefix(DOWNLOAD_FILE_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

pub enum Way {
    /// Ask the daemon to link its file into the spool, which it sees
    /// through this mapping.
    Linked(PathMapper),
    Content,
}

pub struct Job {
    pub client: Arc<dyn DaemonClient>,
    pub dir: PathBuf,
    /// Weak: evicting the download drops it (and aborts this job).
    pub download: Weak<Download>,
    pub task: TaskGeometry,
    /// Told when the job ends, however it ends.
    pub ended: Arc<Notify>,
}

/// Why a linked download did not happen.
enum Failure {
    /// The daemon cannot link into the spool: use content instead.
    CannotLink(ClientError),
    Failed(ClientError),
}

impl Job {
    pub async fn run(self, way: Way, link_failed: Arc<AtomicBool>) {
        self.finish(way, link_failed).await;
        self.ended.notify_one();
    }

    async fn finish(&self, way: Way, link_failed: Arc<AtomicBool>) {
        let result = match way {
            Way::Linked(mapper) => match self.linked(&mapper).await {
                Ok(()) => Ok(()),
                Err(Failure::Failed(e)) => Err(e),
                Err(Failure::CannotLink(e)) => {
                    if !link_failed.swap(true, Ordering::Relaxed) {
                        warn!(
                            error = %e,
                            spool = %self.dir.display(),
                            "the daemon cannot hard-link its task files into the spool; \
                             whole-task downloads carry piece content over the socket from now on"
                        );
                    }
                    // Content crosses the socket: no open waits for it.
                    self.held_by_daemon(false);
                    self.content().await
                }
            },
            Way::Content => {
                self.held_by_daemon(false);
                self.content().await
            }
        };
        match result {
            Ok(()) => info!("whole task downloaded"),
            Err(err) => {
                // Every read waiting on it fails with this, cause included.
                debug!(error = %err, "whole-task download failed");
                if let Some(download) = self.download.upgrade() {
                    let errno = Errno::from(&err);
                    download
                        .progress
                        .send_modify(|landed| landed.failed = Some(errno));
                }
            }
        }
    }

    /// Records whether the daemon held the whole task before this download.
    fn held_by_daemon(&self, held: bool) {
        if let Some(download) = self.download.upgrade() {
            download
                .progress
                .send_modify(|landed| landed.daemon_held = Some(held));
        }
    }

    /// The daemon's copy: whether it is whole, and how it is marked. A
    /// daemon that cannot say is taken to hold none (the download fetches
    /// what it lacks either way).
    async fn daemon_copy(&self) -> (bool, bool) {
        match self.client.stat_local(&self.task.id).await {
            Ok(Some(copy)) => (copy.complete, copy.persistent),
            Ok(None) => (false, false),
            Err(e) => {
                debug!(error = %e, "cannot ask whether the daemon holds the task");
                (false, false)
            }
        }
    }

    /// The daemon links its content file to a name in the spool; the file
    /// is opened read-only (the mount never writes the daemon's file) and
    /// the name removed at once.
    async fn linked(&self, mapper: &PathMapper) -> Result<(), Failure> {
        let name = DownloadName::new(&self.dir);
        let daemon_path = daemon_path(&self.dir, name.file_name(), mapper)
            .map_err(|e| Failure::CannotLink(ClientError::io("map the spool", e)))?;
        let (held, persistent) = self.daemon_copy().await;
        self.held_by_daemon(held);
        let mut pieces = self
            .client
            .download_linked(&self.task.id, &daemon_path, persistent)
            .await
            .map_err(cannot_link_or_failed)?;
        let mut opened = false;
        loop {
            let piece = match pieces.next_piece().await {
                Ok(Some(piece)) => piece,
                Ok(None) => break,
                Err(e) if !opened => return Err(cannot_link_or_failed(e)),
                Err(e) => return Err(Failure::Failed(e)),
            };
            if !opened {
                let file = File::open(name.path()).map_err(|e| {
                    Failure::CannotLink(ClientError::io(
                        format!(
                            "open {} (the daemon reported a piece but linked no file there)",
                            name.path().display()
                        ),
                        e,
                    ))
                })?;
                name.remove();
                advise_sequential(&file);
                let Some(download) = self.download.upgrade() else {
                    return Ok(());
                };
                let _ = download.file.set(Arc::new(file));
                opened = true;
            }
            let index = self.check(&piece).map_err(Failure::Failed)?;
            if !self.landed(index) {
                return Ok(());
            }
        }
        self.check_complete().map_err(Failure::Failed)
    }

    /// Every piece's content over the socket, written by offset into a
    /// file of our own (unlinked at once).
    async fn content(&self) -> Result<(), ClientError> {
        let name = DownloadName::new(&self.dir);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(name.path())
            .map_err(|e| ClientError::io(format!("create {}", name.path().display()), e))?;
        name.remove();
        let file = Arc::new(file);
        match self.download.upgrade() {
            Some(download) => {
                let _ = download.file.set(file.clone());
            }
            None => return Ok(()),
        }
        let mut pieces = self.client.download(&self.task.id).await?;
        while let Some(piece) = pieces.next_piece().await? {
            let index = self.check(&piece)?;
            let content = piece.content.ok_or_else(|| {
                ClientError::Protocol(format!("piece {} came without its content", piece.number))
            })?;
            if content.len() as u64 != piece.length {
                return Err(self.mismatch(piece.offset, content.len() as u64));
            }
            let file = file.clone();
            let offset = piece.offset;
            dfcache_metrics::mount().spool_written(piece.length);
            tokio::task::spawn_blocking(move || file.write_all_at(&content, offset))
                .await
                .map_err(|e| ClientError::io("write a downloaded piece", std::io::Error::other(e)))?
                .map_err(|e| ClientError::io("write a downloaded piece", e))?;
            if !self.landed(index) {
                return Ok(());
            }
        }
        self.check_complete()
    }

    /// The piece's index, if it is one of the task's pieces exactly.
    fn check(&self, piece: &DownloadedPiece) -> Result<u64, ClientError> {
        let task = &self.task;
        let index = piece.offset / task.piece_length.max(1);
        let (expected_offset, expected_len) = task.piece_range(index);
        if index >= task.piece_count()
            || piece.offset != expected_offset
            || piece.length != expected_len
        {
            return Err(self.mismatch(piece.offset, piece.length));
        }
        Ok(index)
    }

    fn mismatch(&self, offset: u64, len: u64) -> ClientError {
        ClientError::Protocol(format!(
            "piece at {offset} of {len} bytes does not match the task's pieces of {}",
            self.task.piece_length
        ))
    }

    /// Marks piece `index` landed; false when the download was evicted.
    fn landed(&self, index: u64) -> bool {
        match self.download.upgrade() {
            Some(download) => {
                download
                    .progress
                    .send_modify(|landed| landed.pieces[index as usize] = true);
                true
            }
            None => false,
        }
    }

    fn check_complete(&self) -> Result<(), ClientError> {
        let complete = self
            .download
            .upgrade()
            .is_none_or(|d| d.progress.borrow().complete());
        if complete {
            Ok(())
        } else {
            Err(ClientError::Protocol(
                "the download ended before every piece arrived".into(),
            ))
        }
    }
}

/// Reads of a download come in order, 1 MiB at a time, mostly: a larger
/// read-ahead on the file lets the disk stay ahead of them.
fn advise_sequential(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor; the advice changes no data.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
}

/// A linked download the daemon refused or could not do is retried with
/// content; a missing task, a daemon that is down or silent, is an answer.
fn cannot_link_or_failed(e: ClientError) -> Failure {
    match e {
        ClientError::NotFound(_)
        | ClientError::Unavailable { .. }
        | ClientError::ConnectionLost { .. }
        | ClientError::TimedOut { .. }
        | ClientError::NoSpace { .. } => Failure::Failed(e),
        _ => Failure::CannotLink(e),
    }
}

/// The spool file `name` as the daemon sees it.
fn daemon_path(dir: &Path, name: &str, mapper: &PathMapper) -> std::io::Result<PathBuf> {
    let real = std::fs::canonicalize(dir)?.join(name);
    mapper
        .to_host(&real)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))
}

/// A download file's name in the spool, removed when dropped (if still
/// there): a name never outlives its download.
struct DownloadName {
    path: PathBuf,
}

impl DownloadName {
    fn new(dir: &Path) -> Self {
        let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
        Self {
            path: dir.join(format!("{DOWNLOAD_FILE_PREFIX}{}-{n}", std::process::id())),
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn file_name(&self) -> &str {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    }

    fn remove(&self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "cannot remove a download file")
            }
        }
    }
}

impl Drop for DownloadName {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_file_names_carry_the_pid_of_their_mount() {
        let dir = tempfile::tempdir().unwrap();
        let name = DownloadName::new(dir.path());
        assert_eq!(
            is_download_file_of(name.file_name()),
            Some(std::process::id())
        );
        assert_eq!(is_download_file_of("import-12-3.spool"), None);
        assert_eq!(is_download_file_of(".dfcache-download-x-1"), None);
    }

    #[test]
    fn a_download_name_is_removed_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = {
            let name = DownloadName::new(dir.path());
            std::fs::write(name.path(), b"linked").unwrap();
            name.path().to_path_buf()
        };
        assert!(!path.exists());
    }
}
