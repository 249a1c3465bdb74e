//! Importing a file the daemon can open by hard-linking it into the store,
//! as today's released dfdaemon does for a file on its own file system.
//! The task then shares the file's inode: whoever uploaded it must never
//! modify or reuse that file (the legacy emulation copies this so tests
//! catch a client that does).

use std::io::Read;
use std::path::Path;

use tracing::debug;

use crate::memory::TransferMemory;
use crate::store::error::{StoreError, StoreResult};
use crate::store::{Store, TaskMeta, WriteParams};
use dfcache_wire::domain::piece::default_piece_length;
use dfcache_wire::domain::task_id::{TaskIdHasher, TaskIdInputs};
use dfcache_wire::domain::ttl::DEFAULT_TTL;

/// Bytes hashed per read.
const HASH_READ: usize = 1 << 20;

impl Store {
    /// Imports the file at `path`, opened with the daemon's rights (for
    /// root and the daemon's own uid only: the task then shares the
    /// file's inode), by linking it when it is on the store's file system;
    /// copies it otherwise (taking the copy's memory from `memory`).
    pub async fn link_path(
        &self,
        path: &Path,
        params: WriteParams,
        memory: &TransferMemory,
    ) -> StoreResult<TaskMeta> {
        params.validate()?;
        let store = self.clone();
        let owned = path.to_path_buf();
        // The hashing buffer's bytes, held until it is freed.
        let hashing = memory.budget().acquire(HASH_READ as u64).await;
        let linked = tokio::task::spawn_blocking(move || {
            let _hashing = hashing;
            store
                .link_blocking(&owned, params.clone())
                .map(|m| (m, params))
        })
        .await
        .map_err(|e| StoreError::io("link task", std::io::Error::other(e)))?;
        match linked {
            Ok((Some(meta), _)) => Ok(meta),
            Ok((None, params)) => {
                let file = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| StoreError::path(path, e))?;
                self.import_file(file.into_std().await, path, params, memory)
                    .await
            }
            Err(e) => Err(e),
        }
    }

    /// Ok(None): the file is on another file system; copy it instead.
    fn link_blocking(&self, path: &Path, params: WriteParams) -> StoreResult<Option<TaskMeta>> {
        let mut file = std::fs::File::open(path).map_err(|e| StoreError::path(path, e))?;
        let metadata = file.metadata().map_err(|e| StoreError::path(path, e))?;
        if !metadata.is_file() {
            return Err(StoreError::InvalidArgument(format!(
                "{}: not a regular file",
                path.display()
            )));
        }
        let temp = self.temp_path("link");
        match std::fs::hard_link(path, &temp) {
            Ok(()) => {}
            Err(e)
                if e.raw_os_error() == Some(libc::EXDEV)
                    || e.raw_os_error() == Some(libc::EPERM) =>
            {
                debug!(path = %path.display(), error = %e, "cannot link into the store; copying");
                return Ok(None);
            }
            Err(e) => return Err(StoreError::path(path, e)),
        }
        let result = (|| {
            let mut hasher = TaskIdHasher::new(TaskIdInputs {
                tag: params.tag.clone(),
                application: params.application.clone(),
                piece_length: params.piece_length,
                content_for_calculating_task_id: params.content_for_calculating_task_id.clone(),
            });
            let mut buf = vec![0u8; HASH_READ];
            let mut len = 0u64;
            loop {
                let n = file
                    .read(&mut buf)
                    .map_err(|e| StoreError::io(format!("read {}", path.display()), e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                len += n as u64;
            }
            file.sync_all()
                .map_err(|e| StoreError::io(format!("fsync {}", path.display()), e))?;
            let now = std::time::SystemTime::now();
            let meta = TaskMeta {
                id: hasher.finish(),
                content_length: len,
                piece_length: params
                    .piece_length
                    .unwrap_or_else(|| default_piece_length(len)),
                persistent_replica_count: params.persistent_replica_count,
                tag: params.tag.clone(),
                application: params.application.clone(),
                ttl: params.ttl.filter(|t| !t.is_zero()).unwrap_or(DEFAULT_TTL),
                created_at: now,
                updated_at: now,
                importers: params.importer.into_iter().collect(),
            };
            self.commit(&temp, meta)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result.map(Some)
    }
}
