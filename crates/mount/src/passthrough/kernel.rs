//! The kernel side of passthrough: asking for it at FUSE init, and
//! registering a task's local file as the backing of an open (a
//! `FUSE_DEV_IOC_BACKING_OPEN` on /dev/fuse, through fuser's `BackingId`).

use std::sync::atomic::{AtomicBool, Ordering};

use fuser::{BackingId, FileHandle, FopenFlags, InitFlags, KernelConfig, ReplyOpen};
use tracing::{debug, info, warn};

use super::{Decision, IoModes, LocalFile};

/// Backing files may themselves be on a stacked file system (overlayfs, a
/// container's root) but the mount cannot be stacked on: the kernel's
/// limit is 2.
const MAX_STACK_DEPTH: u32 = 2;

/// A registered backing file, and the local file (with its lease) it was
/// made from. Dropping it unregisters it.
struct Backing {
    id: BackingId,
    _file: LocalFile,
}

/// Why an open goes through the mount.
enum NoBacking {
    NoLocalFile,
    Refused(std::io::Error),
}

pub struct KernelPassthrough {
    on: AtomicBool,
    modes: IoModes<Backing>,
}

impl KernelPassthrough {
    /// Passthrough as decided at start; None when it is off (logged).
    pub fn new(decision: &Decision) -> Option<Self> {
        match decision {
            Decision::On(_) => Some(KernelPassthrough {
                on: AtomicBool::new(true),
                modes: IoModes::default(),
            }),
            Decision::Off(why) => {
                info!(reason = %why, "passthrough off");
                None
            }
        }
    }

    /// Asks the kernel for passthrough at FUSE init.
    pub fn init(&self, config: &mut KernelConfig, source: &str) {
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH) {
            self.on.store(false, Ordering::Relaxed);
            info!(
                ?missing,
                "passthrough off: the kernel has no FUSE passthrough (Linux 6.9+ built with \
                 CONFIG_FUSE_PASSTHROUGH); reads go through the mount"
            );
            return;
        }
        if let Err(max) = config.set_max_stack_depth(MAX_STACK_DEPTH) {
            let _ = config.set_max_stack_depth(max);
        }
        info!(
            source,
            "passthrough on: opens of local task content go straight to the file"
        );
    }

    /// Replies to the open of `fh` (a read-only open of inode `ino`): in
    /// passthrough to `local` (or the inode's backing) when the inode
    /// allows, else through the mount with `flags`.
    pub fn reply_open(
        &self,
        ino: u64,
        fh: u64,
        flags: FopenFlags,
        local: Option<LocalFile>,
        reply: ReplyOpen,
    ) {
        // Even when passthrough was turned off, an inode still open in it
        // must get its backing again (a mixed open would fail with EIO).
        let on = self.on.load(Ordering::Relaxed);
        let made = self.modes.open_passthrough(ino, fh, || {
            let local = local.filter(|_| on).ok_or(NoBacking::NoLocalFile)?;
            let id = reply
                .open_backing(&*local.file)
                .map_err(NoBacking::Refused)?;
            Ok(Backing { id, _file: local })
        });
        match made {
            Ok(Some(backing)) => {
                debug!(ino, fh, "opened in passthrough");
                dfcache_metrics::mount::passthrough_opened();
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing.id);
            }
            Ok(None) | Err(NoBacking::NoLocalFile) => reply.opened(FileHandle(fh), flags),
            Err(NoBacking::Refused(e)) => {
                if self.on.swap(false, Ordering::Relaxed) {
                    warn!(
                        error = %e,
                        "the kernel refused a backing file: passthrough is off for the rest of \
                         this mount, reads go through it"
                    );
                }
                reply.opened(FileHandle(fh), flags);
            }
        }
    }

    pub fn release(&self, fh: u64) {
        self.modes.release(fh);
    }
}
