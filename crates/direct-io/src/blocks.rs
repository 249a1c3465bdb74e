//! Read blocks that are reused once every chunk cut from them is gone.
//!
//! A fresh 16 MiB block per read cost a memset and new pages: a fifth of
//! the client's CPU on a cold 2 GiB import (perf). A block read here is
//! handed out as `Bytes`; chunks cut from it with `Bytes::slice` share it,
//! and when the last one is dropped its storage goes back to the pool.
//!
//! A pool with a memory budget (the daemon's) leases every block from it,
//! spares included: a spare keeps its lease, so what the pool keeps for
//! reuse is counted like what is in use, and spares are given back to the
//! budget as soon as anybody has to wait for it.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use dfcache_budget::{Lease, MemoryBudget};

use super::{AlignedBuf, ALIGN};

/// Aligned blocks of one size, with a few spares kept for reuse.
#[derive(Clone)]
pub struct BlockPool {
    block_size: usize,
    keep: usize,
    spare: Arc<Mutex<Vec<Spare>>>,
    budget: Option<MemoryBudget>,
}

/// A block's storage and what it holds of the budget.
struct Spare {
    storage: Vec<u8>,
    lease: Lease,
}

/// Room for one block: a spare's storage, or a lease for new storage.
pub struct BlockRoom {
    storage: Option<Vec<u8>>,
    lease: Lease,
    home: Option<StorageSlot>,
}

/// One block's storage kept by its owner (a reader with a reserve of its
/// own) rather than in the pool's spares.
pub type StorageSlot = Arc<Mutex<Option<Vec<u8>>>>;

impl BlockRoom {
    /// Room paid by `lease` (of a budget other than the pool's: a
    /// transfer's own reserve), in the storage `home` keeps if it keeps
    /// one. When the block is freed its storage goes back to `home` and
    /// then its lease to its budget, so the owner reuses the same pages
    /// each time (a fresh block costs new pages, see above); never to the
    /// pool's spares, where another transfer could keep the reserve's
    /// bytes from their owner.
    pub fn homed(lease: Lease, home: StorageSlot) -> Self {
        let storage = lock(&home).take();
        Self {
            storage,
            lease,
            home: Some(home),
        }
    }
}

impl BlockPool {
    /// `keep` should be about the number of blocks in flight at once.
    pub fn new(block_size: usize, keep: usize) -> Self {
        Self {
            block_size,
            keep,
            spare: Arc::default(),
            budget: None,
        }
    }

