//! The kernel side of passthrough: asking for it at FUSE init, and
//! registering a task's local file as the backing of an open (a
//! `FUSE_DEV_IOC_BACKING_OPEN` on /dev/fuse, through fuser's `BackingId`).
//!
//! Which handles are open in which mode, and on which backing, is recorded
//! in the state journal, so a process that takes the mount over keeps the
//! kernel's rule (one mode, one backing per inode) for files opened before
//! it: it wraps the same backing ids (`restore`).

use std::sync::atomic::{AtomicBool, Ordering};

use fuser::{BackingId, FileHandle, FopenFlags, InitFlags, KernelConfig, Notifier, ReplyOpen};
use tracing::{debug, info, warn};

use super::{Decision, IoModes, LocalContent, LocalFile};
use crate::takeover::records::OpenRecord;
use crate::takeover::state::StateLog;

/// Backing files may themselves be on a stacked file system (overlayfs, a
/// container's root) but the mount cannot be stacked on: the kernel's
/// limit is 2.
const MAX_STACK_DEPTH: u32 = 2;

/// A registered backing file, and the local file (with its lease) it was
/// made from. Dropping it unregisters it.
struct Backing {
    id: BackingId,
    /// The id the kernel gave (recorded for a takeover).
    raw: u32,
    /// The file and its lease; None for a backing an earlier process made
    /// whose task is gone from the store.
    _file: Option<LocalFile>,
}

/// Why an open goes through the mount.
enum NoBacking {
    NoLocalFile,
    Refused(std::io::Error),
}

pub struct KernelPassthrough {
    on: AtomicBool,
    modes: IoModes<Backing>,
    log: StateLog,
}

impl KernelPassthrough {
    /// Passthrough as decided at start; None when it is off (logged).
    pub fn new(decision: &Decision, log: StateLog) -> Option<Self> {
        match decision {
            Decision::On(_) => Some(KernelPassthrough {
                on: AtomicBool::new(true),
                modes: IoModes::default(),
                log,
            }),
            Decision::Off(why) => {
                info!(reason = %why, "passthrough off");
                None
            }
        }
    }

    /// Whether opens may pass through (the kernel granted it, and has not
    /// refused a backing file).
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// What FUSE_INIT settled, for a process that took the mount over.
    pub fn granted(&self, granted: bool) {
        if !granted {
            self.on.store(false, Ordering::Relaxed);
        }
    }

    /// Takes on the handles an earlier process of this mount opened (from
    /// the state journal): their inodes keep their mode, and passthrough
    /// ones their backing, whose task's lease is taken again from `local`.
    pub fn restore(
        &self,
        opens: &[OpenRecord],
        notifier: &Notifier,
        task_of: impl Fn(u64) -> Option<String>,
        local: Option<&dyn LocalContent>,
    ) {
        for open in opens {
            let made = self.modes.open_passthrough(open.ino, open.fh, || {
                if !open.passthrough {
                    return Err(());
                }
                // SAFETY: the id was returned by FUSE_DEV_IOC_BACKING_OPEN on
                // this connection by an earlier process, which never closed
                // it (its close would have recorded the handles' release);
                // from here it is closed only when this `BackingId` drops.
                let id = unsafe { notifier.wrap_backing(open.backing_id) };
                let lease = task_of(open.ino).and_then(|task| local.and_then(|l| l.open(&task)));
                Ok(Backing {
                    id,
                    raw: open.backing_id,
                    _file: lease,
                })
            });
            if made.is_err() && open.passthrough {
                warn!(
                    ino = open.ino,
                    fh = open.fh,
                    "a passthrough open of an earlier process is not on the inode's backing"
                );
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
            let raw = reply
                .open_backing(&*local.file)
                .map_err(NoBacking::Refused)?
                .into_raw();
            // SAFETY: `raw` was just returned by FUSE_DEV_IOC_BACKING_OPEN
            // and handed back by `into_raw`, which did not close it.
            let id = unsafe { reply.wrap_backing(raw) };
            Ok(Backing {
                id,
                raw,
                _file: Some(local),
            })
        });
        // Recorded before the kernel hears of the handle.
        let backing_id = match &made {
            Ok(Some(backing)) => Some(backing.raw),
            _ => None,
        };
        self.log.open(fh, ino, backing_id);
        match made {
            Ok(Some(backing)) => {
                debug!(ino, fh, "opened in passthrough");
                dfcache_metrics::mount::passthrough_opened();
                // Read-only, like every passthrough open: no FLUSH at close.
                reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, &backing.id);
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
        if self.modes.release(fh) {
            self.log.closed(fh);
        }
    }
}
