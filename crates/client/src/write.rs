//! Creating tasks: the streaming write from any async reader, and
//! `import_file`, which falls back to the legacy path upload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tracing::debug;

use dfcache_wire::domain::ttl::duration_to_proto;
use dfcache_wire::domain::{CHUNK_QUEUE_DEPTH, CHUNK_SIZE};
use dfcache_wire::pb::dfdaemon::write_persistent_cache_task_request::Response as Msg;
use dfcache_wire::pb::dfdaemon::*;

use super::source::{self, Source};
use super::{Client, ClientError, ClientResult, ImportOptions, Progress};

/// What the daemon stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSummary {
    pub task_id: String,
    pub content_length: u64,
    pub piece_length: u64,
    pub piece_count: u32,
}

/// Chunks of a task's content for [`Client::write_chunks`]. The sender
/// closing the channel ends the content; an `Err` item aborts the write
/// (the daemon stores nothing) and is what the write returns.
pub type ChunkReceiver = mpsc::Receiver<std::io::Result<Bytes>>;

impl Client {
    /// Streams everything `reader` yields into a new task. `content_length`
    /// is announced when known (the daemon then checks it). Memory is a few
    /// chunks whatever the size: the reader waits while the socket is busy.
    pub async fn write_task<R>(
        &self,
        reader: R,
        content_length: Option<u64>,
        options: &ImportOptions,
        progress: Arc<dyn Progress>,
    ) -> ClientResult<WriteSummary>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(CHUNK_QUEUE_DEPTH);
        tokio::spawn(read_chunks(reader, tx));
        self.write_chunks(rx, content_length, options, progress)
            .await
    }

    /// Streams the chunks received on `chunks` into a new task.
    pub async fn write_chunks(
        &self,
        chunks: ChunkReceiver,
        content_length: Option<u64>,
        options: &ImportOptions,
        progress: Arc<dyn Progress>,
    ) -> ClientResult<WriteSummary> {
        let (tx, rx) = mpsc::channel(CHUNK_QUEUE_DEPTH);
        let started = WritePersistentCacheTaskStartedRequest {
            content_length: content_length.unwrap_or(0),
            persistent_replica_count: options.persistent_replica_count,
            tag: options.tag.clone(),
            application: options.application.clone(),
            ttl: options.ttl.map(duration_to_proto),
            piece_length: options.piece_length,
            content_for_calculating_task_id: options.content_for_calculating_task_id.clone(),
        };
        let progress_limit = self.deadlines.progress;
        let socket = self.socket.clone();
        let mut pumped = tokio::spawn(async move {
            // Dropping tx without the finished message tells the daemon the
            // stream is broken, so it stores nothing.
            pump(chunks, started, &tx, progress, progress_limit, socket).await
        });
        let mut rpc = self.rpc.clone();
        let call = rpc.write_persistent_cache_task(ReceiverStream::new(rx));
        tokio::pin!(call);
        // The call's answer comes after the finished message, or early when
        // the daemon refuses the stream. A daemon that stops taking chunks
        // ends the pump first (it gives up after `progress_limit`), and then
        // the call is not waited for: a frozen daemon never answers.
        let response = tokio::select! {
            response = &mut call => {
                // A source error explains a refused stream better than the
                // daemon can.
                if let Ok(Err(e @ ClientError::Io { .. })) = (&mut pumped).await {
                    return Err(e);
                }
                response
            }
            pump_result = &mut pumped => {
                match pump_result {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(e) => return Err(ClientError::io("the import's sender", std::io::Error::other(e))),
                }
                // Everything was sent: the daemon now commits (hash check,
                // fsync, rename), which must not stall longer either.
                match tokio::time::timeout(progress_limit, &mut call).await {
                    Ok(response) => response,
                    Err(_) => return Err(self.timed_out("the end of an import", progress_limit)),
                }
            }
        };
        let resp = match response {
            Ok(resp) => resp.into_inner(),
            Err(s) if s.code() == Code::Unimplemented => {
                self.fall_back("WritePersistentCacheTask");
                return Err(self.error(s, None));
            }
            Err(s) => return Err(self.error(s, None)),
        };
        self.streaming_seen();
        Ok(WriteSummary {
            task_id: resp.task_id,
            content_length: resp.content_length,
            piece_length: resp.piece_length,
            piece_count: resp.piece_count,
        })
    }

    /// Imports the file at `local` (a path this process opens). Streams it,
    /// unless the daemon is legacy or `stream` is false: then the daemon
    /// uploads it by `daemon_path`, the same file as the daemon sees it (or
    /// the reason there is no such path).
    pub async fn import_file(
        &self,
        local: &Path,
        daemon_path: Result<&Path, &str>,
        stream: bool,
        options: &ImportOptions,
        progress: Arc<dyn Progress>,
    ) -> ClientResult<WriteSummary> {
        if stream && !self.is_legacy() {
            let source = Source::open(local)
                .map_err(|e| ClientError::io(format!("open {}", local.display()), e))?;
            let meta = source
                .metadata()
                .map_err(|e| ClientError::io(format!("stat {}", local.display()), e))?;
            // A pipe or device has no size to announce.
            let len = Some(meta.len()).filter(|_| meta.is_file());
            if let Some(len) = len {
                progress.set_total(len);
            }
            let (tx, rx) = mpsc::channel(source::CHUNKS_IN_FLIGHT);
            std::thread::Builder::new()
                .name("dfcache-read".into())
                .spawn(move || source.send_chunks(tx))
                .map_err(|e| ClientError::io("start the reader thread", e))?;
            match self.write_chunks(rx, len, options, progress.clone()).await {
                Err(ClientError::Daemon {
                    code: Code::Unimplemented,
                    ..
                }) => self.fall_back("WritePersistentCacheTask"),
                other => return other,
            }
        }
        let daemon_path = daemon_path.map_err(|reason| ClientError::NoDaemonPath {
            path: local.to_path_buf(),
            reason: reason.to_string(),
        })?;
        debug!(path = %daemon_path.display(), "uploading by path");
        let size = std::fs::metadata(local).map(|m| m.len()).unwrap_or(0);
        let task = self.upload_task(daemon_path, size, options).await?;
        progress.advance(task.content_length);
        Ok(WriteSummary {
            task_id: task.id,
            content_length: task.content_length,
            piece_length: task.piece_length,
            piece_count: task.piece_count,
        })
    }
}

