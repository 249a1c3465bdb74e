//! File attributes in the file system's own terms; the fuser adapter turns
//! them into `fuser::FileAttr`.

use std::time::SystemTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Directory,
    File,
    /// Only in trees (`trees/<id>/`).
    Symlink,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// Content and attributes never change (task files): the kernel may
    /// cache them for long.
    pub immutable: bool,
}

impl Attr {
    pub fn directory(ino: u64, perm: u16, owner: Owner, time: SystemTime) -> Self {
        Self {
            ino,
            kind: Kind::Directory,
            size: 0,
            perm,
            uid: owner.uid,
            gid: owner.gid,
            atime: time,
            mtime: time,
            ctime: time,
            immutable: false,
        }
    }

    /// An immutable, read-only task file.
    pub fn task(ino: u64, size: u64, owner: Owner, time: SystemTime) -> Self {
        Self {
            ino,
            kind: Kind::File,
            size,
            perm: 0o444,
            uid: owner.uid,
            gid: owner.gid,
            atime: time,
            mtime: time,
            ctime: time,
            immutable: true,
        }
    }
}

/// Who owns the mount's fixed entries: the user who mounted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// A change requested by setattr (chmod, chown, utimes, truncate).
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
}
