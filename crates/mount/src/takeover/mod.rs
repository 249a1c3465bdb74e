//! A mount that outlives its process: the FUSE connection and the names
//! the kernel was given are kept outside the process that serves them, so
//! the next `dfcache mount` at the same place takes them over after a
//! crash, an OOM kill or an upgrade, and programs keep their open files,
//! working directories and mappings.
//!
//! - `connection`: what is handed over (the `/dev/fuse` descriptor, what
//!   FUSE_INIT settled) and what the kernel offers the next process
//!   (FUSE_NOTIFY_RESEND of unanswered requests; POLLERR once unmounted);
//! - `journal`, `records`: the state journal, a memory file of keyed
//!   records held beside the connection;
//! - `state`: the hooks the file system calls as it gives the kernel new
//!   names; `restore`: rebuilding them in the next process;
//! - `gate`: how a process handing over stops at a clean point;
//! - `holder/`: the process that keeps the descriptors between servers, and
//!   the mount's side of it; `systemd`: systemd's file-descriptor store as
//!   the holder.

pub mod connection;
pub mod gate;
pub mod holder;
pub mod journal;
pub mod records;
pub mod restore;
pub mod state;
pub mod systemd;
