//! What the daemon's transfers take of its memory budget
//! (`--memory-budget`), and how much, so that the daemon's memory stays
//! under the budget plus a fixed overhead however many transfers there are.
//!
//! Measured before the budget (`scripts/measure-concurrency.sh`): 50
//! imports of 64 MiB at once took the daemon to 1.4 GB of RSS, 50 exports
//! to 2.6 GB, 200 exports to 5.9 GB: per transfer, HTTP/2 windows of
//! 16 MiB, two 16 MiB blocks and queued chunks, with nothing bounding
//! their sum. Each of those holders now takes its bytes from one budget
//! before it allocates:
//!
//! | holder | taken | when |
//! |---|---|---|
//! | an import's receive window, message being decoded, chunk queue and first two blocks | [`TransferMemory::import_share`] | once the import may start (after its `--max-concurrent-imports` slot), for its whole life |
//! | an import's larger blocks (up to [`TransferMemory::block`]) | the block | when the budget has room at once; otherwise it goes on with the blocks it has |
//! | a read's encoded messages and send buffer, and its reserve: room for one block | [`SEND_SHARE`] and a block, in one go | before its first block; the send share until the connection has written (or discarded) its last encoded message (`server/outgoing.rs`) |
//! | a read's block (direct, up to [`TransferMemory::block`]) or buffered read (1 MiB) | a spare block, or room free in the budget, or else room in its reserve | before it is read, until its last chunk is encoded for sending |
//! | a short read's reply | twice its length (it and its encoded copy), in one go | before it is read, until it is sent |
//! | a legacy download's encoded piece and its reserve: room for one piece | two pieces' length, in one go | before its first piece; the encoded piece's room until the connection has written its last encoded message |
//! | a legacy download's piece | its length, from room free in the budget, or else from its reserve | before it is read, until it is sent and written |
//!
//! A transfer waits for what it takes, in turn; it never fails for want of
//! budget. What it holds is given back when it ends, however it ends.
//!
//! No transfer waits for the budget while holding part of it: what a
//! transfer keeps to its end is taken in one go, with a reserve it falls
//! back on for the rest, which only its own client's progress gives back.
//! (Reads that each held a send share while waiting for a block could
//! fill the budget with send shares and wait for ever.) An import's share is its reserve: its queue and first blocks.
//!
//! What is not counted is per connection: the connection's own state
//! (about 20 KiB: 200 exports waiting under a 16 MiB budget raised the
//! peak by 4 MiB), and the window of an import still waiting for its turn
//! ([`RECEIVE`]'s stream window, 256 KiB), which HTTP/2 lets its client
//! fill before the daemon reads a byte (200 imports under a 16 MiB budget:
//! 50 MiB more than 16).

use dfcache_budget::{Lease, MemoryBudget};
use dfcache_direct_io::{BlockPool, ALIGN};
use dfcache_wire::domain::{CHUNK_QUEUE_DEPTH, CHUNK_SIZE};
use dfcache_wire::transport::Windows;

/// Default `--memory-budget`: room for a few transfers at full speed
/// (an import or an export at full speed holds about 40 MiB), small
/// enough for a pod of 512 MiB with room to spare.
pub const DEFAULT_MEMORY_BUDGET: u64 = 256 << 20;
/// The smallest budget accepted: one import's share and a block.
pub const MIN_MEMORY_BUDGET: u64 = 16 << 20;

/// What clients may send the daemon ahead of what it has read.
pub const RECEIVE: Windows = Windows::DAEMON;

/// Largest block: a direct read, or a block an import is staged in
/// (`dd iflag=direct` of 2 GiB: 1 MiB 1.68 s, 16 MiB 1.15 s).
const MAX_BLOCK: usize = 16 << 20;
/// Smallest block, for a budget too small for more.
const MIN_BLOCK: usize = 1 << 20;
/// Blocks kept for reuse (a fresh block costs new pages; see `BlockPool`).
const SPARE_BLOCKS: usize = 4;

/// What a response being sent holds beyond its chunks, from its first
/// block until the connection has written its last message: the messages
/// tonic encodes (a copy of a 1 MiB chunk each, the chunk's own bytes
/// given back once copied) waiting in hyper's and the connection's
/// queues. Uncounted, 50 exports at once held about 90 MiB more than
/// their blocks. Room for what hyper and h2 keep in flight for a stream:
/// about two encoded chunks (see `server/outgoing.rs`).
pub const SEND_SHARE: u64 = 3 << 20;

