//! The wire contract: what dfcache's client, daemon and mount agree on.
//!
//! - [`pb`]: code generated from proto/ (Dragonfly's dfdaemon API, and the
//!   CSI services kubelet calls on a node plugin);
//! - [`transport`]: HTTP/2 settings both ends of the Unix socket use;
//! - [`domain`]: Dragonfly's rules (task ids, piece lengths, TTLs, chunks);
//! - [`tree`]: directory trees as manifests of tasks;
//! - [`short_reads`]: the framing of the short-read channel;
//! - [`socket`]: binding a server's Unix socket;
//! - [`digest`]: export digests.

pub mod digest;
pub mod domain;
pub mod pb;
pub mod short_reads;
pub mod socket;
pub mod transport;
pub mod tree;
