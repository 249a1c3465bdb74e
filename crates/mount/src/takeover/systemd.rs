//! systemd's file-descriptor store as the holder (`--holder systemd`): the
//! service stores the connection and the state journal with its manager
//! (`sd_notify` `FDSTORE=1`; the unit sets `FileDescriptorStoreMax=`), which
//! passes them back to the service's next start (`LISTEN_FDS`,
//! `LISTEN_FDNAMES`) as long as the unit is restarting, and closes them when
//! it is stopped (or the connection reports POLLERR: unmounted).
//!
//! Spoken directly (a datagram to `$NOTIFY_SOCKET`), without libsystemd.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    sendmsg, socket, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
};
use tracing::warn;

use super::connection::Held;

/// The names the descriptors are stored under.
pub const FUSE_NAME: &str = "dfcache-fuse";
pub const STATE_NAME: &str = "dfcache-state";
/// The first descriptor systemd passes (SD_LISTEN_FDS_START).
const LISTEN_FDS_START: RawFd = 3;

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("--holder systemd, but $NOTIFY_SOCKET is not set (run it as a systemd service with Type=notify and FileDescriptorStoreMax=2 or more)")]
    NoNotifySocket,
    #[error("cannot notify systemd at {socket}: {source}")]
    Notify {
        socket: String,
        #[source]
        source: std::io::Error,
    },
}

/// The mount systemd passed this process from its store, if it did (both
/// descriptors; one alone is logged and closed).
pub fn listened() -> Option<Held> {
    let pid = std::env::var("LISTEN_PID").ok()?;
    if pid.parse::<u32>().ok()? != std::process::id() {
        return None;
    }
    let count: RawFd = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let (mut fuse, mut state) = (None, None);
    for (i, name) in names.split(':').enumerate().take(count.max(0) as usize) {
        let raw = LISTEN_FDS_START + i as RawFd;
        let slot = match name {
            FUSE_NAME => &mut fuse,
            STATE_NAME => &mut state,
            _ => continue,
        };
        // SAFETY: systemd passed descriptors LISTEN_FDS_START.. to this
        // process (LISTEN_PID is ours); nothing else owns them.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let _ = nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        *slot = Some(fd);
    }
    match (fuse, state) {
        (Some(fuse), Some(state)) => Some(Held { fuse, state }),
        (None, None) => None,
        _ => {
            warn!("systemd passed one of the mount's two descriptors only (the mount was unmounted, or the store lost one): mounting anew");
            None
        }
    }
}

fn notify(message: &str, fds: &[BorrowedFd<'_>]) -> Result<(), SystemdError> {
    let path = std::env::var("NOTIFY_SOCKET").map_err(|_| SystemdError::NoNotifySocket)?;
    let err = |source: std::io::Error| SystemdError::Notify {
        socket: path.clone(),
        source,
    };
    let addr = match path.strip_prefix('@') {
        Some(name) => UnixAddr::new_abstract(name.as_bytes()),
        None => UnixAddr::new(path.as_str()),
    }
    .map_err(|e| err(e.into()))?;
    let sock = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| err(e.into()))?;
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
    sendmsg(
        sock.as_raw_fd(),
        &[IoSlice::new(message.as_bytes())],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        Some(&addr),
    )
    .map_err(|e| err(e.into()))?;
    Ok(())
}

/// Stores the mount with the service manager (replacing what it stored
/// before under the same names).
pub fn store(held: &Held) -> Result<(), SystemdError> {
    forget()?;
    notify(
        &format!("FDSTORE=1\nFDNAME={FUSE_NAME}"),
        &[held.fuse.as_fd()],
    )?;
    // A memory file reports no POLLERR worth watching.
    notify(
        &format!("FDSTORE=1\nFDNAME={STATE_NAME}\nFDPOLL=0"),
        &[held.state.as_fd()],
    )
}

/// Removes the mount from the store (unmounted for good).
pub fn forget() -> Result<(), SystemdError> {
    notify(&format!("FDSTOREREMOVE=1\nFDNAME={FUSE_NAME}"), &[])?;
    notify(&format!("FDSTOREREMOVE=1\nFDNAME={STATE_NAME}"), &[])
}

/// READY=1, STOPPING=1 and the like.
pub fn state(message: &str) -> Result<(), SystemdError> {
    notify(message, &[])
}