    /// The same pool, leasing every block it allocates from `budget`.
    pub fn with_budget(mut self, budget: MemoryBudget) -> Self {
        let spare = Arc::downgrade(&self.spare);
        budget.on_wait(move || {
            if let Some(spare) = spare.upgrade() {
                lock(&spare).clear();
            }
        });
        self.budget = Some(budget);
        self
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Bytes one block's storage takes (its alignment slack included).
    pub fn block_bytes(&self) -> u64 {
        (self.block_size + ALIGN) as u64
    }

    /// Room for one block without waiting: a spare, or new storage's bytes
    /// from the pool's budget if it has them now (always without a
    /// budget); None when neither.
    pub fn room_now(&self) -> Option<BlockRoom> {
        if let Some(Spare { storage, lease }) = lock(&self.spare).pop() {
            return Some(BlockRoom {
                storage: Some(storage),
                lease,
                home: None,
            });
        }
        let lease = match &self.budget {
            Some(budget) => budget.try_acquire(self.block_bytes())?,
            None => Lease::empty(),
        };
        Some(BlockRoom {
            storage: None,
            lease,
            home: None,
        })
    }

    /// Room for one block: [`BlockPool::room_now`]'s, or else new
    /// storage's bytes once the pool's budget has them.
    pub async fn room(&self) -> BlockRoom {
        if let Some(room) = self.room_now() {
            return room;
        }
        let lease = match &self.budget {
            Some(budget) => budget.acquire(self.block_bytes()).await,
            None => Lease::empty(),
        };
        BlockRoom {
            storage: None,
            lease,
            home: None,
        }
    }

    /// Lets `fill` read into the first `len` bytes (at most a block) of an
    /// aligned block and returns what it read. Without a budget only: a
    /// pool with one reads into [`BlockPool::room_now`]'s room.
    pub fn read(
        &self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> std::io::Result<usize>,
    ) -> std::io::Result<Bytes> {
        let room = match lock(&self.spare).pop() {
            Some(Spare { storage, lease }) => BlockRoom {
                storage: Some(storage),
                lease,
                home: None,
            },
            None => BlockRoom {
                storage: None,
                lease: Lease::empty(),
                home: None,
            },
        };
        self.read_into(room, len, fill)
    }

    /// `read` into the block `room` makes room for.
    pub fn read_into(
        &self,
        room: BlockRoom,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> std::io::Result<usize>,
    ) -> std::io::Result<Bytes> {
        let len = len.min(self.block_size);
        let storage = room
            .storage
            .filter(|s| s.len() == self.block_size + ALIGN)
            .unwrap_or_else(|| vec![0u8; self.block_size + ALIGN]);
        let mut buf = AlignedBuf::from_storage(storage, self.block_size);
        // On an error the block and its lease go back through the drop.
        let mut block = Block {
            buf: None,
            lease: Some(room.lease),
            home: room.home,
            pool: self.clone(),
        };
        let n = fill(&mut buf.space()[..len]);
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                block.buf = Some(buf);
                return Err(e);
            }
        };
        buf.set_len(n);
        block.buf = Some(buf);
        Ok(Bytes::from_owner(block))
    }

    /// Keeps a block for reuse unless enough are kept or somebody waits
    /// for the budget.
    fn give_back(&self, storage: Vec<u8>, lease: Lease) {
        if let Some(budget) = &self.budget {
            if budget.waiting() > 0 || !lease.is_of(budget) {
                return;
            }
        }
        let mut spare = lock(&self.spare);
        if spare.len() < self.keep {
            spare.push(Spare { storage, lease });
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The owner behind the `Bytes` of one read.
struct Block {
    buf: Option<AlignedBuf>,
    lease: Option<Lease>,
    /// Where the storage goes instead of the pool (see `BlockRoom::homed`).
    home: Option<StorageSlot>,
    pool: BlockPool,
}

impl AsRef<[u8]> for Block {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_ref().map_or(&[], |b| b.filled())
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        let (Some(buf), Some(lease)) = (self.buf.take(), self.lease.take()) else {
            return;
        };
        match self.home.take() {
            Some(home) => {
                // The storage first: once the lease is back, its owner may
                // take the room and look for the storage.
                *lock(&home) = Some(buf.into_storage());
                drop(lease);
            }
            None => self.pool.give_back(buf.into_storage(), lease),
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

    #[tokio::test]
    async fn leased_blocks_and_spares_count_and_a_wait_sheds_the_spares() {
        let block = 64 * ALIGN;
        let budget = MemoryBudget::new(2 * (block + ALIGN) as u64);
        let pool = BlockPool::new(block, 2).with_budget(budget.clone());
        let read = |room| pool.read_into(room, block, |buf| Ok(buf.len()));
        let a = read(pool.room_now().unwrap()).unwrap();
        let b = read(pool.room_now().unwrap()).unwrap();
        assert_eq!(budget.held(), budget.capacity(), "two blocks fill it");
        assert!(pool.room_now().is_none(), "no room for a third");
        drop((a, b));
        assert_eq!(
            budget.held(),
            budget.capacity(),
            "kept as spares, still leased"
        );
        // A spare is reused without a new lease.
        let c = read(pool.room_now().unwrap()).unwrap();
        drop(c);
        // Anybody else waiting gets the spares' bytes.
        let other = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            budget.acquire(budget.capacity()),
        )
        .await
        .expect("the spares were given back");
        assert_eq!(other.bytes(), budget.capacity());
        drop(other);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn a_failed_read_gives_its_lease_back() {
        let budget = MemoryBudget::new(1 << 20);
        let pool = BlockPool::new(4 * ALIGN, 0).with_budget(budget.clone());
        let room = pool.room_now().unwrap();
        assert!(budget.held() > 0);
        let err = pool
            .read_into(room, ALIGN, |_| Err(std::io::Error::other("disk")))
            .unwrap_err();
        assert_eq!(err.to_string(), "disk");
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn a_homed_block_goes_back_to_its_owner_not_to_the_spares() {
        let (shared, reserve) = (MemoryBudget::new(1 << 20), MemoryBudget::new(1 << 20));
        let pool = BlockPool::new(4 * ALIGN, 4).with_budget(shared.clone());
        let home = StorageSlot::default();
        let read = |room| pool.read_into(room, ALIGN, |buf| Ok(buf.len())).unwrap();
        let block = read(BlockRoom::homed(
            reserve.acquire(pool.block_bytes()).await,
            home.clone(),
        ));
        let address = block.as_ptr();
        assert_eq!((shared.held(), reserve.held()), (0, pool.block_bytes()));
        drop(block);
        assert_eq!(reserve.held(), 0, "the reserve has its bytes back");
        assert!(pool.room_now().is_some_and(|room| room.storage.is_none()));
        // The owner reads into the same storage next time.
        let again = read(BlockRoom::homed(
            reserve.acquire(pool.block_bytes()).await,
            home.clone(),
        ));
        assert_eq!(again.as_ptr(), address);
        assert!(lock(&home).is_none(), "in use");
    }
}
