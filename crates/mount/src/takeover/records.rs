//! What the state journal holds: one record per thing the kernel may name
//! after a takeover that a new process could not derive, as protobuf
//! messages (prost), so a newer dfcache reads an older one's journal.
//!
//! Records are keyed (`Key`): a later record of a key replaces an earlier
//! one, and `NodeGone` / `Closed` remove a key. Task content, sizes of
//! finished imports and tree manifests come from the daemon once and are
//! kept here, so a takeover needs no daemon call before it serves.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One entry of the journal.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Record {
    #[prost(oneof = "Entry", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9")]
    pub entry: Option<Entry>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Entry {
    /// What the connection was set up with, and how many processes have
    /// served it.
    #[prost(message, tag = "1")]
    Connection(ConnectionRecord),
    /// A task file's inode (`tasks/<id>`, or the task behind a tree file).
    #[prost(message, tag = "2")]
    Task(TaskRecord),
    /// A tree opened under `trees/`: its inodes are numbered from its root
    /// in manifest order, so the manifest rebuilds them.
    #[prost(message, tag = "3")]
    Tree(TreeRecord),
    /// A name in `import/`: a file, a directory or a symbolic link.
    #[prost(message, tag = "4")]
    Import(ImportRecord),
    /// What an import file became (none while it is being written).
    #[prost(message, tag = "5")]
    Outcome(OutcomeRecord),
    /// An inode that is gone (an import entry removed and closed).
    #[prost(uint64, tag = "6")]
    NodeGone(u64),
    /// An open file handle the passthrough bookkeeping needs (mounts that
    /// pass opens through only).
    #[prost(message, tag = "7")]
    Open(OpenRecord),
    /// A handle closed (a file's or a directory listing's).
    #[prost(uint64, tag = "8")]
    Closed(u64),
    /// A directory listing taken at opendir, for a directory whose entries
    /// can change (`tasks/`, `trees/`, `import/` and its directories): the
    /// kernel reads it on by offset, so the next process answers from the
    /// same snapshot. Listings of a tree's directories are not recorded:
    /// the manifest gives them again, entry for entry.
    #[prost(message, tag = "9")]
    Listing(ListingRecord),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ConnectionRecord {
    /// The kernel's FUSE protocol minor version.
    #[prost(uint32, tag = "1")]
    pub minor: u32,
    /// The kernel granted FUSE passthrough at FUSE_INIT.
    #[prost(bool, tag = "2")]
    pub passthrough: bool,
    /// How many processes served the connection before this one; file
    /// handles carry it, so a new process never reuses an old number.
    #[prost(uint64, tag = "3")]
    pub generation: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskRecord {
    #[prost(uint64, tag = "1")]
    pub ino: u64,
    #[prost(string, tag = "2")]
    pub id: String,
    #[prost(uint64, tag = "3")]
    pub content_length: u64,
    #[prost(uint64, tag = "4")]
    pub piece_length: u64,
    #[prost(int64, tag = "5")]
    pub created_ns: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TreeRecord {
    #[prost(uint64, tag = "1")]
    pub root: u64,
    #[prost(uint64, tag = "2")]
    pub count: u64,
    #[prost(string, tag = "3")]
    pub id: String,
    #[prost(uint64, tag = "4")]
    pub parent: u64,
    #[prost(int64, tag = "5")]
    pub created_ns: i64,
    /// The canonical manifest, as read from the daemon.
    #[prost(bytes = "vec", tag = "6")]
    pub manifest: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ImportRecord {
    #[prost(uint64, tag = "1")]
    pub ino: u64,
    #[prost(uint64, tag = "2")]
    pub parent: u64,
    #[prost(bytes = "vec", tag = "3")]
    pub name: Vec<u8>,
    #[prost(uint32, tag = "4")]
    pub perm: u32,
    #[prost(uint32, tag = "5")]
    pub uid: u32,
    #[prost(uint32, tag = "6")]
    pub gid: u32,
    #[prost(int64, tag = "7")]
    pub atime_ns: i64,
    #[prost(int64, tag = "8")]
    pub mtime_ns: i64,
    #[prost(int64, tag = "9")]
    pub ctime_ns: i64,
    /// Still has its name.
    #[prost(bool, tag = "10")]
    pub linked: bool,
    #[prost(enumeration = "ImportKind", tag = "11")]
    pub kind: i32,
    /// A symbolic link's target.
    #[prost(bytes = "vec", tag = "12")]
    pub target: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum ImportKind {
    File = 0,
    Directory = 1,
    Symlink = 2,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OutcomeRecord {
    #[prost(uint64, tag = "1")]
    pub ino: u64,
    /// The task it became; None while it is being written.
    #[prost(message, optional, tag = "2")]
    pub finished: Option<FinishedRecord>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FinishedRecord {
    #[prost(string, tag = "1")]
    pub task_id: String,
    #[prost(uint64, tag = "2")]
    pub content_length: u64,
    #[prost(uint64, tag = "3")]
    pub piece_length: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OpenRecord {
    #[prost(uint64, tag = "1")]
    pub fh: u64,
    #[prost(uint64, tag = "2")]
    pub ino: u64,
    /// Open in passthrough, on backing file `backing_id`; else through
    /// the mount.
    #[prost(bool, tag = "3")]
    pub passthrough: bool,
    #[prost(uint32, tag = "4")]
    pub backing_id: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListingRecord {
    #[prost(uint64, tag = "1")]
    pub fh: u64,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<ListingEntry>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListingEntry {
    #[prost(uint64, tag = "1")]
    pub ino: u64,
    #[prost(enumeration = "EntryKind", tag = "2")]
    pub kind: i32,
    #[prost(bytes = "vec", tag = "3")]
    pub name: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum EntryKind {
    Directory = 0,
    File = 1,
    Symlink = 2,
}

/// What a record is about: later records of a key replace earlier ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Connection,
    Node(u64),
    Outcome(u64),
    Handle(u64),
}

impl Record {
    pub fn of(entry: Entry) -> Record {
        Record { entry: Some(entry) }
    }

    /// The key it sets, and whether it removes it instead (with the other
    /// keys it removes: an inode gone takes its outcome along).
    pub fn key(&self) -> Option<(Key, bool)> {
        Some(match self.entry.as_ref()? {
            Entry::Connection(_) => (Key::Connection, false),
            Entry::Task(t) => (Key::Node(t.ino), false),
            Entry::Tree(t) => (Key::Node(t.root), false),
            Entry::Import(i) => (Key::Node(i.ino), false),
            Entry::Outcome(o) => (Key::Outcome(o.ino), false),
            Entry::NodeGone(ino) => (Key::Node(*ino), true),
            Entry::Open(o) => (Key::Handle(o.fh), false),
            Entry::Closed(fh) => (Key::Handle(*fh), true),
            Entry::Listing(l) => (Key::Handle(l.fh), false),
        })
    }
}

/// A time as nanoseconds since the epoch (0 before it).
pub fn to_ns(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub fn from_ns(ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64)
}
