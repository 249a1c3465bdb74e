//! The embedded daemon: a single-node stand-in for Dragonfly's dfdaemon.
//!
//! - [`store`]: the on-disk task store;
//! - [`caller`]: who is on the other end of a connection, and acting on a
//!   path with that caller's rights;
//! - [`server`]: the gRPC server on the daemon's Unix socket;
//! - [`short_reads`]: the short-read channel beside it on the same socket;
//! - [`memory`]: what every transfer takes of the memory budget.

pub mod caller;
pub mod memory;
pub mod server;
pub mod short_reads;
pub mod store;
