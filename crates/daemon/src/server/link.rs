//! Exports by hard link, as dfdaemon does them: the output path becomes a
//! second name of the task's content file, so an export costs no copy and
//! no second copy on disk. Content files are never written once stored,
//! so the link is complete the moment it exists.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// Links `content` at `target`. A target that already is this file is
/// fine; another file there fails with AlreadyExists unless `overwrite`
/// (then the link replaces it atomically). Fails (EXDEV and the like)
/// when the two are on different file systems: the caller copies then.
pub fn link_content(content: &Path, target: &Path, overwrite: bool) -> std::io::Result<()> {
    match std::fs::hard_link(content, target) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            if same_file(content, target)? {
                return Ok(());
            }
            if !overwrite {
                return Err(e);
            }
            replace_with_link(content, target)?;
        }
        Err(e) => return Err(e),
    }
    // The new name survives a power loss once its directory is synced.
    match target.parent() {
        Some(parent) => File::open(parent)?.sync_all(),
        None => Ok(()),
    }
}

fn same_file(a: &Path, b: &Path) -> std::io::Result<bool> {
    let (a, b) = (std::fs::metadata(a)?, std::fs::metadata(b)?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

/// A link under a temporary name beside `target`, renamed over it.
fn replace_with_link(content: &Path, target: &Path) -> std::io::Result<()> {
    let name = target
        .file_name()
        .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidInput, "the output names no file"))?;
    let temp = target.with_file_name(format!(
        ".{}.dfcache-{}-{}.link",
        name.to_string_lossy(),
        std::process::id(),
        NEXT_TEMP.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::hard_link(content, &temp)?;
    std::fs::rename(&temp, target).inspect_err(|_| {
        let _ = std::fs::remove_file(&temp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_is_the_content_file_and_refuses_another_file_unless_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let content = dir.path().join("task.data");
        std::fs::write(&content, b"content").unwrap();
        let target = dir.path().join("out");
        link_content(&content, &target, false).unwrap();
        assert!(same_file(&content, &target).unwrap());
        // Again: it already is the file.
        link_content(&content, &target, false).unwrap();

        let other = dir.path().join("other");
        std::fs::write(&other, b"other").unwrap();
        let err = link_content(&content, &other, false).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&other).unwrap(), b"other");
        link_content(&content, &other, true).unwrap();
        assert!(same_file(&content, &other).unwrap());
        // No temporary name is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }
}
