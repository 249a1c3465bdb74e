//! `DownloadPersistentCacheTask`, the RPC today's dfdaemon exports with:
//! the daemon writes the task to `output_path`, or returns each piece's
//! content (`need_piece_content`) for the client to place by offset. With
//! neither, a client asks the daemon to hold the task in its own storage
//! (`dfcache warmup`): this store holds every task it knows whole, so the
//! answer is a check, the task's pieces reported without a byte read.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Response, Status};
use tracing::{info, info_span, warn, Instrument};

use dfcache_budget::MemoryBudget;

use super::feed::{feed, Feed, Stopped};
use crate::caller::Acting;
use crate::memory::TransferMemory;
use crate::store::{read_at, Store, TaskMeta};
use dfcache_wire::digest::{piece_digest, Digest, Hasher};
use dfcache_wire::pb::common::{Piece, TrafficType};
use dfcache_wire::pb::dfdaemon::download_persistent_cache_task_response::Response as Msg;
use dfcache_wire::pb::dfdaemon::*;

use super::output::Output;
use super::reply::{status_of, ResponseStream};

/// Pieces read ahead of the client: one being sent, one being read (each
/// leased from the memory budget before it is read: from what is free, or
/// else from the download's own reserve of one piece).
const PIECES_AHEAD: usize = 2;
/// Pieces are read in slices of this size when verifying a digest.
const VERIFY_READ: usize = 4 << 20;

type Tx = Feed<DownloadPersistentCacheTaskResponse>;

/// The order pieces are sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceOrder {
    InOrder,
    /// As a P2P download delivers them: last first, then the rest
    /// interleaved from both ends, so no piece arrives where a sequential
    /// writer would expect it.
    Scrambled,
    /// In order, each piece after this delay: a slow P2P download, to show
    /// readers are served before the last piece lands.
    Paced(std::time::Duration),
}

impl PieceOrder {
    fn sequence(self, count: u32) -> Vec<u32> {
        match self {
            PieceOrder::InOrder | PieceOrder::Paced(_) => (0..count).collect(),
            PieceOrder::Scrambled => {
                let (mut lo, mut hi) = (0i64, i64::from(count) - 1);
                let mut out = Vec::with_capacity(count as usize);
                while lo <= hi {
                    out.push(hi as u32);
                    if lo < hi {
                        out.push(lo as u32);
                    }
                    lo += 1;
                    hi -= 1;
                }
                out
            }
        }
    }
}

/// When an export to an output path is a hard link to the content file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// As dfdaemon: whenever the two are on one file system.
    WhenPossible,
    /// Only when the client insists (`force_hard_link`); copies otherwise.
    WhenForced,
}

/// An output path is written with `acting`'s rights (see [`Output`]). A
/// client that takes nothing for `within` ends the download.
pub async fn handle(
    store: &Store,
    req: DownloadPersistentCacheTaskRequest,
    order: PieceOrder,
    links: Links,
    acting: Acting,
    memory: &TransferMemory,
    within: Duration,
) -> Result<Response<ResponseStream<DownloadPersistentCacheTaskResponse>>, Status> {
    let (meta, file, lease) = store.open_content(&req.task_id).map_err(status_of)?;
    let digest = req
        .digest
        .as_deref()
        .filter(|d| !d.is_empty())
        .map(str::parse::<Digest>)
        .transpose()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let output = match req.output_path.as_deref().filter(|p| !p.is_empty()) {
        Some(path) => Some(
            Destination::of(
                store,
                &meta.id,
                &super::client_path(path, "output")?,
                &req,
                links,
                &acting,
            )
            .await?,
        ),
        // No output path: the pieces' content goes back on the stream
        // (need_piece_content) or, with neither, the caller asks the daemon
        // to hold the task (`dfcache warmup`). Neither touches a path, so
        // neither needs the caller's rights to one.
        None => None,
    };
    let (tx, rx) = feed(PIECES_AHEAD, within);
    let span =
        info_span!("download", task_id = %meta.id, output = ?req.output_path, uid = acting.uid());
    let need_content = req.need_piece_content;
    let memory = memory.clone();
    tokio::spawn(
        async move {
            // Held until this task ends: GC leaves the task alone meanwhile.
            let _lease = lease;
            let result = run(
                &tx,
                &meta,
                file,
                digest,
                output.as_ref(),
                (need_content, order),
                &memory,
            )
            .await;
            match (result, output) {
                (Ok(()), Some(Destination::Linked)) => info!("exported by hard link"),
                (Ok(()), Some(Destination::Copy(output))) => match output.commit().await {
                    Ok(()) => info!("exported to output path"),
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                    }
                },
                (Ok(()), None) => {}
                (Err(status), output) => {
                    drop(output);
                    warn!(error = %status.message(), "download failed");
                    let _ = tx.send(Err(status)).await;
                }
            }
        }
        .instrument(span),
    );
    Ok(rx.into_response())
}

