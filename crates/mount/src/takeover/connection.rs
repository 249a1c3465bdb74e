//! The FUSE connection as something handed from process to process: its
//! `/dev/fuse` descriptor, what was negotiated on it at FUSE_INIT, and the
//! two things the kernel offers a process taking it over.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// FUSE_NOTIFY_RESEND (Linux 6.9+, FUSE protocol 7.40).
const FUSE_NOTIFY_RESEND: i32 = 7;
/// The first protocol minor version with FUSE_NOTIFY_RESEND.
pub const RESEND_MINOR: u32 = 40;

/// What FUSE_INIT settled for the connection, which a process taking it
/// over must know (the kernel never sends FUSE_INIT again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Negotiated {
    /// The kernel's protocol minor version (7.x).
    pub minor: u32,
    /// The kernel granted passthrough (backing files).
    pub passthrough: bool,
}

/// What a holder keeps for a mount and hands to the next process: the
/// connection, and the state journal (a memory file).
#[derive(Debug)]
pub struct Held {
    pub fuse: OwnedFd,
    pub state: OwnedFd,
}

/// Has the kernel send again every request a process read from the
/// connection and did not answer (they were in flight when it died, or
/// held back by a process handing over): each comes back with
/// FUSE_UNIQUE_RESEND set in its id, and is answered like any other.
/// Must be sent before this process reads any request, or a request it is
/// already serving would be sent twice.
pub fn resend_unanswered(fuse: BorrowedFd<'_>) -> std::io::Result<()> {
    // struct fuse_out_header { u32 len; i32 error (the notification code); u64 unique = 0 }
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&16u32.to_le_bytes());
    header[4..8].copy_from_slice(&FUSE_NOTIFY_RESEND.to_le_bytes());
    let written = nix::unistd::write(fuse, &header).map_err(std::io::Error::from)?;
    if written == header.len() {
        Ok(())
    } else {
        Err(std::io::Error::other("short write of FUSE_NOTIFY_RESEND"))
    }
}

/// Whether the connection is gone (unmounted, aborted): the kernel then
/// reports POLLERR on its descriptor, whatever was asked for, and a
/// descriptor polled for nothing else never reports requests waiting.
pub fn is_gone(fuse: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(fuse, PollFlags::empty())];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP)),
        Err(_) => false,
    }
}

/// A descriptor of the same open `/dev/fuse` file (not a clone of the
/// connection: requests read through either stay in the same processing
/// queue, which is what lets the kernel resend them after a crash).
pub fn share(fd: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

/// The raw number, for logs.
pub fn number(fd: &impl AsFd) -> i32 {
    fd.as_fd().as_raw_fd()
}
