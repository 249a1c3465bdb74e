//! Read blocks that are reused once every chunk cut from them is gone.
//!
//! A fresh 16 MiB block per read cost a memset and new pages: a fifth of
//! the client's CPU on a cold 2 GiB import (perf). A block read here is
//! handed out as `Bytes`; chunks cut from it with `Bytes::slice` share it,
//! and when the last one is dropped its storage goes back to the pool.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{AlignedBuf, ALIGN};

/// Aligned blocks of one size, with a few spares kept for reuse.
#[derive(Clone)]
pub struct BlockPool {
    block_size: usize,
    keep: usize,
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl BlockPool {
    /// `keep` should be about the number of blocks in flight at once.
    pub fn new(block_size: usize, keep: usize) -> Self {
        Self {
            block_size,
            keep,
            spare: Arc::default(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Lets `fill` read into the first `len` bytes (at most a block) of an
    /// aligned block and returns what it read.
    pub fn read(
        &self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> std::io::Result<usize>,
    ) -> std::io::Result<Bytes> {
        let len = len.min(self.block_size);
        let storage = self.spare.lock().ok().and_then(|mut spare| spare.pop());
        let mut buf = match storage {
            Some(storage) => AlignedBuf::from_storage(storage, self.block_size),
            None => AlignedBuf::from_storage(vec![0u8; self.block_size + ALIGN], self.block_size),
        };
        let n = fill(&mut buf.space()[..len])?;
        buf.set_len(n);
        Ok(Bytes::from_owner(Block {
            buf: Some(buf),
            pool: self.clone(),
        }))
    }
}

/// The owner behind the `Bytes` of one read.
struct Block {
    buf: Option<AlignedBuf>,
    pool: BlockPool,
}

impl AsRef<[u8]> for Block {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_ref().map_or(&[], |b| b.filled())
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        let Some(buf) = self.buf.take() else { return };
        if let Ok(mut spare) = self.pool.spare.lock() {
            if spare.len() < self.pool.keep {
                spare.push(buf.into_storage());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_aligned_exact_and_reused_after_their_last_slice() {
        let pool = BlockPool::new(8 * ALIGN, 1);
        let first = pool
            .read(3 * ALIGN + 5, |buf| {
                buf.fill(7);
                Ok(buf.len())
            })
            .unwrap();
        assert_eq!(first.len(), 3 * ALIGN + 5);
        assert!(first.iter().all(|&b| b == 7));
        assert_eq!(first.as_ptr() as usize % ALIGN, 0);
        let address = first.as_ptr();
        let slice = first.slice(ALIGN..);
        drop(first);
        // Still held by the slice: a new read gets other storage.
        let second = pool.read(ALIGN, |_| Ok(0)).unwrap();
        assert!(second.is_empty());
        drop(slice);
        drop(second);
        let third = pool.read(ALIGN, |buf| Ok(buf.len())).unwrap();
        assert_eq!(third.as_ptr(), address, "the storage came back");
    }
}
