//! Reading a task (or a byte range of it) through the streaming read.
//!
//! A server that honours the range sends a started message and chunks that
//! carry their offset. One that ignores the range (dragonfly-api 2.1.12)
//! sends the whole task from offset 0 without offsets: the reader then
//! counts the offsets itself and drops what lies outside the range.

use bytes::Bytes;
use tonic::{Code, Streaming};

use dfcache_wire::pb::dfdaemon::read_persistent_cache_task_response::Response as Msg;
use dfcache_wire::pb::dfdaemon::*;

use super::{Client, ClientError, ClientResult};

/// A byte range; `length: None` reads to the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadRange {
    pub offset: u64,
    pub length: Option<u64>,
}

/// The chunks of one read, in order.
pub struct TaskReader {
    stream: Streaming<ReadPersistentCacheTaskResponse>,
    task_id: String,
    range: ReadRange,
    /// Where the next chunk must start (in task offsets).
    next_offset: u64,
    /// Offset of the next byte of an un-offset stream (whole task from 0).
    raw_offset: u64,
    content_length: Option<u64>,
    /// A message received while looking for the started one.
    pending: Option<Option<Msg>>,
    socket: std::path::PathBuf,
    finished: bool,
    /// A message that takes longer than this to come fails the read.
    progress: std::time::Duration,
}

impl Client {
    /// Opens a read of `range` of task `task_id`. Fails with NotFound for an
    /// unknown task, and with a Daemon error (code UNIMPLEMENTED) against a
    /// legacy daemon.
    pub async fn read_task(&self, task_id: &str, range: ReadRange) -> ClientResult<TaskReader> {
        let req = ReadPersistentCacheTaskRequest {
            task_id: task_id.to_string(),
            offset: Some(range.offset),
            length: range.length,
        };
        let call = self.within("a read", self.deadlines.call, async {
            Ok(self.rpc.clone().read_persistent_cache_task(req).await)
        });
        let stream = match call.await? {
            Ok(resp) => resp.into_inner(),
            Err(s) if s.code() == Code::Unimplemented => {
                self.fall_back("ReadPersistentCacheTask");
                return Err(self.error(s, Some(task_id)));
            }
            Err(s) => return Err(self.error(s, Some(task_id))),
        };
        self.streaming_seen();
        let mut reader = TaskReader {
            stream,
            task_id: task_id.to_string(),
            range,
            next_offset: range.offset,
            raw_offset: 0,
            content_length: None,
            pending: None,
            socket: self.socket.clone(),
            finished: false,
            progress: self.deadlines.progress,
        };
        reader.peek_started().await?;
        Ok(reader)
    }
}

impl TaskReader {
    /// Task size, when the server said it (servers that honour ranges do).
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// Offset one past the last byte this read will deliver, when known.
    pub fn end(&self) -> Option<u64> {
        let to_end = self.content_length;
        match self.range.length {
            Some(len) => {
                Some(self.range.offset.saturating_add(len)).map(|e| to_end.map_or(e, |c| e.min(c)))
            }
            None => to_end,
        }
    }

    /// Consumes the started message if the server sends one. Needed before
    /// the first chunk so the caller knows the size.
    async fn peek_started(&mut self) -> ClientResult<()> {
        // A started message, if any, is always first; anything else is kept
        // for next_chunk by the pending slot.
        let first = self.recv().await?;
        match first {
            Some(Msg::ReadPersistentCacheTaskStartedResponse(started)) => {
                self.content_length = Some(started.content_length);
                Ok(())
            }
            other => {
                self.pending = other.map(Some);
                Ok(())
            }
        }
    }

