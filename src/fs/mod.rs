//! The FUSE file system: `tasks/<id>` read lazily through a piece LRU,
//! `import/` streamed to the daemon on close.
//!
//! - `daemon/`: the calls the mount makes of a daemon (a trait), the gRPC
//!   client's implementation and an in-memory fake that injects faults;
//! - `fuse.rs`: the thin fuser adapter (kernel requests in, replies out);
//! - `filesystem.rs`, `read.rs`, `write.rs`: the semantics, as plain
//!   async methods returning values or errnos;
//! - `inodes.rs`, `import.rs`: the inode table and the import state machine;
//! - `handles.rs`: open files and directory listings (the handle table);
//! - `read_backend.rs`: where reads come from (the piece cache with
//!   read-ahead, or whole-task downloads), behind one trait;
//! - `piece_cache.rs`, `readahead.rs`: the piece LRU and read-ahead policy;
//! - `task_files.rs`: whole-task downloads, for daemons without range reads;
//! - `space.rs`: the used and free space statfs reports;
//! - `mount.rs`: mounting, stale mounts, the sysfs read-ahead lever.

pub mod attr;
pub mod commit_tree;
pub mod daemon;
pub mod error;
pub mod filesystem;
pub mod fuse;
pub mod handles;
pub mod import;
pub mod import_dirs;
pub mod inodes;
pub mod mount;
pub mod passthrough;
pub mod piece_cache;
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
