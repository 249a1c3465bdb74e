//! Which open files of an inode pass through, and on which backing file.
//!
//! The kernel keeps an inode either in cached mode (opens served by the
//! mount, through the page cache) or in passthrough mode (opens served by
//! one backing file), never both: an open that would mix them, or a second
//! backing file for one inode, fails with EIO in the opening program
//! (fs/fuse/iomode.c). So an inode with an open through the mount gets
//! more opens through the mount, and every passthrough open of an inode
//! shares one backing, released with its last open.
//!
//! The counts lag the kernel's a little (a close reaches us as a release
//! later), and always towards the safe side: an inode looks busier than
//! it is, so an open goes through the mount when it could have passed.
//! Generic over the backing so the rule is tested without a kernel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

pub struct IoModes<B> {
    inner: Mutex<Inner<B>>,
}

struct Inner<B> {
    inodes: HashMap<u64, Inode<B>>,
    /// Each handle's inode, and whether it passes through.
    handles: HashMap<u64, (u64, bool)>,
}

struct Inode<B> {
    backing: Option<Arc<B>>,
    passthrough: usize,
    cached: usize,
}

impl<B> Default for Inode<B> {
    fn default() -> Self {
        Inode {
            backing: None,
            passthrough: 0,
            cached: 0,
        }
    }
}

impl<B> Default for IoModes<B> {
    fn default() -> Self {
        IoModes {
            inner: Mutex::new(Inner {
                inodes: HashMap::new(),
                handles: HashMap::new(),
            }),
        }
    }
}

impl<B> IoModes<B> {
    /// Opens handle `fh` of `ino` in passthrough when the inode allows:
    /// the inode's backing, or a new one from `make`. None: the open goes
    /// through the mount (recorded as such). An error of `make` also
    /// records the open as through the mount, and is returned.
    pub fn open_passthrough<E>(
        &self,
        ino: u64,
        fh: u64,
        make: impl FnOnce() -> Result<B, E>,
    ) -> Result<Option<Arc<B>>, E> {
        let mut inner = lock(&self.inner);
        let inode = inner.inodes.entry(ino).or_default();
        if inode.cached > 0 {
            inode.cached += 1;
            inner.handles.insert(fh, (ino, false));
            return Ok(None);
        }
        let backing = match &inode.backing {
            Some(backing) => backing.clone(),
            None => match make() {
                Ok(backing) => {
                    let backing = Arc::new(backing);
                    inode.backing = Some(backing.clone());
                    backing
                }
                Err(e) => {
                    inode.cached += 1;
                    inner.handles.insert(fh, (ino, false));
                    return Err(e);
                }
            },
        };
        inode.passthrough += 1;
        inner.handles.insert(fh, (ino, true));
        Ok(Some(backing))
    }

    /// Records handle `fh` of `ino` as open through the mount; false when
    /// the inode is open in passthrough (then the caller must pass through
    /// too: `open_passthrough`).
    pub fn open_cached(&self, ino: u64, fh: u64) -> bool {
        let mut inner = lock(&self.inner);
        let inode = inner.inodes.entry(ino).or_default();
        if inode.passthrough > 0 {
            return false;
        }
        inode.cached += 1;
        inner.handles.insert(fh, (ino, false));
        true
    }

    /// The handle is closed: the last passthrough open of an inode drops
    /// its backing. Whether the handle was known.
    pub fn release(&self, fh: u64) -> bool {
        let mut inner = lock(&self.inner);
        let Some((ino, passthrough)) = inner.handles.remove(&fh) else {
            return false;
        };
        let Some(inode) = inner.inodes.get_mut(&ino) else {
            return true;
        };
        if passthrough {
            inode.passthrough = inode.passthrough.saturating_sub(1);
            if inode.passthrough == 0 {
                inode.backing = None;
            }
        } else {
            inode.cached = inode.cached.saturating_sub(1);
        }
        if inode.passthrough == 0 && inode.cached == 0 {
            inner.inodes.remove(&ino);
        }
        true
    }

    /// Inodes with an open file (for tests and leak checks).
    pub fn open_inodes(&self) -> usize {
        lock(&self.inner).inodes.len()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    fn make(n: u32) -> impl FnOnce() -> Result<u32, Infallible> {
        move || Ok(n)
    }

    #[test]
    fn passthrough_opens_of_one_inode_share_one_backing_until_the_last_closes() {
        let modes = IoModes::default();
        let a = modes.open_passthrough(7, 1, make(100)).unwrap().unwrap();
        let b = modes.open_passthrough(7, 2, make(200)).unwrap().unwrap();
        assert!(Arc::ptr_eq(&a, &b), "a second backing for one inode");
        assert_eq!(*b, 100);
        modes.release(1);
        let c = modes.open_passthrough(7, 3, make(300)).unwrap().unwrap();
        assert_eq!(*c, 100);
        modes.release(2);
        modes.release(3);
        assert_eq!(modes.open_inodes(), 0);
        // All closed: the next open registers a new backing.
        let d = modes.open_passthrough(7, 4, make(400)).unwrap().unwrap();
        assert_eq!(*d, 400);
    }

    #[test]
    fn an_inode_open_through_the_mount_is_not_opened_in_passthrough_until_it_closes() {
        let modes = IoModes::<u32>::default();
        assert!(modes.open_cached(7, 1));
        assert!(modes.open_passthrough(7, 2, make(100)).unwrap().is_none());
        // Another inode is free to pass through.
        assert!(modes.open_passthrough(8, 3, make(200)).unwrap().is_some());
        modes.release(1);
        assert!(modes.open_passthrough(7, 4, make(300)).unwrap().is_none());
        modes.release(2);
        modes.release(4);
        assert_eq!(
            *modes.open_passthrough(7, 5, make(300)).unwrap().unwrap(),
            300
        );
    }

    #[test]
    fn an_inode_in_passthrough_refuses_an_open_through_the_mount() {
        let modes = IoModes::default();
        modes.open_passthrough(7, 1, make(100)).unwrap();
        assert!(!modes.open_cached(7, 2));
        modes.release(1);
        assert!(modes.open_cached(7, 3));
    }

    #[test]
    fn a_backing_that_cannot_be_made_leaves_the_open_through_the_mount() {
        let modes = IoModes::<u32>::default();
        let failed = modes.open_passthrough(7, 1, || Err("EPERM"));
        assert_eq!(failed.unwrap_err(), "EPERM");
        assert!(modes.open_passthrough(7, 2, make(1)).unwrap().is_none());
        modes.release(1);
        modes.release(2);
        assert_eq!(modes.open_inodes(), 0);
        modes.release(99);
    }
}