async fn run(
    tx: &Tx,
    meta: &TaskMeta,
    file: Arc<File>,
    digest: Option<Digest>,
    output: Option<&Destination>,
    (need_content, order): (bool, PieceOrder),
    memory: &TransferMemory,
) -> Result<(), Status> {
    let copy_to = match output {
        Some(Destination::Copy(output)) => Some(output),
        _ => None,
    };
    // A linked export needs no byte read: pieces are reported as they are
    // (dfdaemon reports them from its metadata, without their digests).
    let read_pieces = need_content || copy_to.is_some();
    if let Some(expected) = digest {
        verify(&file, meta.content_length, &expected, memory).await?;
    }
    let response = |msg| DownloadPersistentCacheTaskResponse {
        host_id: String::new(),
        task_id: meta.id.clone(),
        peer_id: String::new(),
        response: Some(msg),
    };
    let started = DownloadPersistentCacheTaskStartedResponse {
        content_length: meta.content_length,
    };
    // What the download holds to its end, taken in one go (a transfer that
    // held a part while waiting for another could wait on others doing
    // the same): room for one piece, which its pieces fall back on when
    // the budget has no room free, and a piece's encoded copy when pieces
    // are sent.
    let reserve = if read_pieces {
        let copies = if need_content { 2 } else { 1 };
        let wanted = copies * meta.piece_length.min(meta.content_length);
        let mut held = match tx.guard(memory.budget().acquire(wanted)).await {
            Ok(held) => held,
            Err(Stopped::Gone) => return Ok(()),
            Err(Stopped::Stalled) => return Err(super::feed::stalled(tx.within())),
        };
        if need_content {
            let encoded = held.split(held.bytes() / 2).unwrap_or_default();
            tx.hold(encoded);
        }
        Some(MemoryBudget::within(held))
    } else {
        None
    };
    match tx
        .send(Ok(response(
            Msg::DownloadPersistentCacheTaskStartedResponse(started),
        )))
        .await
    {
        Ok(()) => {}
        Err(Stopped::Gone) => return Ok(()),
        Err(Stopped::Stalled) => return Err(super::feed::stalled(tx.within())),
    }
    for number in order.sequence(meta.piece_count()) {
        if let PieceOrder::Paced(delay) = order {
            tokio::time::sleep(delay).await;
        }
        let offset = u64::from(number) * meta.piece_length;
        let length = meta.piece_length.min(meta.content_length - offset);
        let content = if read_pieces {
            let lease = match memory.budget().try_acquire(length) {
                Some(lease) => lease,
                None => {
                    let own = reserve.as_ref().unwrap_or(memory.budget());
                    match tx.guard(own.acquire(length)).await {
                        Ok(lease) => lease,
                        Err(Stopped::Gone) => {
                            return Err(Status::cancelled("the client went away"))
                        }
                        Err(Stopped::Stalled) => return Err(super::feed::stalled(tx.within())),
                    }
                }
            };
            let content = read_at(file.clone(), offset, length as usize)
                .await
                .map_err(|e| Status::internal(format!("read piece {number}: {e}")))?;
            if content.len() as u64 != length {
                return Err(Status::data_loss(format!("piece {number} is short")));
            }
            Some(lease.attach(content))
        } else {
            None
        };
        if let (Some(output), Some(content)) = (copy_to, &content) {
            output.write_at(content.clone(), offset).await?;
        }
        let piece = Piece {
            number,
            parent_id: None,
            offset,
            length,
            digest: content
                .as_ref()
                .map(|c| piece_digest(c))
                .unwrap_or_default(),
            content: content.filter(|_| need_content),
            traffic_type: Some(TrafficType::LocalPeer as i32),
            cost: None,
            created_at: Some(std::time::SystemTime::now().into()),
        };
        let finished = DownloadPieceFinishedResponse { piece: Some(piece) };
        match tx
            .send(Ok(response(Msg::DownloadPieceFinishedResponse(finished))))
            .await
        {
            Ok(()) => {}
            Err(Stopped::Gone) => return Err(Status::cancelled("the client went away")),
            Err(Stopped::Stalled) => return Err(super::feed::stalled(tx.within())),
        }
    }
    Ok(())
}

