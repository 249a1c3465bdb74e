//! The daemon's side: each accepted connection's credentials are read
//! (the [`Caller`]), then the connection is sorted by its first byte, to
//! gRPC (tonic) or to the short-read loop, which answers ranges from the
//! store exactly as the gRPC read of a short range does.

use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tonic::{Code, Status};
use tracing::{debug, debug_span, warn, Instrument};

use crate::caller::PeerStream;
use crate::memory::TransferMemory;
use crate::server::read::{range_end, read_exact};
use crate::server::reply::status_of;
use crate::store::Store;
use dfcache_budget::Lease;
use dfcache_metrics::labels::grpc_code_name;
use dfcache_wire::short_reads::{
    reply_header, Request, HELLO, MAX_ID_LEN, MAX_LEN, MAX_MESSAGE, RANGE_BYTES,
};

/// A connection that has not said which protocol it speaks by then goes to
/// gRPC, whose own rules apply (an HTTP/2 client sends its preface at once).
const SORT_WITHIN: Duration = Duration::from_secs(10);
/// A request that has begun must be whole by then, and its reply taken:
/// a stalled client does not hold a task and a lease for ever. An idle
/// connection between requests has no deadline (clients keep a few open).
const EXCHANGE_WITHIN: Duration = Duration::from_secs(30);
/// The `method` label of short reads in the daemon's RPC metrics.
const METRICS_METHOD: &str = "ShortRead";

/// The connections for tonic, as its `serve_with_incoming` takes them,
/// each with its caller; short-read connections are served on the side
/// (unless `short_reads` is off: a daemon that stands in for one without
/// the channel). Dropping it (the server stopped) stops accepting and ends
/// the short-read connections.
pub struct Incoming {
    grpc: mpsc::Receiver<std::io::Result<PeerStream>>,
    accept: JoinHandle<()>,
}

impl Incoming {
    /// Replies are leased from `memory`'s budget until they are written.
    pub fn new(
        listener: UnixListener,
        store: Store,
        memory: TransferMemory,
        short_reads: bool,
    ) -> Self {
        let (tx, grpc) = mpsc::channel(16);
        Incoming {
            grpc,
            accept: tokio::spawn(accept(listener, store, memory, tx, short_reads)),
        }
    }
}