    /// The next chunk with its task offset, or None at the end of the range.
    pub async fn next_chunk(&mut self) -> ClientResult<Option<(u64, Bytes)>> {
        loop {
            if self.finished {
                return Ok(None);
            }
            let msg = match self.pending.take() {
                Some(msg) => msg,
                None => self.recv().await?,
            };
            match msg {
                Some(Msg::ReadChunkResponse(chunk)) => {
                    if let Some(got) = self.place(chunk)? {
                        return Ok(Some(got));
                    }
                }
                Some(Msg::ReadPersistentCacheTaskFinishedResponse(_)) => {
                    self.finished = true;
                    if self.content_length.is_none() {
                        // No started message: the server sent the whole
                        // task, so its size is what came.
                        self.content_length = Some(self.raw_offset);
                    }
                    self.check_complete()?;
                    self.drain().await?;
                    return Ok(None);
                }
                Some(Msg::ReadPersistentCacheTaskStartedResponse(_)) => {
                    return Err(self.protocol("a second started message"));
                }
                None => return Err(self.protocol("the stream ended without the finished message")),
            }
        }
    }

    /// Positions a chunk; returns None when it lies wholly outside the range.
    fn place(&mut self, chunk: ReadChunkResponse) -> ClientResult<Option<(u64, Bytes)>> {
        let mut content = chunk.content;
        let offset = match chunk.offset {
            Some(offset) => offset,
            None => {
                // Whole-task stream: trim to the requested range.
                let start = self.raw_offset;
                self.raw_offset += content.len() as u64;
                let want_end = self
                    .range
                    .length
                    .map(|l| self.range.offset.saturating_add(l));
                let lo = self.next_offset.max(start);
                let hi = want_end.map_or(self.raw_offset, |e| e.min(self.raw_offset));
                if lo >= hi {
                    if want_end.is_some_and(|e| start >= e) {
                        // Past the range: the rest is not needed.
                        self.finished = true;
                    }
                    return Ok(None);
                }
                content = content.slice((lo - start) as usize..(hi - start) as usize);
                lo
            }
        };
        if offset != self.next_offset {
            return Err(self.protocol(&format!(
                "chunk at offset {offset}, expected {}",
                self.next_offset
            )));
        }
        self.next_offset += content.len() as u64;
        Ok(Some((offset, content)))
    }

    /// Reads the stream to its end (the gRPC status trailers). Dropping a
    /// stream before that resets it, and HTTP/2 refuses new streams once
    /// too many were reset: a mount doing thousands of small reads would
    /// start failing.
    async fn drain(&mut self) -> ClientResult<()> {
        while self.recv().await?.is_some() {}
        Ok(())
    }

    fn check_complete(&self) -> ClientResult<()> {
        match self.end() {
            Some(end) if self.next_offset < end => Err(self.protocol(&format!(
                "the read ended at offset {} before {end}",
                self.next_offset
            ))),
            _ => Ok(()),
        }
    }

    async fn recv(&mut self) -> ClientResult<Option<Msg>> {
        let message = tokio::time::timeout(self.progress, self.stream.message())
            .await
            .map_err(|_| ClientError::TimedOut {
                socket: self.socket.clone(),
                what: "the next chunk of a read",
                after: self.progress,
            })?;
        match message {
            Ok(Some(ReadPersistentCacheTaskResponse {
                response: Some(msg),
            })) => Ok(Some(msg)),
            Ok(Some(_)) => Err(self.protocol("a message with no content")),
            Ok(None) => Ok(None),
            Err(status) => Err(ClientError::from_status(
                status,
                Some(&self.task_id),
                &self.socket,
            )),
        }
    }

    fn protocol(&self, what: &str) -> ClientError {
        ClientError::Protocol(format!("reading task {}: {what}", self.task_id))
    }
}

impl Client {
    /// Whether the daemon has the streaming RPCs: asks for a task no one
    /// has (NOT_FOUND means yes; UNIMPLEMENTED, a released dfdaemon, no,
    /// which also switches this client to the legacy RPCs).
    pub async fn probe_streaming(&self) -> ClientResult<bool> {
        match self.read_task(&"0".repeat(64), ReadRange::default()).await {
            Ok(_) | Err(ClientError::NotFound(_)) => {
                self.streaming_seen();
                Ok(true)
            }
            Err(ClientError::Daemon {
                code: Code::Unimplemented,
                ..
            }) => {
                self.fall_back("ReadPersistentCacheTask");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}
