//! The FUSE file system: `tasks/<id>` read lazily through a block LRU,
//! `import/` streamed to the daemon on close.
//!
//! - `daemon/`: the calls the mount makes of a daemon (a trait), the gRPC
//!   client's implementation and an in-memory fake that injects faults;
//! - `fuse.rs`: the thin fuser adapter (kernel requests in, replies out);
//! - `filesystem.rs`, `read.rs`, `write.rs`: the semantics, as plain
//!   async methods returning values or errnos;
//! - `inodes.rs`, `import.rs`: the inode table and the import state machine;
//! - `handles.rs`: open files and directory listings (the handle table);
//! - `read_backend.rs`: where reads come from (the block cache with
//!   read-ahead, or whole-task downloads), behind one trait;
//! - `block_cache.rs`, `fetch_run.rs`, `flight.rs`, `readahead.rs`: the
//!   LRU of 4 MiB blocks and small spans, one daemon read landing in its
//!   spans, a span landing chunk by chunk, and the read-ahead policy; `geometry.rs`: a task's size and piece length;
//! - `task_files.rs`: whole-task downloads, for daemons without range reads;
//! - `space.rs`: the used and free space statfs reports;
//! - `mount.rs`: mounting, stale mounts, the sysfs read-ahead lever.

pub mod attr;
pub mod block_cache;
pub mod commit_tree;
pub mod daemon;
pub mod drop_behind;
pub mod error;
pub mod fetch_run;
pub mod filesystem;
pub mod flight;
pub mod fuse;
pub mod geometry;
pub mod handles;
pub mod import;
pub mod import_dirs;
pub mod inodes;
pub mod mount;
pub mod passthrough;
pub mod read;
pub mod read_backend;
pub mod readahead;
pub mod space;
pub mod task_files;
pub mod trees;
pub mod write;

#[cfg(test)]
mod tests;

pub use error::{Errno, FsError, FsResult};
pub use filesystem::{DfcacheFs, FsConfig, TASK_ID_XATTR};
pub use mount::{mount, MountSettings};
