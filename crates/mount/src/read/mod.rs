//! The read path: a task's bytes from the daemon into the kernel.
//!
//! - `open_and_read.rs`: opening files and reading task content;
//! - `backend.rs`: where reads come from (the block cache with read-ahead,
//!   or whole-task downloads), behind one trait;
//! - `block_cache.rs`: the LRU of 4 MiB blocks and small spans, and the
//!   daemon reads (runs of spans) that fill it;
//! - `flight.rs`: a span landing chunk by chunk;
//! - `readahead.rs`: the read-ahead policy;
//! - `drop_behind.rs`: dropping a big task's pages behind a sequential reader;
//! - `geometry.rs`: a task's size and piece length.

pub mod backend;
pub mod block_cache;
pub mod drop_behind;
pub mod flight;
pub mod geometry;
pub mod open_and_read;
pub mod readahead;
