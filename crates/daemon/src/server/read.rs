//! `ReadPersistentCacheTask`: a byte range of a task, as a started message,
//! chunks that say their offset, and a finished message.

use std::time::Duration;

use tonic::{Response, Status};
use tracing::{debug, info_span, warn, Instrument};

use dfcache_budget::Lease;

use super::feed::{feed, Feed, Stopped};
use crate::memory::{TransferMemory, SEND_SHARE};
use crate::store::{read_short, RangeReader, Store};
use dfcache_wire::domain::CHUNK_SIZE;
use dfcache_wire::pb::dfdaemon::read_persistent_cache_task_response::Response as Msg;
use dfcache_wire::pb::dfdaemon::*;

use super::outgoing::Outgoing;
use super::reply::{status_of, streamed, ResponseStream};

/// Chunks read ahead of the client: a whole block and a few, so the next
/// block is read from the disk while the previous one is sent.
const CHUNKS_AHEAD: usize = RangeReader::MAX_BLOCK / CHUNK_SIZE + 4;
/// Ranges up to this long are read in one go and sent without a reader
/// task: what the mount asks for a random read (the pages a random miss covers).
pub(crate) const SHORT_RANGE: u64 = dfcache_wire::short_reads::MAX_LEN as u64;

/// `extensions: false` behaves as a 2.1.12 daemon: the range is ignored,
/// there is no started message and chunks carry no offset. What is read
/// is leased from `memory`'s budget; a client that takes nothing for
/// `within` ends the read.
pub async fn handle(
    store: &Store,
    mut req: ReadPersistentCacheTaskRequest,
    extensions: bool,
    memory: &TransferMemory,
    within: Duration,
) -> Result<Response<ResponseStream<ReadPersistentCacheTaskResponse>>, Status> {
    let (meta, file, lease) = store.open_content(&req.task_id).map_err(status_of)?;
    if !extensions {
        req.offset = None;
        req.length = None;
    }
    let offset = req.offset.unwrap_or(0);
    let end = range_end(meta.content_length, offset, req.length)?;
    let started = ReadPersistentCacheTaskStartedResponse {
        content_length: meta.content_length,
        piece_length: meta.piece_length,
        piece_count: meta.piece_count(),
    };
    if extensions && end - offset <= SHORT_RANGE {
        return Ok(short_range(file, started, offset, end, memory).await);
    }
    let mut reader = store.range_reader(&meta.id, file, offset, end, memory);
    let (tx, rx) = feed(CHUNKS_AHEAD, within);
    let memory = memory.clone();
    let span = info_span!("read", task_id = %meta.id, offset, end);
    tokio::spawn(
        async move {
            // Held until this task ends: GC leaves the task alone meanwhile.
            let _lease = lease;
            let started = Msg::ReadPersistentCacheTaskStartedResponse(started);
            if extensions && !send(&tx, started).await {
                return;
            }
            // What the read holds to its end, taken in one go (a transfer
            // that held a part while waiting for another could wait on
            // others doing the same): its send share, and the reserve its
            // blocks fall back on when the budget has no room free.
            let wanted = SEND_SHARE + reader.reserve_bytes();
            let mut held = match tx.guard(memory.budget().acquire(wanted)).await {
                Ok(held) => held,
                Err(stopped) => return ended(stopped),
            };
            if let Some(send_share) = held.split(SEND_SHARE) {
                tx.hold(send_share);
            }
            reader.reserve(held);
            loop {
                // Waits for room for the block (its reserve, once its
                // client has taken the last one), unless the client
                // stalls meanwhile.
                let (pos, block) = match tx.guard(reader.next()).await {
                    Ok(Ok(Some(next))) => next,
                    Ok(Ok(None)) => break,
                    Ok(Err(e)) => {
                        let _ = tx.send(Err(read_failed(e))).await;
                        return;
                    }
                    Err(stopped) => {
                        ended(stopped);
                        return;
                    }
                };
                // Blocks can be 16 MiB; chunks are cut from them uncopied.
                let mut at = 0;
                while at < block.len() {
                    let len = (block.len() - at).min(CHUNK_SIZE);
                    let chunk = Msg::ReadChunkResponse(ReadChunkResponse {
                        content: block.slice(at..at + len),
                        offset: extensions.then_some(pos + at as u64),
                    });
                    if !send(&tx, chunk).await {
                        return;
                    }
                    at += len;
                }
            }
            send(
                &tx,
                Msg::ReadPersistentCacheTaskFinishedResponse(
                    ReadPersistentCacheTaskFinishedResponse {},
                ),
            )
            .await;
        }
        .instrument(span),
    );
    Ok(rx.into_response())
}

