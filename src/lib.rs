//! dfcache: Dragonfly persistent cache tasks as files.
//!
//! - [`domain`]: Dragonfly's rules (task ids, piece lengths, TTLs, chunks);
//! - [`grpc`]: the wire contract, the client, the embedded daemon's server;
//! - [`store`]: the embedded daemon's on-disk task store;
//! - [`mapping`]: container/host path mapping;
//! - [`digest`]: export digests;
//! - [`direct_io`]: reads and writes around the page cache;
//! - [`metrics`]: Prometheus families and their `/metrics` endpoint;
//! - [`tree`]: directory trees as manifests of tasks.

pub mod digest;
pub mod direct_io;
pub mod domain;
pub mod fs;
pub mod grpc;
pub mod mapping;
pub mod metrics;
pub mod short_reads;
pub mod store;
pub mod tree;
