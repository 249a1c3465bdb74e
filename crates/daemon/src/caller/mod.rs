//! Who is calling, and the daemon acting on a path with that caller's
//! rights rather than its own.
//!
//! - [`Caller`]: a connection's peer as the kernel recorded it when it
//!   connected (`SO_PEERCRED`, `SO_PEERGROUPS`), read once per accepted
//!   connection;
//! - [`PeerStream`]: an accepted connection that carries its caller to the
//!   gRPC handlers (a request extension, through tonic's `Connected`);
//! - [`Acting`]: runs a file-system operation with a caller's identity, on
//!   a thread of its own, so no other work of the daemon ever runs with it;
//! - [`open`]: opens a path on such a thread without the daemon process's
//!   own access to /proc.

mod acting;
mod credentials;
mod open;
mod stream;

pub use acting::{Acting, ActingError};
pub use credentials::Caller;
pub use open::open;
pub use stream::PeerStream;
