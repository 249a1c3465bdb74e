//! The kernel's mount table as this process sees it (`table`), and the
//! mount calls a publish makes (`calls`).

pub mod calls;
pub mod table;

pub use calls::{bind_read_only, detach, mount_tmpfs, remount_read_only};
pub use table::{mounts_at, MountEntry};
