//! `WritePersistentCacheTask`: started, chunks, finished, in that order.
//! Anything else is INVALID_ARGUMENT and leaves no task.

use std::time::Duration;

use tonic::{Status, Streaming};
use tracing::{info, warn};

use crate::memory::TransferMemory;
use crate::store::{Store, StoreResult, TaskWriter, WriteParams};
use dfcache_wire::domain::ttl::ttl_from_proto;
use dfcache_wire::pb::dfdaemon::write_persistent_cache_task_request::Response as Msg;
use dfcache_wire::pb::dfdaemon::WritePersistentCacheTaskStartedRequest;
use dfcache_wire::pb::dfdaemon::{
    WritePersistentCacheTaskRequest, WritePersistentCacheTaskResponse,
};

use super::reply::status_of;

/// Largest chunk accepted; clients send 1 MiB.
pub const MAX_CHUNK: usize = 16 << 20;

/// How an import is admitted and kept moving.
pub struct Admission<'a> {
    /// One slot per import being stored (`--max-concurrent-imports`).
    pub imports: &'a tokio::sync::Semaphore,
    /// The memory budget an import takes its share of.
    pub memory: &'a TransferMemory,
    /// A stream that sends nothing for this long fails (DEADLINE_EXCEEDED).
    pub within: Duration,
}

/// `extensions: false` behaves as a 2.1.12 daemon: it ignores the
/// extension fields of the started message and answers only the task id.
/// `importer` is the caller's uid, recorded with the task. An import
/// waits for a slot, then for its share of the memory budget, without
/// reading its stream: HTTP/2 flow control holds the client back
/// meanwhile (and the client's own no-progress deadline runs).
pub async fn handle(
    store: &Store,
    mut stream: Streaming<WritePersistentCacheTaskRequest>,
    extensions: bool,
    min_ttl: Duration,
    importer: u32,
    admission: Admission<'_>,
) -> Result<WritePersistentCacheTaskResponse, Status> {
    let within = admission.within;
    let started = match next(&mut stream, within).await? {
        Some(Msg::WritePersistentCacheTaskStartedRequest(started)) => started,
        Some(_) => {
            return Err(Status::invalid_argument(
                "the first message must be the started message",
            ))
        }
        None => {
            return Err(Status::invalid_argument(
                "the stream ended before the started message",
            ))
        }
    };
    let mut params = params_of(started, min_ttl).map_err(status_of)?;
    params.importer = Some(importer);
    if !extensions {
        params.piece_length = None;
        params.content_for_calculating_task_id = None;
    }
    // Checked before waiting, so a bad request is refused at once. The
    // permit and the share are held until the handler returns (stored, or
    // refused and the temporary file removed by the writer's drop).
    params.validate().map_err(status_of)?;
    let _permit = admission
        .imports
        .acquire()
        .await
        .map_err(|_| Status::unavailable("the daemon is shutting down"))?;
    let memory = admission.memory;
    let share = memory
        .budget()
        .acquire(memory.import_share(params.expected_length, true))
        .await;
    let _in_flight = dfcache_metrics::daemon().import_in_flight();
    let mut writer = store
        .begin_write(params, memory, share)
        .map_err(status_of)?;
    loop {
        match next(&mut stream, within).await {
            Ok(Some(Msg::WriteChunkRequest(chunk))) => {
                if chunk.content.len() > MAX_CHUNK {
                    return Err(abort(format!(
                        "chunk of {} bytes exceeds {MAX_CHUNK}",
                        chunk.content.len()
                    )));
                }
                writer.write(chunk.content).await.map_err(status_of)?;
            }
            Ok(Some(Msg::WritePersistentCacheTaskFinishedRequest(_))) => {
                let resp = finish(writer).await?;
                if extensions {
                    return Ok(resp);
                }
                // 2.1.12's response has the task id alone.
                return Ok(WritePersistentCacheTaskResponse {
                    task_id: resp.task_id,
                    ..Default::default()
                });
            }
            Ok(Some(Msg::WritePersistentCacheTaskStartedRequest(_))) => {
                return Err(abort("a second started message".into()));
            }
            Ok(None) => {
                return Err(abort(format!(
                    "the stream ended after {} bytes without the finished message",
                    writer.written()
                )))
            }
            Err(status) => return Err(status),
        }
    }
}

async fn finish(writer: TaskWriter) -> Result<WritePersistentCacheTaskResponse, Status> {
    let meta = writer.finish().await.map_err(status_of)?;
    tracing::Span::current().record("task_id", meta.id.as_str());
    info!(content_length = meta.content_length, "write finished");
    Ok(WritePersistentCacheTaskResponse {
        task_id: meta.id.clone(),
        content_length: meta.content_length,
        piece_length: meta.piece_length,
        piece_count: meta.piece_count(),
    })
}

/// The next message's arm; a message without one, or a stream that broke
/// (oversize message, client gone), is INVALID_ARGUMENT; none for
/// `within` is DEADLINE_EXCEEDED.
async fn next(
    stream: &mut Streaming<WritePersistentCacheTaskRequest>,
    within: Duration,
) -> Result<Option<Msg>, Status> {
    let Ok(message) = tokio::time::timeout(within, stream.message()).await else {
        warn!(
            ?within,
            "the import sent nothing for the no-progress deadline; nothing stored"
        );
        return Err(super::feed::stalled(within));
    };
    match message {
        Ok(Some(WritePersistentCacheTaskRequest {
            response: Some(msg),
        })) => Ok(Some(msg)),
        Ok(Some(_)) => Err(abort("a message with no content".into())),
        Ok(None) => Ok(None),
        Err(status) => Err(abort(format!("broken stream: {}", status.message()))),
    }
}

fn abort(why: String) -> Status {
    warn!(why, "write rejected; nothing stored");
    Status::invalid_argument(format!("malformed write stream: {why}"))
}

/// The started message's fields, each checked (the rest of the checks are
/// `WriteParams::validate`, run before the temporary file is created).
fn params_of(
    started: WritePersistentCacheTaskStartedRequest,
    min_ttl: std::time::Duration,
) -> StoreResult<WriteParams> {
    Ok(WriteParams {
        // 0 is how both the 2.1.12 client and the mount say "unknown".
        expected_length: Some(started.content_length).filter(|&n| n > 0),
        piece_length: super::requested_piece_length(started.piece_length),
        persistent_replica_count: started.persistent_replica_count,
        tag: started.tag,
        application: started.application,
        ttl: ttl_from_proto(started.ttl, min_ttl)?,
        content_for_calculating_task_id: started.content_for_calculating_task_id,
        importer: None,
    })
}
