//! The mount's side: a few connections kept open, one request on each at
//! a time, and gRPC for everything when the daemon lacks the channel.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tonic::{Code, Status};

use crate::error::{ClientError, ClientResult};
use dfcache_wire::short_reads::{parse_reply_header, Request, HELLO, MAX_MESSAGE, REPLY_HEADER};

/// Connections open at once, at most: more concurrent short reads than
/// this go through gRPC rather than wait.
const MAX_CONNECTIONS: usize = 32;

const UNKNOWN: u8 = 0;
const OFFERED: u8 = 1;
const LACKING: u8 = 2;

pub struct ShortReads {
    socket: PathBuf,
    idle: Mutex<Vec<UnixStream>>,
    open: AtomicUsize,
    offered: AtomicU8,
}

/// What a connection's request came back with.
enum Reply {
    Content(Bytes),
    Failed(Status),
}

impl ShortReads {
    pub fn new(socket: PathBuf) -> Self {
        Self {
            socket,
            idle: Mutex::new(Vec::new()),
            open: AtomicUsize::new(0),
            offered: AtomicU8::new(UNKNOWN),
        }
    }

    /// Whether the daemon answered the hello: None until a read asked.
    pub fn offered(&self) -> Option<bool> {
        match self.offered.load(Ordering::Relaxed) {
            OFFERED => Some(true),
            LACKING => Some(false),
            _ => None,
        }
    }

    /// Bytes `offset..offset + length` of a task (fewer at its end), or
    /// None when this read should go through gRPC: the daemon lacks the
    /// channel, cannot be reached (gRPC then says why), or every
    /// connection is busy. Connecting, the hello, and the request with its
    /// reply each take at most `within` (the mount's --fetch-timeout).
    pub async fn read(
        &self,
        task_id: &str,
        offset: u64,
        length: u64,
        within: Duration,
    ) -> ClientResult<Option<Bytes>> {
        if self.offered() == Some(false) {
            return Ok(None);
        }
        let Ok(length) = u32::try_from(length) else {
            return Ok(None);
        };
        let request = Request {
            task_id: task_id.to_string(),
            offset,
            length,
        };
        // None: a range (or id) out of the channel's bounds, for gRPC.
        let Some(wire) = request.encode() else {
            return Ok(None);
        };
        // A kept connection may have died with a daemon restart since its
        // last use: its failure is retried once on a new one.
        let mut reused = true;
        loop {
            let idle = if reused { self.take_idle() } else { None };
            let conn = match idle {
                Some(conn) => conn,
                None => {
                    reused = false;
                    match self.connect(within).await? {
                        Some(conn) => conn,
                        None => return Ok(None),
                    }
                }
            };
            match self.exchange(conn, &wire, request.length, within).await {
                Err(ClientError::ConnectionLost { .. }) if reused => reused = false,
                Err(e) => return Err(e),
                Ok(Reply::Content(bytes)) => return Ok(Some(bytes)),
                Ok(Reply::Failed(status)) => {
                    return Err(ClientError::from_status(
                        status,
                        Some(task_id),
                        &self.socket,
                    ))
                }
            }
        }
    }

    fn take_idle(&self) -> Option<Conn<'_>> {
        let stream = self.lock_idle().pop()?;
        Some(Conn {
            stream: Some(stream),
            owner: self,
            kept: false,
        })
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<UnixStream>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new connection that said hello; None when the daemon lacks the
    /// channel, is not there, or the connections are all in use.
    async fn connect(&self, within: Duration) -> ClientResult<Option<Conn<'_>>> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Ok(None);
        }
        // Counted from here: dropped on any failure below.
        let mut conn = Conn {
            stream: None,
            owner: self,
            kept: false,
        };
        let stream = match tokio::time::timeout(within, UnixStream::connect(&self.socket)).await {
            Ok(Ok(stream)) => stream,
            // No daemon: gRPC's read fails the same way, with its words.
            Ok(Err(_)) => return Ok(None),
            Err(_) => return Err(self.timed_out("a connection", within)),
        };
        let stream = conn.stream.insert(stream);
        let hello = async {
            stream.write_all(&HELLO).await?;
            let mut answer = [0u8; HELLO.len()];
            stream.read_exact(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        match tokio::time::timeout(within, hello).await {
            Ok(Ok(answer)) if answer == HELLO => {
                self.offered.store(OFFERED, Ordering::Relaxed);
                Ok(Some(conn))
            }
            // Another answer, or the connection closed: a daemon that
            // speaks gRPC only.
            Ok(_) => {
                if self.offered.swap(LACKING, Ordering::Relaxed) != LACKING {
                    tracing::info!(socket = %self.socket.display(), "the daemon has no short-read channel; random reads go through gRPC");
                }
                Ok(None)
            }
            Err(_) => Err(self.timed_out("the short-read hello", within)),
        }
    }

    /// One request and its reply; the connection is kept for the next
    /// one only if the exchange completed.
    async fn exchange(
        &self,
        mut conn: Conn<'_>,
        wire: &[u8],
        asked: u32,
        within: Duration,
    ) -> ClientResult<Reply> {
        let Some(stream) = conn.stream.as_mut() else {
            return Err(ClientError::Protocol(
                "a short-read connection without a socket".into(),
            ));
        };
        let socket = &self.socket;
        let lost = |e: std::io::Error| ClientError::ConnectionLost {
            socket: socket.clone(),
            message: e.to_string(),
        };
        let round_trip = async {
            stream.write_all(wire).await.map_err(lost)?;
            let mut header = [0u8; REPLY_HEADER];
            stream.read_exact(&mut header).await.map_err(lost)?;
            let (status, len) = parse_reply_header(header);
            let bound = if status == 0 { asked } else { MAX_MESSAGE };
            if len > bound {
                return Err(ClientError::Protocol(format!(
                    "a short-read reply of {len} bytes (status {status}), more than {bound}"
                )));
            }
            let mut payload = vec![0u8; len as usize];
            stream.read_exact(&mut payload).await.map_err(lost)?;
            Ok(if status == 0 {
                Reply::Content(Bytes::from(payload))
            } else {
                let message = String::from_utf8_lossy(&payload).into_owned();
                Reply::Failed(Status::new(Code::from_i32(i32::from(status)), message))
            })
        };
        let reply = tokio::time::timeout(within, round_trip)
            .await
            .map_err(|_| self.timed_out("a short read", within))??;
        conn.keep();
        Ok(reply)
    }

    fn timed_out(&self, what: &'static str, after: Duration) -> ClientError {
        ClientError::TimedOut {
            socket: self.socket.clone(),
            what,
            after,
        }
    }
}

/// An open connection, counted until it is dropped or kept for reuse.
struct Conn<'a> {
    stream: Option<UnixStream>,
    owner: &'a ShortReads,
    kept: bool,
}

impl Conn<'_> {
    /// Back to the idle ones, still counted.
    fn keep(mut self) {
        if let Some(stream) = self.stream.take() {
            self.owner.lock_idle().push(stream);
            self.kept = true;
        }
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.owner.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