/// Reads `reader` into whole chunks (fewer, larger messages are faster)
/// and sends them; a read error is sent as the last item.
async fn read_chunks<R: AsyncRead + Unpin>(
    mut reader: R,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
) {
    loop {
        let mut buf = BytesMut::with_capacity(CHUNK_SIZE);
        while buf.len() < CHUNK_SIZE {
            match reader.read_buf(&mut buf).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
        if buf.is_empty() || tx.send(Ok(buf.freeze())).await.is_err() {
            return;
        }
    }
}

/// Sends the started message, the chunks, then the finished message.
/// Returns early (without finished) when the source fails, and with
/// TimedOut when the call takes no message for `limit` (a frozen daemon
/// stops taking chunks once its flow-control window is full). Waiting for
/// the source (a slow writer into the mount) is never timed.
async fn pump(
    mut chunks: ChunkReceiver,
    started: WritePersistentCacheTaskStartedRequest,
    tx: &mpsc::Sender<WritePersistentCacheTaskRequest>,
    progress: Arc<dyn Progress>,
    limit: Duration,
    socket: PathBuf,
) -> ClientResult<()> {
    let send = |m| {
        let msg = WritePersistentCacheTaskRequest { response: Some(m) };
        let socket = socket.clone();
        async move {
            match tokio::time::timeout(limit, tx.send(msg)).await {
                // Err: the call ended (the daemon refused); its status says why.
                Ok(sent) => Ok(sent.is_ok()),
                Err(_) => Err(ClientError::TimedOut {
                    socket,
                    what: "the next chunk of an import",
                    after: limit,
                }),
            }
        }
    };
    if !send(Msg::WritePersistentCacheTaskStartedRequest(started)).await? {
        return Ok(());
    }
    while let Some(chunk) = chunks.recv().await {
        let content = chunk.map_err(|e| ClientError::io("read import source", e))?;
        let len = content.len() as u64;
        if !send(Msg::WriteChunkRequest(WriteChunkRequest { content })).await? {
            return Ok(());
        }
        progress.advance(len);
    }
    send(Msg::WritePersistentCacheTaskFinishedRequest(
        WritePersistentCacheTaskFinishedRequest {},
    ))
    .await?;
    Ok(())
}
