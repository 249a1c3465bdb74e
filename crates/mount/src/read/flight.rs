//! A span of a task on its way from the daemon: the chunks received so far,
//! readable as they land, so a read waits only for the bytes it needs.
//!
//! The chunks are kept one by one (1 MiB each, and 1 MiB-aligned when the
//! span is): a read that lies in one chunk is a slice of it, with no copy,
//! and a span is never gathered into one buffer (a 64 MiB piece used to
//! be, holding it twice at the end of its fetch).

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

use crate::error::{Errno, FsResult};
use dfcache_wire::transport::Windows;

/// A span's bytes once complete: the received chunks, in order.
#[derive(Debug, Clone, Default)]
pub struct Chunks {
    parts: Arc<[Bytes]>,
    len: usize,
}

impl Chunks {
    /// The chunks of a complete span.
    pub fn complete(parts: Vec<Bytes>) -> Self {
        let len = parts.iter().map(Bytes::len).sum();
        Chunks {
            parts: Arc::from(parts),
            len,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes `from..to` (clamped to the span).
    pub fn slice(&self, from: usize, to: usize) -> Bytes {
        let to = to.min(self.len);
        gather(&self.parts, from.min(to), to)
    }
}

/// A span being fetched.
pub struct Flight {
    chunks: Mutex<Vec<Bytes>>,
    progress: watch::Sender<Progress>,
}

#[derive(Debug, Clone)]
enum Progress {
    Landed(usize),
    Done(Chunks),
    Failed(Errno),
}

impl Flight {
    pub fn new() -> Arc<Self> {
        let (progress, _) = watch::channel(Progress::Landed(0));
        Arc::new(Flight {
            chunks: Mutex::new(Vec::new()),
            progress,
        })
    }

    fn chunks(&self) -> MutexGuard<'_, Vec<Bytes>> {
        self.chunks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes landed so far.
    pub fn landed(&self) -> usize {
        self.chunks().iter().map(Bytes::len).sum()
    }

    /// Adds the next chunk and wakes the readers waiting for it.
    pub fn land(&self, chunk: Bytes) {
        // A large chunk is kept as received, uncopied: the mount's channel
        // takes frames small enough that it pins little more than itself
        // (see `Windows::BOUNDED`). A chunk shorter than a frame (a random
        // read's span) may sit in a buffer twice its size, so it is copied,
        // which costs little at that size. A 1 MiB kernel read is a slice
        // of one chunk, so the whole span is never gathered.
        let chunk = if chunk.len() < Windows::BOUNDED.frame as usize {
            Bytes::copy_from_slice(&chunk)
        } else {
            chunk
        };
        let landed = {
            let mut chunks = self.chunks();
            chunks.push(chunk);
            chunks.iter().map(Bytes::len).sum()
        };
        self.progress.send_replace(Progress::Landed(landed));
    }

    /// The span came whole: its chunks, for the cache and the readers.
    pub fn finish(&self) -> Chunks {
        // Cloned, not taken: a reader woken by an earlier `Landed` may
        // still be slicing them (the clones share the same memory).
        let chunks = Chunks::complete(self.chunks().clone());
        self.progress.send_replace(Progress::Done(chunks.clone()));
        chunks
    }

    pub fn fail(&self, errno: Errno) {
        self.progress.send_replace(Progress::Failed(errno));
    }

    /// Bytes `from..to` of the span, as soon as they have landed.
    pub async fn read(&self, from: usize, to: usize) -> FsResult<Bytes> {
        let mut progress = self.progress.subscribe();
        loop {
            let state = progress.borrow_and_update().clone();
            match state {
                Progress::Landed(n) if n >= to => return Ok(gather(&self.chunks(), from, to)),
                Progress::Done(chunks) if chunks.len() >= to => return Ok(chunks.slice(from, to)),
                Progress::Done(chunks) => {
                    return Err(Errno::EIO.because(std::io::Error::other(format!(
                        "the span ended at {} bytes, before {to}",
                        chunks.len()
                    ))))
                }
                Progress::Failed(errno) => return Err(errno),
                Progress::Landed(_) => {}
            }
            if progress.changed().await.is_err() {
                // The fetch ended without a final word (its task panicked).
                return Err(Errno::EIO);
            }
        }
    }

    /// Waits until the fetch is over, however it ended.
    pub async fn settled(&self) {
        let mut progress = self.progress.subscribe();
        while matches!(*progress.borrow_and_update(), Progress::Landed(_)) {
            if progress.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Bytes `from..to` of the concatenation of `chunks`: a slice, with no
/// copy, when they lie in one chunk (a 1 MiB FUSE read of 1 MiB chunks).
pub fn gather(chunks: &[Bytes], from: usize, to: usize) -> Bytes {
    let mut start = 0;
    let mut out: Option<BytesMut> = None;
    for chunk in chunks {
        let end = start + chunk.len();
        if end > from && start < to {
            let (lo, hi) = (from.max(start) - start, to.min(end) - start);
            if out.is_none() && start <= from && end >= to {
                return chunk.slice(lo..hi);
            }
            out.get_or_insert_with(|| BytesMut::with_capacity(to - from))
                .extend_from_slice(&chunk[lo..hi]);
        }
        if end >= to {
            break;
        }
        start = end;
    }
    out.map(BytesMut::freeze).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat() -> Vec<u8> {
        (0..1000u32).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn gather_matches_the_flat_bytes() {
        let flat = flat();
        let chunks: Vec<Bytes> = [&flat[..1], &flat[1..300], &flat[300..301], &flat[301..]]
            .iter()
            .map(|p| Bytes::copy_from_slice(p))
            .collect();
        for (from, to) in [
            (0, 1000),
            (0, 1),
            (1, 300),
            (5, 6),
            (299, 302),
            (300, 301),
            (999, 1000),
            (7, 7),
        ] {
            assert_eq!(
                &gather(&chunks, from, to)[..],
                &flat[from..to],
                "{from}..{to}"
            );
        }
    }

    #[test]
    fn a_read_within_one_chunk_shares_its_memory() {
        let chunk = Bytes::from(vec![7u8; 4096]);
        let chunks = Chunks::complete(vec![chunk.clone(), chunk.clone()]);
        let got = chunks.slice(4096 + 10, 4096 + 100);
        assert_eq!(got.as_ptr(), chunk[10..].as_ptr(), "no copy");
    }

    #[test]
    fn a_read_across_chunks_is_byte_exact_and_clamped_to_the_span() {
        let flat = flat();
        let parts: Vec<Bytes> = flat.chunks(100).map(Bytes::copy_from_slice).collect();
        let chunks = Chunks::complete(parts);
        assert_eq!(&chunks.slice(0, 1000)[..], &flat[..]);
        assert_eq!(&chunks.slice(150, 351)[..], &flat[150..351]);
        assert_eq!(&chunks.slice(990, 2000)[..], &flat[990..], "clamped");
    }
}