impl tokio_stream::Stream for Incoming {
    type Item = std::io::Result<PeerStream>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.grpc.poll_recv(cx)
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept(
    listener: UnixListener,
    store: Store,
    memory: TransferMemory,
    grpc: mpsc::Sender<std::io::Result<PeerStream>>,
    short_reads: bool,
) {
    // Owned here, so aborting this task ends every connection it served.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted.and_then(|(s, _)| PeerStream::accepted(s)) {
                Ok(stream) if short_reads => {
                    connections.spawn(sort(stream, store.clone(), memory.clone(), grpc.clone()));
                }
                Ok(stream) => {
                    let _ = grpc.send(Ok(stream)).await;
                }
                Err(e) => {
                    // Out of descriptors, most likely: let some close.
                    warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Hands `stream` to gRPC, or serves it here if it starts with the hello.
async fn sort(
    stream: PeerStream,
    store: Store,
    memory: TransferMemory,
    grpc: mpsc::Sender<std::io::Result<PeerStream>>,
) {
    let first = tokio::time::timeout(SORT_WITHIN, first_byte(stream.stream())).await;
    match first {
        Ok(Ok(Some(byte))) if byte == HELLO[0] => {
            let (stream, caller) = stream.into_parts();
            let span =
                debug_span!("short_reads", uid = caller.uid, gid = caller.gid, pid = ?caller.pid);
            serve(stream, store, memory).instrument(span).await
        }
        Ok(Ok(None)) | Ok(Err(_)) => {} // closed before a word
        Ok(Ok(Some(_))) | Err(_) => {
            let _ = grpc.send(Ok(stream)).await;
        }
    }
}

/// The first byte the peer sent, left in the socket; None at end of stream.
async fn first_byte(stream: &UnixStream) -> std::io::Result<Option<u8>> {
    let mut byte = 0u8;
    let n = stream
        .async_io(Interest::READABLE, || {
            // SAFETY: one byte into `byte`, alive for the call; the fd is
            // the stream's, open while it is borrowed.
            let n = unsafe {
                libc::recv(
                    stream.as_raw_fd(),
                    (&mut byte as *mut u8).cast(),
                    1,
                    libc::MSG_PEEK,
                )
            };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        })
        .await?;
    Ok((n == 1).then_some(byte))
}

/// The short-read loop of one connection: the hello, then requests until
/// the client closes or sends something malformed. Any caller may read any
/// task, as over gRPC; who it is is in the connection's span.
async fn serve(mut stream: UnixStream, store: Store, memory: TransferMemory) {
    let mut hello = [0u8; HELLO.len()];
    let said_hello = tokio::time::timeout(EXCHANGE_WITHIN, stream.read_exact(&mut hello)).await;
    if !matches!(said_hello, Ok(Ok(_))) || hello != HELLO {
        debug!("short-read connection without a proper hello; closed");
        return;
    }
    if stream.write_all(&HELLO).await.is_err() {
        return;
    }
    loop {
        let mut id_len = [0u8; 1];
        if stream.read_exact(&mut id_len).await.is_err() {
            return; // the client closed
        }
        let request = tokio::time::timeout(
            EXCHANGE_WITHIN,
            read_request(&mut stream, id_len[0] as usize),
        );
        let Ok(Some(request)) = request.await else {
            debug!("short-read connection closed: malformed, stalled or gone");
            return;
        };
        // The reply and its encoded copy, taken in one go once the budget
        // has room; the wait has no deadline of its own (the client has
        // one, and closes the connection when it gives up).
        let room = memory.budget().acquire(2 * u64::from(request.length)).await;
        let exchange = tokio::time::timeout(EXCHANGE_WITHIN, async {
            let started = std::time::Instant::now();
            let reply = answer(&store, room, &request).await;
            let code = reply.as_ref().map_or_else(|s| s.code(), |_| Code::Ok);
            dfcache_metrics::daemon().rpc(METRICS_METHOD, grpc_code_name(code), started.elapsed());
            // The reply (and the room) lives until its encoded copy is sent.
            let sent = stream.write_all(&encode_reply(&reply)).await.ok();
            drop(reply);
            sent
        });
        if !matches!(exchange.await, Ok(Some(()))) {
            debug!("short-read connection closed: malformed, stalled or gone");
            return;
        }
    }
}

/// The rest of a request whose id length was `id_len`; None if malformed.
async fn read_request(stream: &mut UnixStream, id_len: usize) -> Option<Request> {
    if id_len == 0 || id_len > MAX_ID_LEN {
        return None;
    }
    let mut rest = vec![0u8; id_len + RANGE_BYTES];
    stream.read_exact(&mut rest).await.ok()?;
    let task_id = std::str::from_utf8(&rest[..id_len]).ok()?.to_string();
    let mut range = [0u8; RANGE_BYTES];
    range.copy_from_slice(&rest[id_len..]);
    let (offset, length) = Request::range_of(range);
    (length > 0 && length <= MAX_LEN).then_some(Request {
        task_id,
        offset,
        length,
    })
}

/// The bytes asked for, clamped to the task's end, or why not: the same
/// answers as a gRPC read of the range.
async fn answer(store: &Store, room: Lease, request: &Request) -> Result<Bytes, Status> {
    let (meta, file, _lease) = store.open_content(&request.task_id).map_err(status_of)?;
    let end = range_end(
        meta.content_length,
        request.offset,
        Some(u64::from(request.length)),
    )?;
    read_exact(file, request.offset, end, room).await
}

fn encode_reply(reply: &Result<Bytes, Status>) -> Vec<u8> {
    let (status, payload) = match reply {
        Ok(content) => (0, &content[..]),
        Err(status) => {
            let message = status.message().as_bytes();
            let mut cut = message.len().min(MAX_MESSAGE as usize);
            while !status.message().is_char_boundary(cut) {
                cut -= 1;
            }
            (status.code() as i32 as u8, &message[..cut])
        }
    };
    let mut out = Vec::with_capacity(dfcache_wire::short_reads::REPLY_HEADER + payload.len());
    out.extend_from_slice(&reply_header(status, payload.len() as u32));
    out.extend_from_slice(payload);
    out
}
