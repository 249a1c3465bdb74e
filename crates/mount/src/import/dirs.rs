//! Directories and symbolic links in `import/`: `mkdir` (nested),
//! `rmdir` of empty ones, `symlink`, `rename` of files and directories
//! anywhere within `import/`, and `unlink`, so `cp -r`, `rsync -r` and
//! `tar -x -C import/` work. Files inside are imported exactly as at the
//! top. A directory is committed as a tree (`trees.rs`, `dfcache_wire::tree`) by
//! reading its `user.dfcache.tree_id` xattr (`commit_tree.rs`).
//!
//! Nothing here is sent to the daemon: directories and links live in the
//! mount until a tree is committed from them.

use std::ffi::OsStr;
use std::time::SystemTime;

use tracing::info;

use crate::attr::{Attr, Kind};
use crate::error::{Errno, FsResult};
use crate::filesystem::DfcacheFs;
use crate::handles::DirEntry;
use crate::inodes::{ImportDir, ImportEntry, ImportMeta, Node, IMPORT_INO, TASKS_INO};
use dfcache_wire::tree::manifest::check_name;

impl DfcacheFs {
    /// Refuses names a tree could not hold (`/` cannot reach here).
    pub(crate) fn check_tree_name(name: &OsStr) -> FsResult<()> {
        match name.to_str() {
            Some(n) => check_name(n).map_err(|why| {
                Errno::EINVAL.because(std::io::Error::other(format!("{n:?}: {why}")))
            }),
            None => Err(Errno::EINVAL.because(std::io::Error::other(
                "names in import/ must be UTF-8 (a tree manifest holds UTF-8 names)",
            ))),
        }
    }

    /// `parent` is a directory of `import/`, or the errno for one that is not.
    pub(crate) fn import_dir(&self, parent: u64) -> FsResult<()> {
        if self.inodes().is_import_dir(parent) {
            Ok(())
        } else if parent == TASKS_INO || parent <= IMPORT_INO {
            Err(Errno::EACCES)
        } else {
            Err(Errno::ENOTDIR)
        }
    }

    fn new_meta(parent: u64, name: &OsStr, perm: u32, uid: u32, gid: u32) -> ImportMeta {
        let now = SystemTime::now();
        ImportMeta {
            parent,
            name: name.to_os_string(),
            perm: (perm & 0o7777) as u16,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            writers: 0,
            linked: true,
            started: std::time::Instant::now(),
        }
    }

