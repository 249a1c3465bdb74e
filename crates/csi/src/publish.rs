//! A volume's mounts at its target, made and removed. Blocking calls, run
//! one at a time (`node`), and stateless: the mount table is the record of
//! what is published, so a restarted plugin sees what its predecessor did.
//!
//! - a tree: `trees/<id>` of the node's mount bind-mounted read-only at
//!   the target: the pod reads the node mount's own files, with its cache,
//!   read-ahead and passthrough, and nothing in between;
//! - a task as a file: a tiny tmpfs at the target holding one empty file
//!   `name`, `tasks/<id>` bind-mounted read-only over that file, then the
//!   tmpfs made read-only too. A bind of `tasks/` would show every task.
//!
//! A publish that fails part-way undoes what it made (its mounts, and the
//! target if it created it), so nothing is left mounted.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::PublishError;
use crate::mounts::{
    bind_read_only, detach, mount_tmpfs, mounts_at, remount_read_only, MountEntry,
};
use crate::volume::Content;

/// The tmpfs of a task volume is mounted from this name (the mount
/// table's source column), which tells it from anything else.
pub const TMPFS_SOURCE: &str = "dfcache-csi";
/// One directory and one empty file: a few KiB would do.
const TMPFS_OPTIONS: &str = "size=64k,nr_inodes=16,mode=0755";
/// Mounts stacked at one target that an unpublish will detach: more than
/// a publish ever makes; a bound, so a target something keeps mounting on
/// fails instead of looping.
const MAX_STACKED: usize = 16;

/// What is mounted at a target already.
#[derive(Debug, PartialEq, Eq)]
pub enum Existing {
    Nothing,
    /// This volume, read-only: publishing again changes nothing.
    Same,
    /// Something else, described.
    Other(String),
}

fn table(path: &Path) -> Result<Vec<MountEntry>, PublishError> {
    mounts_at(path).map_err(|e| PublishError::io("reading the mount table for", path, e))
}

/// What `target` holds, compared with `content`.
pub fn existing(target: &Path, content: &Content) -> Result<Existing, PublishError> {
    let mounts = table(target)?;
    let Some(top) = mounts.last() else {
        return Ok(Existing::Nothing);
    };
    let same = match content {
        Content::Tree { id } => {
            top.is_dfcache() && top.read_only() && top.root == Path::new("/trees").join(id)
        }
        Content::TaskFile { id, name } => {
            top.fstype == "tmpfs"
                && top.source == TMPFS_SOURCE
                && top.read_only()
                && table(&target.join(name))?.last().is_some_and(|file| {
                    file.is_dfcache()
                        && file.read_only()
                        && file.root == Path::new("/tasks").join(id)
                })
        }
    };
    Ok(if same {
        Existing::Same
    } else {
        Existing::Other(format!(
            "{} {} from {}",
            top.fstype,
            top.root.display(),
            top.source
        ))
    })
}

/// Publishes `source` (in the node's mount) at `target` as `content` says.
pub fn publish(target: &Path, source: &Path, content: &Content) -> Result<(), PublishError> {
    let created = make_target(target)?;
    let made = match content {
        Content::Tree { .. } => bind_read_only(source, target)
            .map_err(|e| PublishError::io("bind-mounting the tree at", target, e)),
        Content::TaskFile { name, .. } => publish_file(source, target, name),
    };
    if let Err(e) = made {
        undo(target, created);
        return Err(e);
    }
    Ok(())
}

fn publish_file(source: &Path, target: &Path, name: &str) -> Result<(), PublishError> {
    mount_tmpfs(TMPFS_SOURCE, target, TMPFS_OPTIONS)
        .map_err(|e| PublishError::io("mounting the volume's tmpfs at", target, e))?;
    let file = target.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&file)
        .map_err(|e| PublishError::io("creating", &file, e))?;
    bind_read_only(source, &file)
        .map_err(|e| PublishError::io("bind-mounting the task at", &file, e))?;
    remount_read_only(target)
        .map_err(|e| PublishError::io("making the volume read-only at", target, e))
}

/// Creates the target directory: true if this call created it. An empty
/// directory already there (kubelet may make it) is used as it is.
fn make_target(target: &Path) -> Result<bool, PublishError> {
    if !target.parent().is_some_and(Path::is_dir) {
        return Err(PublishError::NoParent(target.to_path_buf()));
    }
    match std::fs::create_dir(target) {
        Ok(()) => return Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(PublishError::io("creating", target, e)),
    }
    let meta =
        std::fs::symlink_metadata(target).map_err(|e| PublishError::io("looking at", target, e))?;
    let empty = meta.is_dir()
        && std::fs::read_dir(target)
            .map_err(|e| PublishError::io("listing", target, e))?
            .next()
            .is_none();
    if empty {
        Ok(false)
    } else {
        Err(PublishError::TargetOccupied(target.to_path_buf()))
    }
}

/// Best effort after a failed publish: the error being returned is the
/// one that matters.
fn undo(target: &Path, created: bool) {
    if let Err(e) = detach_all(target) {
        tracing::warn!(target = %target.display(), error = %e, "cannot undo a failed publish");
    }
    if created {
        let _ = std::fs::remove_dir(target);
    }
}

/// Detaches every mount at `target` (and those below it).
fn detach_all(target: &Path) -> Result<(), PublishError> {
    for _ in 0..MAX_STACKED {
        if table(target)?.is_empty() {
            return Ok(());
        }
        detach(target).map_err(|e| PublishError::io("unmounting", target, e))?;
    }
    if table(target)?.is_empty() {
        Ok(())
    } else {
        Err(PublishError::StillMounted(target.to_path_buf()))
    }
}

/// Removes the volume at `target`: its mounts, then the directory. A
/// target that is not there is already unpublished.
pub fn unpublish(target: &Path) -> Result<(), PublishError> {
    detach_all(target)?;
    match std::fs::remove_dir(target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PublishError::io("removing", target, e)),
    }
}
