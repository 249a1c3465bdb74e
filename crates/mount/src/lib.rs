//! The FUSE file system: `tasks/<id>` read lazily through a block LRU,
//! `import/` streamed to the daemon on close, `trees/<id>/` as read-only
//! views of committed trees.
//!
//! By concern:
//! - `read/`: the read path (the block cache and the fetches that fill it,
//!   read-ahead, drop-behind, where reads come from, a task's geometry);
//! - `import/`: the import path (the import state machine, writes, import
//!   directories, committing a directory as a tree);
//! - `trees/`: the trees view;
//! - `passthrough/`: handing local content files to the kernel;
//! - `task_files/`: whole-task downloads, for daemons without range reads;
//! - `daemon/`: the seam to the daemon (a trait, the gRPC client's
//!   implementation, an in-memory fake that injects faults, metering).
//!
//! The core: `filesystem.rs` (the semantics, as plain async methods
//! returning values or errnos), `fuse.rs` (the thin fuser adapter),
//! `inodes.rs` and `task_node.rs` (the inode table), `handles.rs` (open
//! files and directory listings), `attr.rs`, `error.rs`, `space.rs`
//! (statfs), `mount.rs` (mounting, taking a mount over, stale mounts, the
//! sysfs read-ahead lever).
//!
//! `takeover/`: a mount that outlives its process (the connection and the
//! state journal kept by a holder, handed to the next process).

pub mod attr;
pub mod daemon;
pub mod error;
pub mod filesystem;
pub mod fuse;
pub mod handles;
pub mod import;
pub mod inodes;
pub mod mount;
pub mod passthrough;
pub mod read;
pub mod space;
pub mod takeover;
pub mod task_files;
pub mod task_node;
pub mod trees;

#[cfg(test)]
mod tests;

pub use error::{Errno, FsError, FsResult};
pub use filesystem::{DfcacheFs, FsConfig, TASK_ID_XATTR};
pub use mount::{adopt, mount, MountSettings, Served};