async fn verify(
    file: &Arc<File>,
    len: u64,
    expected: &Digest,
    memory: &TransferMemory,
) -> Result<(), Status> {
    let mut hasher = Hasher::new(expected.algorithm);
    let mut pos = 0;
    while pos < len {
        let n = VERIFY_READ.min((len - pos) as usize);
        let _lease = memory.budget().acquire(n as u64).await;
        let chunk = read_at(file.clone(), pos, n)
            .await
            .map_err(|e| Status::internal(format!("read for digest: {e}")))?;
        hasher.update(&chunk);
        pos += chunk.len() as u64;
    }
    expected
        .verify(&hasher.finish())
        .map_err(|e| Status::data_loss(e.to_string()))
}

/// Where an export goes: a hard link to the task's content file, made
/// before the first piece is reported (as dfdaemon links at the start of a
/// download, so a reader of the output may read each reported piece), or
/// a copy when the two are on different file systems and no link is
/// insisted on (`force_hard_link`).
///
/// Links are only for root and the daemon's own uid (the mount's spool):
/// a link is the stored content file itself, so it cannot belong to the
/// caller as an export should, and were it given to the caller (chown),
/// the caller could change the stored task in place for every reader.
/// (The kernel would refuse the link itself to the caller too, under
/// `fs.protected_hardlinks`.) Anyone else gets a copy, or PERMISSION_DENIED
/// when it insists on a link; the mount then downloads the content.
enum Destination {
    Linked,
    Copy(Output),
}

impl Destination {
    async fn of(
        store: &Store,
        id: &str,
        target: &Path,
        req: &DownloadPersistentCacheTaskRequest,
        links: Links,
        acting: &Acting,
    ) -> Result<Self, Status> {
        if !acting.is_daemon() {
            if req.force_hard_link {
                return Err(Status::permission_denied(format!(
                    "{}: a hard link to a stored task is for root only (uid {} may have a copy: ask without force_hard_link)",
                    target.display(),
                    acting.uid()
                )));
            }
            return Ok(Destination::Copy(
                Output::create(acting, target, req.overwrite).await?,
            ));
        }
        if links == Links::WhenForced && !req.force_hard_link {
            return Ok(Destination::Copy(
                Output::create(acting, target, req.overwrite).await?,
            ));
        }
        match super::link::link_content(&store.content_path(id), target, req.overwrite) {
            Ok(()) => Ok(Destination::Linked),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Status::already_exists(
                format!("{} already exists", target.display()),
            )),
            Err(e) if req.force_hard_link => Err(Status::failed_precondition(format!(
                "cannot hard-link the task to {} (force_hard_link): {e}",
                target.display()
            ))),
            Err(e) => {
                info!(error = %e, target = %target.display(), "cannot hard-link; copying");
                Ok(Destination::Copy(
                    Output::create(acting, target, req.overwrite).await?,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PieceOrder;

    #[test]
    fn scrambled_order_is_a_permutation_not_in_order() {
        for count in [0u32, 1, 2, 3, 8, 9] {
            let mut seq = PieceOrder::Scrambled.sequence(count);
            if count > 1 {
                assert_ne!(seq, PieceOrder::InOrder.sequence(count));
            }
            seq.sort();
            assert_eq!(seq, (0..count).collect::<Vec<_>>());
        }
    }
}
