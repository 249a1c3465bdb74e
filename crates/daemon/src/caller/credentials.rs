//! A connection's peer credentials.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use tokio::net::UnixStream;

/// The process at the other end of a connection, as it was when it
/// connected: its effective uid and gid, its pid (in the daemon's pid
/// namespace; None when it has none there) and its supplementary groups.
/// Ids are as the daemon's user namespace sees them (an id the daemon's
/// namespace does not map reads as the overflow id, 65534).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    pub groups: Arc<[u32]>,
}

/// Groups asked for in the first `SO_PEERGROUPS` call; a caller in more is
/// asked again with the count the kernel reports.
const GROUPS_FIRST_GUESS: usize = 64;
/// `SO_PEERGROUPS` (asm-generic/socket.h, the same on every architecture
/// this builds for): spelled out because the libc crate exports it only
/// from its raw uapi tables.
const SO_PEERGROUPS: libc::c_int = 59;

impl Caller {
    /// The peer of `stream`.
    ///
    /// Supplementary groups come from `SO_PEERGROUPS`, which the kernel
    /// records at connect time together with what `SO_PEERCRED` reports:
    /// one consistent set of credentials. Reading `/proc/<pid>/status`
    /// instead would race with the pid's exit and reuse, and with the
    /// process changing its groups after connecting; `getgrouplist(uid)`
    /// would read the daemon's `/etc/group`, which is not a pod's, and
    /// would give back groups a process dropped (`setpriv --clear-groups`),
    /// more rights than the caller has. On a kernel without the option
    /// (before Linux 4.13) the caller gets no supplementary groups: fewer
    /// rights than it has, never more.
    pub fn of(stream: &UnixStream) -> std::io::Result<Caller> {
        let cred = stream.peer_cred()?;
        let groups = peer_groups(stream.as_raw_fd())?;
        Ok(Caller {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
            groups: groups.into(),
        })
    }
}

fn peer_groups(fd: RawFd) -> std::io::Result<Vec<u32>> {
    const GID: usize = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; GROUPS_FIRST_GUESS];
    // Twice at most: the second call has room for what the first said the
    // peer has (the groups recorded at connect do not change).
    for _ in 0..3 {
        let mut len = (groups.len() * GID) as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `groups`,
        // which has that many; `len` is a valid socklen_t to update.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if r == 0 {
            groups.truncate(len as usize / GID);
            return Ok(groups);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ERANGE) if len as usize / GID > groups.len() => {
                groups.resize(len as usize / GID, 0);
            }
            Some(libc::ENOPROTOOPT) => return Ok(Vec::new()),
            _ => return Err(err),
        }
    }
    Err(std::io::Error::other(
        "the peer's supplementary groups kept changing size",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_pairs_peer_is_this_process_with_its_groups() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let caller = rt.block_on(async { Caller::of(&UnixStream::from_std(a).unwrap()).unwrap() });
        // SAFETY: plain id queries; getgroups writes at most `n` ids.
        let (uid, gid, mut groups) = unsafe {
            let n = libc::getgroups(0, std::ptr::null_mut());
            let mut groups = vec![0; n as usize];
            libc::getgroups(n, groups.as_mut_ptr());
            (libc::geteuid(), libc::getegid(), groups)
        };
        assert_eq!((caller.uid, caller.gid), (uid, gid));
        assert_eq!(caller.pid, Some(std::process::id() as i32));
        let mut got = caller.groups.to_vec();
        got.sort();
        groups.sort();
        assert_eq!(got, groups);
    }
}
