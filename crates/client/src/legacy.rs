//! The legacy RPCs of today's released dfdaemon: upload by a path the daemon
//! opens, and download to a path it writes or as piece content.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use tonic::Streaming;

use dfcache_wire::domain::ttl::duration_to_proto;
use dfcache_wire::pb::common::{PersistentCacheTask, TrafficType};
use dfcache_wire::pb::dfdaemon::download_persistent_cache_task_response::Response as Msg;
use dfcache_wire::pb::dfdaemon::*;

use super::{Client, ClientError, ClientResult, ImportOptions};

/// One piece of a legacy download; pieces may arrive in any order.
#[derive(Debug, Clone)]
pub struct DownloadedPiece {
    pub number: u32,
    pub offset: u64,
    pub length: u64,
    /// Present when the download asked for piece content.
    pub content: Option<Bytes>,
    /// The daemon fetched it from a peer (or the source) for this
    /// download; false when its storage already had it.
    pub fetched: bool,
}

/// The responses of one `DownloadPersistentCacheTask`.
pub struct PieceStream {
    stream: Streaming<DownloadPersistentCacheTaskResponse>,
    task_id: String,
    socket: std::path::PathBuf,
    content_length: Option<u64>,
    /// A piece that takes longer than this to come fails the download.
    progress: Duration,
}

impl Client {
    /// Asks the daemon to import the file at `daemon_path` (as it sees it),
    /// `size` bytes long.
    pub async fn upload_task(
        &self,
        daemon_path: &Path,
        size: u64,
        options: &ImportOptions,
    ) -> ClientResult<PersistentCacheTask> {
        let req = UploadPersistentCacheTaskRequest {
            content_for_calculating_task_id: options.content_for_calculating_task_id.clone(),
            path: daemon_path.to_string_lossy().into_owned(),
            persistent_replica_count: options.persistent_replica_count,
            tag: options.tag.clone(),
            application: options.application.clone(),
            piece_length: options.piece_length,
            ttl: options.ttl.map(duration_to_proto),
            timeout: options.timeout.map(duration_to_proto),
            remote_ip: None,
        };
        // The daemon reads (or links) the whole file before it answers:
        // the deadline grows with the size, at a pace any disk keeps.
        const SLOWEST_UPLOAD: u64 = 32 << 20;
        let limit = self.deadlines.call + Duration::from_secs(size / SLOWEST_UPLOAD);
        self.within("an upload", limit, async {
            let resp = self.rpc.clone().upload_persistent_cache_task(req).await;
            resp.map(|r| r.into_inner())
                .map_err(|s| self.error(s, None))
        })
        .await
    }

    /// Starts a legacy download. With `output_path` the daemon writes the
    /// file there (a path as the daemon sees it), or with `hard_link` only
    /// hard-links its own content file there (failing if it cannot);
    /// otherwise every piece carries its content.
    pub async fn download_task(
        &self,
        task_id: &str,
        output_path: Option<&Path>,
        hard_link: bool,
        overwrite: bool,
        digest: Option<&str>,
    ) -> ClientResult<PieceStream> {
        let req = DownloadPersistentCacheTaskRequest {
            task_id: task_id.to_string(),
            persistent: false,
            tag: None,
            application: None,
            output_path: output_path.map(|p| p.to_string_lossy().into_owned()),
            timeout: None,
            need_piece_content: output_path.is_none(),
            force_hard_link: hard_link && output_path.is_some(),
            digest: digest.map(str::to_string),
            remote_ip: None,
            overwrite,
        };
        self.start_download(req).await
    }

    /// Starts `DownloadPersistentCacheTask`; its first answer is bounded by
    /// the call deadline, each later piece by the progress deadline.
    pub(crate) async fn start_download(
        &self,
        req: DownloadPersistentCacheTaskRequest,
    ) -> ClientResult<PieceStream> {
        let task_id = req.task_id.clone();
        let stream = self
            .within("a download", self.deadlines.call, async {
                self.rpc
                    .clone()
                    .download_persistent_cache_task(req)
                    .await
                    .map_err(|s| self.error(s, Some(&task_id)))
            })
            .await?
            .into_inner();
        Ok(PieceStream {
            stream,
            task_id,
            socket: self.socket.clone(),
            content_length: None,
            progress: self.deadlines.progress,
        })
    }
}

impl PieceStream {
    /// Known once the started message arrived (before the first piece).
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// The next piece, or None when the daemon finished.
    pub async fn next_piece(&mut self) -> ClientResult<Option<DownloadedPiece>> {
        loop {
            let msg = tokio::time::timeout(self.progress, self.stream.message())
                .await
                .map_err(|_| ClientError::TimedOut {
                    socket: self.socket.clone(),
                    what: "the next piece of a download",
                    after: self.progress,
                })?
                .map_err(|s| ClientError::from_status(s, Some(&self.task_id), &self.socket))?;
            let Some(resp) = msg else {
                return Ok(None);
            };
            match resp.response {
                Some(Msg::DownloadPersistentCacheTaskStartedResponse(started)) => {
                    self.content_length = Some(started.content_length);
                }
                Some(Msg::DownloadPieceFinishedResponse(finished)) => {
                    let piece = finished.piece.ok_or_else(|| {
                        ClientError::Protocol("a finished-piece message without a piece".into())
                    })?;
                    return Ok(Some(DownloadedPiece {
                        number: piece.number,
                        offset: piece.offset,
                        length: piece.length,
                        content: piece.content,
                        fetched: piece.traffic_type != Some(TrafficType::LocalPeer as i32),
                    }));
                }
                None => {
                    return Err(ClientError::Protocol(
                        "a download message with no content".into(),
                    ))
                }
            }
        }
    }
}
