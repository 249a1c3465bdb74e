//! Dragonfly's rules for persistent cache tasks, shared by every layer
//! (the store, the gRPC client and server, the file system, the CLI) so
//! each states them once:
//!
//! - [`task_id`]: content-addressed task ids, as dfdaemon computes them;
//! - [`piece`]: piece lengths (the default rule, the accepted range);
//! - [`ttl`]: the TTL range and default, and durations on the wire;
//! - the chunk size and queue depth of every byte stream.
//!
//! Nothing here does I/O; see docs/ARCHITECTURE.md for the layers.

pub mod piece;
pub mod task_id;
pub mod ttl;

/// Size of the chunks every byte stream moves (imports, reads, exports):
/// 1 MiB beat 4 MiB once HTTP/2 frames were raised to 1 MiB.
pub const CHUNK_SIZE: usize = 1 << 20;

/// Chunks queued between a producer and the socket (or the disk): the
/// memory bound of a stream, enough to keep both sides busy.
pub const CHUNK_QUEUE_DEPTH: usize = 4;