/// The daemon's budget and the sizes it implies.
#[derive(Clone)]
pub struct TransferMemory {
    budget: MemoryBudget,
    block: usize,
    read_blocks: BlockPool,
}

impl TransferMemory {
    pub fn new(budget: MemoryBudget) -> Self {
        let block = block_for(budget.capacity());
        Self {
            read_blocks: BlockPool::new(block, SPARE_BLOCKS).with_budget(budget.clone()),
            budget,
            block,
        }
    }

    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// The largest block a transfer uses: 16 MiB, or an eighth of a
    /// smaller budget (at least 1 MiB), so that a few transfers at full
    /// speed fit in it.
    pub fn block(&self) -> usize {
        self.block
    }

    /// The blocks of direct reads, leased from the budget.
    pub fn read_blocks(&self) -> &BlockPool {
        &self.read_blocks
    }

    /// What an import holds for its whole life: what its stream may have
    /// received and not yet read (`from_stream`), its chunk queue and its
    /// first two blocks. `expected` is its announced length, if any.
    pub fn import_share(&self, expected: Option<u64>, from_stream: bool) -> u64 {
        let cap = |n: u64| expected.map_or(n, |len| n.min(aligned_up(len)));
        let receive = if from_stream {
            cap(u64::from(RECEIVE.stream)) + cap(CHUNK_SIZE as u64) + u64::from(RECEIVE.frame)
        } else {
            0
        };
        receive + cap(queue_bytes()) + 2 * first_block(expected) as u64
    }

    /// Bytes for the chunk queue out of an import's share.
    pub fn queue_share(&self, share: &mut Lease, expected: Option<u64>) -> Lease {
        let bytes = expected.map_or(queue_bytes(), |len| queue_bytes().min(aligned_up(len)));
        share.split(bytes).unwrap_or_default()
    }

    /// What one queued chunk of `len` bytes holds: its bytes, and the rest
    /// of the frame it may have been decoded from.
    pub fn chunk_cost(len: usize) -> u64 {
        len as u64 + u64::from(RECEIVE.frame)
    }
}

/// `len` rounded up to the alignment; any announced length, however
/// large, without overflow (a client may announce u64::MAX).
fn aligned_up(len: u64) -> u64 {
    len.checked_next_multiple_of(ALIGN as u64)
        .unwrap_or(u64::MAX)
}

/// A queue of `CHUNK_QUEUE_DEPTH` 1 MiB chunks, each counted with the
/// frame it may pin.
fn queue_bytes() -> u64 {
    CHUNK_QUEUE_DEPTH as u64 * TransferMemory::chunk_cost(CHUNK_SIZE)
}

/// The first block an import stages into: small for small content, so
/// many small imports (files through the mount) do not each hold 16 MiB
/// (200 imports of 100 KB: daemon peak RSS 74 MiB with 16 MiB blocks from
/// the start, 17 MiB with blocks that start small and double).
pub fn first_block(expected: Option<u64>) -> usize {
    const FIRST: usize = 1 << 20;
    expected.map_or(FIRST, |n| {
        (n.min(FIRST as u64) as usize)
            .next_multiple_of(ALIGN)
            .clamp(ALIGN, FIRST)
    })
}

/// A power of two from `MIN_BLOCK` to `MAX_BLOCK`, at most an eighth of
/// `capacity`.
fn block_for(capacity: u64) -> usize {
    let eighth = usize::try_from(capacity / 8).unwrap_or(usize::MAX);
    let pow2 = if eighth == 0 {
        0
    } else {
        1usize << (usize::BITS - 1 - eighth.leading_zeros())
    };
    pow2.clamp(MIN_BLOCK, MAX_BLOCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn blocks_shrink_with_small_budgets() {
        for (budget, block) in [
            (4096 * MIB, 16),
            (256 * MIB, 16),
            (200 * MIB, 16),
            (64 * MIB, 8),
            (16 * MIB, 2),
            (MIB, 1),
        ] {
            assert_eq!(block_for(budget), block << 20, "budget {budget}");
        }
    }

    #[test]
    fn small_imports_take_a_small_share() {
        let memory = TransferMemory::new(MemoryBudget::new(256 * MIB));
        let unknown = memory.import_share(None, true);
        let small = memory.import_share(Some(100_000), true);
        assert!(unknown < 16 * MIB, "{unknown}");
        assert!(small < unknown / 4, "{small} vs {unknown}");
        assert!(memory.import_share(None, false) < unknown);
        // No announced length overflows, however large.
        assert_eq!(memory.import_share(Some(u64::MAX), true), unknown);
    }
}
