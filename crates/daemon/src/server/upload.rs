//! `UploadPersistentCacheTask`: the daemon imports a file by its path.
//!
//! The file is opened with the caller's rights (see [`crate::caller`]) and
//! read through that descriptor: a caller imports only what it could read
//! itself. Root and the daemon's own uid open it with the daemon's rights,
//! and under `--legacy` have it hard-linked into the store as a released
//! dfdaemon does; anyone else's file is copied, since a link would leave
//! its owner able to change the stored task in place.

use std::fs::File;
use std::path::{Path, PathBuf};

use tokio::sync::Semaphore;
use tonic::Status;
use tracing::{info_span, Instrument};

use crate::caller::{self, Acting, Caller};
use crate::memory::TransferMemory;
use crate::store::{Store, TaskMeta, WriteParams};
use dfcache_wire::domain::ttl::ttl_from_proto;
use dfcache_wire::pb::dfdaemon::UploadPersistentCacheTaskRequest;

use super::reply::{acting_status, path_status, status_of};

pub async fn handle(
    store: &Store,
    req: UploadPersistentCacheTaskRequest,
    caller: &Caller,
    link: bool,
    min_ttl: std::time::Duration,
    imports: &Semaphore,
    memory: &TransferMemory,
) -> Result<TaskMeta, Status> {
    let path = super::client_path(&req.path, "upload")?;
    let span = info_span!("upload", path = %path.display(), uid = caller.uid, pid = ?caller.pid);
    let params = WriteParams {
        expected_length: None,
        piece_length: super::requested_piece_length(req.piece_length),
        persistent_replica_count: req.persistent_replica_count,
        tag: req.tag,
        application: req.application,
        ttl: ttl_from_proto(req.ttl, min_ttl).map_err(|e| status_of(e.into()))?,
        content_for_calculating_task_id: req.content_for_calculating_task_id,
        importer: Some(caller.uid),
    };
    params.validate().map_err(status_of)?;
    let _permit = imports
        .acquire()
        .await
        .map_err(|_| Status::unavailable("the daemon is shutting down"))?;
    let _in_flight = dfcache_metrics::daemon().import_in_flight();
    let acting = Acting::for_caller(caller);
    async {
        if link && acting.is_daemon() {
            return store
                .link_path(&path, params, memory)
                .await
                .map_err(status_of);
        }
        let source = open_source(&acting, &path).await?;
        store
            .import_file(source, &path, params, memory)
            .await
            .map_err(status_of)
    }
    .instrument(span)
    .await
}

/// Opens the regular file at `path` for reading, with `acting`'s rights.
///
/// Opened non-blocking, so a FIFO or a device at the path answers at once
/// (and is then refused) instead of holding a thread until a writer comes;
/// without becoming the daemon's controlling terminal if it is a tty; and,
/// for a caller, without the daemon's own access to /proc
/// ([`caller::open`]).
async fn open_source(acting: &Acting, path: &Path) -> Result<File, Status> {
    let owned: PathBuf = path.to_path_buf();
    let confine = !acting.is_daemon();
    let opened = acting
        .run(move || {
            let file = caller::open(&owned, libc::O_NONBLOCK | libc::O_NOCTTY, confine)?;
            let regular = file.metadata()?.is_file();
            if regular {
                blocking_again(&file)?;
            }
            Ok::<_, std::io::Error>((file, regular))
        })
        .await
        .map_err(|e| acting_status(path, e))?;
    match opened {
        Ok((file, true)) => Ok(file),
        Ok((_, false)) => Err(Status::invalid_argument(format!(
            "{}: not a regular file",
            path.display()
        ))),
        Err(e) => Err(path_status(path, e, acting)),
    }
}

/// Clears O_NONBLOCK, which only the open needed.
fn blocking_again(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL and F_SETFL on a descriptor open for the call.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
