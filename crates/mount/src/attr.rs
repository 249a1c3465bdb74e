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
    pub fn task(ino: u64, size: u64, owner: Owner, modes: Modes, time: SystemTime) -> Self {
        Self {
            ino,
            kind: Kind::File,
            size,
            perm: modes.task_file(),
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

/// Permission bits of the mount's own entries (`--file-mode`,
/// `--dir-mode`, as mountpoint-s3 names them). The kernel enforces them
/// when the mount has `default_permissions` (with `--allow-other`);
/// otherwise only the mounting user can reach the mount at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Modes {
    pub file: u16,
    pub dir: u16,
}

impl Default for Modes {
    /// Task files readable by all, import/ writable by its owner only.
    fn default() -> Self {
        Modes {
            file: 0o444,
            dir: 0o755,
        }
    }
}

impl Modes {
    /// Task files: never writable, whatever `--file-mode` says (their
    /// content is immutable; a write bit would only promise EACCES later).
    pub fn task_file(&self) -> u16 {
        self.file & !0o222
    }

    /// import/: as given; its write bits say who may import.
    pub fn import_dir(&self) -> u16 {
        self.dir
    }

    /// The root and tasks/: nothing can be created in them.
    pub fn read_only_dir(&self) -> u16 {
        self.dir & !0o222
    }
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
