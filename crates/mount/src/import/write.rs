//! The import side: create, write, close. close() returns only when the
//! daemon has acknowledged the task, and returns its error otherwise.
//!
//! close() and duplicated descriptors: the kernel sends FLUSH for every
//! close() of any descriptor of the file, and RELEASE after the last one.
//! The first close() *after data was written* commits the import and
//! returns its result; a close() before any data (a shell's `> file`
//! redirection closes its first descriptor after dup2) commits nothing.
//! A file closed without any data is committed, as an empty task, on its
//! last release. Writes through a duplicate after the commit fail with EIO.

use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tracing::{info, warn};

use crate::attr::Attr;
use crate::error::{Errno, FsError, FsResult};
use crate::filesystem::DfcacheFs;
use crate::handles::{OpenFile, Opened};
use crate::import::state::{Finished, ImportState, Opener, Spool, Stream};
use crate::inodes::{ImportEntry, ImportMeta, ImportNode, Node, IMPORT_INO};
use dfcache_wire::domain::CHUNK_SIZE;

static NEXT_SPOOL: AtomicU64 = AtomicU64::new(0);

impl DfcacheFs {
    /// Creates `import/<name>` and starts its import.
    pub async fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        exclusive: bool,
        uid: u32,
        gid: u32,
    ) -> FsResult<(Attr, Opened)> {
        self.import_dir(parent)?;
        if parent != IMPORT_INO {
            // Files at the top keep any name they had; inside a directory
            // they become entries of a tree.
            Self::check_tree_name(name)?;
        }
        if matches!(
            self.inodes().import_entry(parent, name),
            Some(ImportEntry::Dir(_))
        ) {
            return Err(Errno::EISDIR);
        }
        let existing = self.inodes().import(parent, name);
        if let Some(existing) = existing {
            if exclusive {
                return Err(Errno::EEXIST);
            }
            // Like open(O_TRUNC) of the existing file.
            let opened = self.open(existing.ino, true, true).await?;
            return Ok((self.import_attr(&existing).await, opened));
        }
        let state = self.start_import()?;
        dfcache_metrics::mount().import_started();
        let now = SystemTime::now();
        let meta = ImportMeta {
            parent,
            name: name.to_os_string(),
            perm: (mode & 0o7777) as u16,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            started: Instant::now(),
            writers: 1,
            linked: true,
        };
        let node = self.inodes().add_import(meta, state);
        info!(name = %name.to_string_lossy(), "import started");
        let opened = self.add_handle(OpenFile {
            node: Node::Import(node.clone()),
            writable: true,
            readahead: Default::default(),
            reading: None,
        });
        Ok((self.import_attr(&node).await, opened))
    }

    /// A new import's first state: a spool file, or a stream to the daemon.
    fn start_import(&self) -> FsResult<ImportState> {
        if let Some(dir) = &self.config.spool {
            let path = new_spool_path(dir);
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(FsError::io)?;
            return Ok(ImportState::Spooling(Spool {
                file: Arc::new(file),
                path,
                size: 0,
            }));
        }
        if self.client.is_legacy() {
            // Found out after the mount started (the daemon came up later).
            return Err(Errno::EOPNOTSUPP.because(std::io::Error::other(
                "the daemon has no streaming RPCs (a released dfdaemon): imports need --spool DIR",
            )));
        }
        Ok(ImportState::Streaming(Stream::new(Opener {
            client: self.client.clone(),
            options: self.config.import.clone(),
            memory: self.config.import_memory.clone(),
            within: self.config.fetch_timeout,
        })))
    }

    /// open() for writing of an existing import: only with O_TRUNC on a
    /// finished (or failed) one, which starts a new import under the name;
    /// an import being written can be opened again (same stream).
    pub(crate) async fn reopen_for_write(&self, node: &ImportNode, truncate: bool) -> FsResult<()> {
        let mut state = node.state.lock().await;
        if !state.is_open_for_data() {
            if !truncate {
                return Err(Errno::EACCES);
            }
            *state = self.start_import()?;
            dfcache_metrics::mount().import_started();
            {
                let mut meta = node.meta();
                meta.started = Instant::now();
                meta.mtime = SystemTime::now();
                meta.perm |= 0o200;
            }
            let inodes = self.inodes();
            inodes.log.import_file(node);
            inodes.log.outcome(node.ino, None);
        }
        node.meta().writers += 1;
        Ok(())
    }

    pub async fn write(&self, fh: u64, offset: u64, data: Vec<u8>) -> FsResult<u32> {
        let file = self.handle(fh)?;
        let Node::Import(node) = &file.node else {
            return Err(Errno::EBADF);
        };
        if !file.writable {
            return Err(Errno::EBADF);
        }
        let len = data.len() as u32;
        let mut state = node.state.lock().await;
        match &mut *state {
            ImportState::Streaming(stream) => stream.write(offset, data).await?,
            ImportState::Spooling(spool) => {
                let mut moved = Spool {
                    file: spool.file.clone(),
                    path: spool.path.clone(),
                    size: spool.size,
                };
                let moved =
                    tokio::task::spawn_blocking(move || moved.write(offset, &data).map(|()| moved))
                        .await
                        .map_err(|_| Errno::EIO)??;
                spool.size = moved.size;
            }
            ImportState::Finished(_) => {
                return Err(Errno::EIO.because(std::io::Error::other(
                    "write after the import was committed (by fsync or a close of another descriptor)",
                )));
            }
            ImportState::Failed(errno) => return Err(errno.clone()),
            ImportState::Cancelled => return Err(Errno::EIO),
        }
        node.meta().mtime = SystemTime::now();
        Ok(len)
    }

    /// close() of a descriptor: commits an import that has data.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let file = self.handle(fh)?;
        let Node::Import(node) = &file.node else {
            return Ok(());
        };
        if !file.writable {
            return Ok(());
        }
        let mut state = node.state.lock().await;
        let has_data = match &*state {
            ImportState::Streaming(s) => s.written() > 0,
            ImportState::Spooling(s) => s.size > 0,
            ImportState::Finished(_) | ImportState::Cancelled => return Ok(()),
            ImportState::Failed(errno) => return Err(errno.clone()),
        };
        if !has_data {
            return Ok(());
        }
        self.finish(node, &mut state).await
    }

    /// fsync() of an import commits it: the bytes written so far become the
    /// task, and 0 is returned only once the daemon has stored it (so a
    /// crash of the mount right after loses nothing). Later writes fail
    /// with EIO, as after a close. With nothing written yet there is
    /// nothing to lose: 0, and the import stays open.
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        self.flush(fh).await
    }

    /// The last close of a handle: commits what flush left uncommitted.
    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let Some(file) = self.take_handle(fh) else {
            return Ok(());
        };
        let Node::Import(node) = &file.node else {
            return Ok(());
        };
        if !file.writable {
            return Ok(());
        }
        let last_writer = {
            let mut meta = node.meta();
            meta.writers = meta.writers.saturating_sub(1);
            meta.writers == 0
        };
        let mut result = Ok(());
        if last_writer {
            let mut state = node.state.lock().await;
            if state.is_open_for_data() {
                result = self.finish(node, &mut state).await;
            }
        }
        self.drop_if_unused(node);
        result
    }

    /// Ends an import's stream (or uploads its spool file) and records the
    /// outcome in the state.
    async fn finish(&self, node: &ImportNode, state: &mut ImportState) -> FsResult<()> {
        let name = node.meta().name.to_string_lossy().into_owned();
        let outcome = match std::mem::replace(state, ImportState::Failed(Errno::EIO)) {
            ImportState::Streaming(stream) => stream.finish().await,
            ImportState::Spooling(spool) => self.upload_spool(spool).await,
            other => {
                *state = other;
                return Ok(());
            }
        };
        match outcome {
            Ok(finished) => {
                let took = node.meta().started.elapsed();
                dfcache_metrics::mount().import_finished(finished.content_length, took);
                ImportState::log_finished(&name, &finished);
                self.register_task(&finished);
                {
                    let inodes = self.inodes();
                    inodes.log.import_file(node);
                    inodes.log.outcome(node.ino, Some(&finished));
                }
                *state = ImportState::Finished(finished);
                Ok(())
            }
            Err(errno) => {
                // Logged once, by the adapter, with its cause.
                info!(name, "import failed; its name is removed from import/");
                dfcache_metrics::mount().import_failed();
                *state = ImportState::Failed(errno.clone());
                // No file that looks like a finished import may remain.
                let (parent, name) = {
                    let meta = node.meta();
                    (meta.parent, meta.name.clone())
                };
                let mut inodes = self.inodes();
                if inodes
                    .import(parent, &name)
                    .is_some_and(|n| n.ino == node.ino)
                {
                    inodes.unlink_import(parent, &name);
                }
                Err(errno)
            }
        }
    }

    /// Streams a spool file to the daemon, then removes it. (A legacy
    /// daemon gets it by path: see the legacy mode.)
    async fn upload_spool(&self, spool: Spool) -> FsResult<Finished> {
        // A streamed upload reads the file into blocks: it holds about the
        // file's size, up to what streaming a file may hold, from the
        // imports' budget (a legacy daemon reads the file itself).
        let _share = if self.client.is_legacy() {
            None
        } else {
            let bytes = spool.size.min(dfcache_client::MAX_FILE_STREAM_MEMORY) + CHUNK_SIZE as u64;
            Some(self.import_share(bytes).await?)
        };
        // A legacy daemon opens the spool file itself, by its host path;
        // it may hard-link it into its storage, so the file is only ever
        // unlinked afterwards, never modified or reused.
        let daemon_path = self.daemon_path_of(&spool.path);
        let result = self
            .client
            .import_file(
                &spool.path,
                daemon_path.as_deref().map_err(String::as_str),
                &self.config.import,
            )
            .await
            .map_err(FsError::from);
        let size = spool.size;
        spool.discard();
        Ok(Finished::of(result?, size))
    }

    /// `bytes` of the imports' memory budget, waiting while other imports
    /// give theirs back; ETIMEDOUT once none has for the fetch timeout.
    pub(crate) async fn import_share(&self, bytes: u64) -> FsResult<dfcache_budget::Lease> {
        crate::import::state::share_of(&self.config.import_memory, bytes, self.config.fetch_timeout)
            .await
    }

    /// A spool file as the daemon sees it (or why it cannot).
    pub(crate) fn daemon_path_of(
        &self,
        path: &std::path::Path,
    ) -> Result<std::path::PathBuf, String> {
        let real = std::fs::canonicalize(path).map_err(|e| e.to_string())?;
        self.config
            .path_mapping
            .to_host(&real)
            .map_err(|e| e.to_string())
    }

    /// A finished import's task opens under `tasks/` at once.
    fn register_task(&self, finished: &Finished) {
        self.forget_unknown(&finished.task_id);
        self.inodes()
            .add_task(finished.geometry(), SystemTime::now());
    }

    /// unlink (or rename over) an import that is still being written
    /// cancels it: the daemon stores nothing.
    pub(crate) async fn cancel_if_unfinished(&self, node: &ImportNode) {
        let mut state = node.state.lock().await;
        match std::mem::replace(&mut *state, ImportState::Cancelled) {
            ImportState::Streaming(stream) => {
                info!(name = %node.meta().name.to_string_lossy(), "import cancelled");
                stream.cancel();
            }
            ImportState::Spooling(spool) => spool.discard(),
            other => *state = other,
        }
    }
}

/// Removes the spool files of mounts that are no longer running (a mount
/// killed mid-import leaves its import file behind, one killed while the
/// daemon was linking a download the download's name; both carry its pid).
/// Files of a live mount sharing the directory are left alone. Returns how
/// many were removed.
pub fn remove_stale_spool_files(dir: &std::path::Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| {
            n.strip_prefix("import-")
                .filter(|n| n.ends_with(".spool"))
                .and_then(|n| n.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
                .or_else(|| crate::task_files::is_download_file_of(n))
        }) else {
            continue;
        };
        let alive =
            pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) => {
                    warn!(path = %entry.path().display(), error = %e, "cannot remove a stale spool file")
                }
            }
        }
    }
    Ok(removed)
}

/// A new spool file's path: its name carries this mount's pid, so a mount
/// that dies leaves files the next one recognises (`remove_stale_spool_files`).
pub(crate) fn new_spool_path(dir: &std::path::Path) -> std::path::PathBuf {
    let n = NEXT_SPOOL.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("import-{}-{n}.spool", std::process::id()))
}

/// Where spool files go; used by the mount's start-up checks.
pub fn spool_dir_ok(dir: &std::path::Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".dfcache-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}