/// A short range (a random read through the mount), read before the
/// reply starts and sent as ready messages: no reader task and channel
/// per read, and the page cache answered on the connection's own thread.
/// Over the socket a random 16 KiB read took 175-240 us with the spawned
/// reader, most of it thread hand-offs.
async fn short_range(
    file: std::sync::Arc<std::fs::File>,
    started: ReadPersistentCacheTaskStartedResponse,
    offset: u64,
    end: u64,
    memory: &TransferMemory,
) -> Response<ResponseStream<ReadPersistentCacheTaskResponse>> {
    // The reply and its encoded copy, taken in one go; the copy's room is
    // held until the connection has written it.
    let mut room = memory.budget().acquire(2 * (end - offset)).await;
    let outgoing = Outgoing::new();
    outgoing.hold(room.split(end - offset).unwrap_or_default());
    let replies: Vec<_> = match read_exact(file, offset, end, room).await {
        Ok(content) => [
            Msg::ReadPersistentCacheTaskStartedResponse(started),
            Msg::ReadChunkResponse(ReadChunkResponse {
                content,
                offset: Some(offset),
            }),
            Msg::ReadPersistentCacheTaskFinishedResponse(
                ReadPersistentCacheTaskFinishedResponse {},
            ),
        ]
        .into_iter()
        .map(|msg| {
            Ok(ReadPersistentCacheTaskResponse {
                response: Some(msg),
            })
        })
        .collect(),
        Err(status) => vec![Err(status)],
    };
    streamed(Box::pin(tokio_stream::iter(replies)), outgoing)
}

/// Where a read of `length` bytes (None: to the end) from `offset` ends,
/// clamped to the task; OUT_OF_RANGE past its end.
pub(crate) fn range_end(
    content_length: u64,
    offset: u64,
    length: Option<u64>,
) -> Result<u64, Status> {
    if offset > content_length {
        return Err(Status::out_of_range(format!(
            "offset {offset} is past the end of the task ({content_length} bytes)"
        )));
    }
    Ok(match length {
        Some(len) => offset.saturating_add(len).min(content_length),
        None => content_length,
    })
}

/// Bytes `offset..end` of a task's content file, read in one go into
/// room `lease` paid for (held until the bytes are dropped); content
/// shorter than its metadata says is DATA_LOSS.
pub(crate) async fn read_exact(
    file: std::sync::Arc<std::fs::File>,
    offset: u64,
    end: u64,
    lease: Lease,
) -> Result<bytes::Bytes, Status> {
    let len = (end - offset) as usize;
    match read_short(file, offset, len).await {
        Ok(content) if content.len() == len => Ok(lease.attach(content)),
        Ok(_) => Err(read_failed(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "task content is shorter than recorded",
        ))),
        Err(e) => Err(read_failed(e)),
    }
}

/// The status a failed content read ends a read with: content shorter
/// than its metadata says is DATA_LOSS, anything else INTERNAL.
fn read_failed(e: std::io::Error) -> Status {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Status::data_loss(e.to_string())
    } else {
        Status::internal(format!("read task content: {e}"))
    }
}

/// Sends `msg`; false when the read is over (its client went away, or
/// took nothing for the no-progress deadline).
async fn send(tx: &Feed<ReadPersistentCacheTaskResponse>, msg: Msg) -> bool {
    let sent = tx
        .send(Ok(ReadPersistentCacheTaskResponse {
            response: Some(msg),
        }))
        .await;
    match sent {
        Ok(()) => true,
        Err(stopped) => {
            ended(stopped);
            false
        }
    }
}

fn ended(stopped: Stopped) {
    match stopped {
        Stopped::Gone => debug!("reader went away"),
        Stopped::Stalled => {
            warn!("the reader took nothing for the no-progress deadline; read ended")
        }
    }
}
