//! The daemon's own copy of a task: asking whether it holds one
//! (`StatLocalPersistentCacheTask`) and asking it to hold one, fetched
//! through its P2P network into its own storage
//! (`DownloadPersistentCacheTask` with no output path and no piece
//! content: nothing is written outside the daemon's storage).

use std::path::Path;

use dfcache_wire::pb::dfdaemon::*;

use super::{Client, ClientError, ClientResult, PieceStream};

/// The daemon's own copy of a task, as `StatLocalPersistentCacheTask`
/// describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCopy {
    /// The task's size (None when the daemon did not say).
    pub content_length: Option<u64>,
    /// Its download finished: every byte is in the daemon's storage. A
    /// copy that is not complete has some pieces, or none, and the daemon
    /// does not say which.
    pub complete: bool,
    /// Kept through the daemon's evictions under disk pressure (it still
    /// expires with its TTL).
    pub persistent: bool,
    /// Its latest download failed.
    pub failed: bool,
}

impl LocalCopy {
    fn of(resp: StatLocalPersistentCacheTaskResponse) -> Self {
        LocalCopy {
            content_length: resp.content_length,
            complete: resp.finished_at.is_some(),
            persistent: resp.persistent,
            failed: resp.failed_at.is_some() && resp.finished_at.is_none(),
        }
    }
}

impl Client {
    /// The daemon's own copy of `task_id`, or None when it holds none (its
    /// peers may still have the task).
    pub async fn stat_local(&self, task_id: &str) -> ClientResult<Option<LocalCopy>> {
        let req = StatLocalPersistentCacheTaskRequest {
            task_id: task_id.to_string(),
            remote_ip: None,
        };
        let answer = self
            .within("a local stat", self.deadlines.call, async {
                let resp = self.rpc.clone().stat_local_persistent_cache_task(req).await;
                resp.map(|r| r.into_inner())
                    .map_err(|s| self.error(s, Some(task_id)))
            })
            .await;
        match answer {
            Ok(resp) => Ok(Some(LocalCopy::of(resp))),
            Err(ClientError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Asks the daemon to hold `task_id` in its own storage, fetching what
    /// it lacks from its peers; each piece is reported once it is there,
    /// and `deliver` says what else the daemon does with it. With
    /// `persistent` the daemon keeps its copy through evictions under disk
    /// pressure until the task's TTL ends; a released dfdaemon sets the
    /// flag on its copy at every download, so a download without it takes
    /// it away (callers that only read pass what `stat_local` said).
    pub async fn hold(
        &self,
        task_id: &str,
        deliver: Deliver<'_>,
        persistent: bool,
    ) -> ClientResult<PieceStream> {
        let (output_path, need_piece_content, force_hard_link) = match deliver {
            Deliver::Nothing => (None, false, false),
            Deliver::Content => (None, true, false),
            Deliver::LinkedAt(path) => (Some(path.to_string_lossy().into_owned()), false, true),
        };
        self.start_download(DownloadPersistentCacheTaskRequest {
            task_id: task_id.to_string(),
            persistent,
            tag: None,
            application: None,
            output_path,
            timeout: None,
            need_piece_content,
            force_hard_link,
            digest: None,
            remote_ip: None,
            overwrite: false,
        })
        .await
    }
}

/// What a download delivers besides the daemon's own copy.
#[derive(Debug, Clone, Copy)]
pub enum Deliver<'a> {
    /// Nothing: the pieces are reported without content, and no file is
    /// written outside the daemon's storage.
    Nothing,
    /// Every piece's content, over the socket.
    Content,
    /// A hard link of the daemon's content file at this path (as the
    /// daemon sees it; it must not exist), or a failure.
    LinkedAt(&'a Path),
}