    pub async fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        self.import_dir(parent)?;
        Self::check_tree_name(name)?;
        let dir = {
            let mut inodes = self.inodes();
            if inodes.import_entry(parent, name).is_some() {
                return Err(Errno::EEXIST);
            }
            inodes.add_import_dir(Self::new_meta(parent, name, mode, uid, gid), None)
        };
        info!(name = %name.to_string_lossy(), "directory made in import/");
        Ok(self.import_dir_attr(&dir))
    }

    pub async fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &std::path::Path,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        self.import_dir(parent)?;
        Self::check_tree_name(name)?;
        let target = target.as_os_str();
        if target.is_empty() || target.to_str().is_none() {
            return Err(Errno::EINVAL);
        }
        let link = {
            let mut inodes = self.inodes();
            if inodes.import_entry(parent, name).is_some() {
                return Err(Errno::EEXIST);
            }
            inodes.add_import_dir(
                Self::new_meta(parent, name, 0o777, uid, gid),
                Some(target.to_os_string()),
            )
        };
        Ok(self.import_dir_attr(&link))
    }

    pub(crate) fn import_dir_attr(&self, dir: &ImportDir) -> Attr {
        let (kind, size) = match &dir.target {
            Some(target) => (Kind::Symlink, target.len() as u64),
            None => (Kind::Directory, 0),
        };
        let meta = dir.meta();
        meta.attr(dir.ino, kind, size, meta.perm)
    }

    /// `parent/name` under `import/`.
    pub(crate) async fn lookup_import(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        let entry = self.inodes().import_entry(parent, name);
        match entry.ok_or(Errno::ENOENT)? {
            ImportEntry::File(node) => Ok(self.import_attr(&node).await),
            ImportEntry::Dir(dir) => Ok(self.import_dir_attr(&dir)),
        }
    }

    pub(crate) fn import_listing(&self, dir: u64, parent: u64) -> Vec<DirEntry> {
        let mut entries = DirEntry::dots(dir, parent);
        for (name, entry) in self.inodes().imports(dir) {
            let kind = match &entry {
                ImportEntry::File(_) => Kind::File,
                ImportEntry::Dir(d) if d.is_link() => Kind::Symlink,
                ImportEntry::Dir(_) => Kind::Directory,
            };
            entries.push(DirEntry {
                ino: entry.ino(),
                kind,
                name,
            });
        }
        entries
    }

    pub async fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.import_dir(parent)
            .map_err(|e| if e == Errno::ENOTDIR { Errno::EPERM } else { e })?;
        let entry = {
            let mut inodes = self.inodes();
            match inodes.import_entry(parent, name) {
                None => return Err(Errno::ENOENT),
                Some(ImportEntry::Dir(d)) if !d.is_link() => return Err(Errno::EISDIR),
                Some(_) => inodes.unlink_import(parent, name),
            }
        };
        if let Some(ImportEntry::File(node)) = entry {
            self.cancel_if_unfinished(&node).await;
            self.drop_if_unused(&node);
        }
        Ok(())
    }

    pub async fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.import_dir(parent)?;
        let mut inodes = self.inodes();
        match inodes.import_entry(parent, name) {
            None => Err(Errno::ENOENT),
            Some(ImportEntry::Dir(d)) if !d.is_link() => {
                if !inodes.imports(d.ino).is_empty() {
                    return Err(Errno::ENOTEMPTY);
                }
                inodes.unlink_import(parent, name);
                Ok(())
            }
            Some(_) => Err(Errno::ENOTDIR),
        }
    }

    pub async fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> FsResult<()> {
        let (from_import, to_import) = {
            let inodes = self.inodes();
            (
                inodes.is_import_dir(parent),
                inodes.is_import_dir(new_parent),
            )
        };
        if !from_import || !to_import {
            return Err(if from_import || to_import {
                Errno::EXDEV
            } else {
                Errno::EACCES
            });
        }
        if new_parent != IMPORT_INO {
            Self::check_tree_name(new_name)?;
        }
        let replaced = {
            let mut inodes = self.inodes();
            let Some(entry) = inodes.import_entry(parent, name) else {
                return Err(Errno::ENOENT);
            };
            let target = inodes.import_entry(new_parent, new_name);
            if parent == new_parent && name == new_name {
                return Ok(());
            }
            if no_replace && target.is_some() {
                return Err(Errno::EEXIST);
            }
            if let ImportEntry::Dir(d) = &entry {
                // A directory cannot move into itself.
                if !d.is_link() && inodes.import_dir_is_within(new_parent, d.ino) {
                    return Err(Errno::EINVAL);
                }
            }
            match (&entry, &target) {
                (_, None) => {}
                (ImportEntry::Dir(a), Some(ImportEntry::Dir(b))) if !a.is_link() => {
                    if b.is_link() {
                        return Err(Errno::ENOTDIR);
                    }
                    if !inodes.imports(b.ino).is_empty() {
                        return Err(Errno::ENOTEMPTY);
                    }
                }
                (ImportEntry::Dir(a), Some(_)) if !a.is_link() => return Err(Errno::ENOTDIR),
                (_, Some(ImportEntry::Dir(b))) if !b.is_link() => return Err(Errno::EISDIR),
                _ => {}
            }
            inodes.rename_import(parent, name, new_parent, new_name)
        };
        if let Some(ImportEntry::File(old)) = replaced {
            self.cancel_if_unfinished(&old).await;
            self.drop_if_unused(&old);
        }
        Ok(())
    }

    /// chmod, chown and utimes of a directory or link in `import/`.
    pub(crate) fn setattr_import_dir(
        &self,
        dir: &ImportDir,
        change: &crate::attr::SetAttr,
    ) -> FsResult<Attr> {
        if change.size.is_some() {
            return Err(Errno::EISDIR);
        }
        dir.meta().apply(change);
        self.inodes().log.import_dir(dir);
        Ok(self.import_dir_attr(dir))
    }

    /// The target of a link in `import/` or in a tree.
    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt;
        match self.node(ino)? {
            Node::ImportDir(d) => d
                .target
                .as_ref()
                .map(|t| t.as_bytes().to_vec())
                .ok_or(Errno::EINVAL),
            Node::Tree(_) => self.tree_readlink(ino),
            _ => Err(Errno::EINVAL),
        }
    }
}
