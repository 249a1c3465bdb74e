//! The spans of one daemon read: consecutive blocks of a read-ahead run
//! (or a single span), each landing in its own flight and handed to the
//! cache as soon as its last byte is in, before the rest of the run.

use std::sync::Arc;

use bytes::Bytes;

use crate::fs::block_cache::{BlockCache, SpanKey};
use crate::fs::error::{Errno, FsResult};
use crate::fs::flight::Flight;

/// The spans of one fetch, landing in order. Spans not done when it is
/// dropped are failed and forgotten.
pub(crate) struct Run<'a> {
    pub cache: &'a BlockCache,
    pub spans: Vec<(SpanKey, Arc<Flight>)>,
    /// Spans complete (and handed to the LRU) so far.
    pub done: usize,
}

impl Run<'_> {
    /// Lands a chunk, split where it crosses from one span to the next.
    pub fn land(&mut self, mut chunk: Bytes) -> FsResult<()> {
        while !chunk.is_empty() {
            let Some((key, flight)) = self.spans.get(self.done) else {
                return Err(Errno::EIO.because(std::io::Error::other(
                    "the daemon sent more bytes than the range asked",
                )));
            };
            let room = (key.len - flight.landed() as u64) as usize;
            let part = chunk.split_to(room.min(chunk.len()));
            flight.land(part);
            if flight.landed() as u64 == key.len {
                self.complete();
            }
        }
        Ok(())
    }

    /// The next span came whole: its readers are answered from the LRU.
    fn complete(&mut self) {
        let Some((key, flight)) = self.spans.get(self.done) else {
            return;
        };
        let mut inflight = self.cache.lock_inflight();
        inflight.remove(key);
        let span = flight.finish();
        self.cache.insert(key.clone(), span);
        self.done += 1;
    }

    /// The read ended: spans still short are finished as they are (their
    /// readers get EIO past what came) or failed with the read's error.
    pub fn end(&mut self, result: FsResult<()>) {
        let mut inflight = self.cache.lock_inflight();
        for (key, flight) in self.spans.drain(self.done..) {
            inflight.remove(&key);
            match &result {
                Ok(()) => {
                    flight.finish();
                }
                Err(errno) => flight.fail(errno.clone()),
            }
        }
    }
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        if self.done < self.spans.len() {
            self.end(Err(Errno::EIO));
        }
    }
}
