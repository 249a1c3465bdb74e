//! The holder: a small process that keeps a mount's connection (its
//! `/dev/fuse` descriptor) and state journal while the processes serving
//! it come and go, and hands them to the next `dfcache mount` at the same
//! place. It reads no request, so the mount never changes while it is the
//! only one holding it: requests wait in the kernel for the next server.
//!
//! It goes away (letting go of what it holds) when the mount is unmounted
//! for good (its server says RELEASE, or `fusermount3 -u`: the kernel
//! reports POLLERR on the connection), on SIGTERM/SIGINT/SIGHUP, when no
//! server has taken the mount over for `orphan_timeout` (the connection is
//! then aborted: programs get ENOTCONN, as after a crash without a holder),
//! and, if it was started for one mount, when it was given nothing to
//! hold within `idle_timeout`. One holder per socket: a second one exits.
//!
//! - `wire`: the protocol; `link`: the mount's side of it.

pub mod link;
pub mod wire;

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    accept4, bind, getsockopt, listen, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    UnixAddr,
};
use tracing::{info, warn};

use super::connection::{is_gone, Held};
use wire::{recv, send, Message};

/// How the holder runs.
#[derive(Debug, Clone)]
pub struct HolderOptions {
    pub socket: PathBuf,
    /// How long it keeps a mount no process serves (None: as long as it runs).
    pub orphan_timeout: Option<Duration>,
    /// How long it waits for something to hold (None: as long as it runs).
    pub idle_timeout: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum HolderError {
    #[error("another holder already listens at {0}")]
    AlreadyRunning(PathBuf),
    #[error("holder at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the holder keeps.
struct Kept {
    held: Held,
    mountpoint: PathBuf,
}

struct Holder {
    kept: Option<Kept>,
    /// The process serving the mount, on its connection.
    server: Option<OwnedFd>,
    /// That process, as a pidfd (None where its pid is not visible: another
    /// pid namespace).
    server_process: Option<OwnedFd>,
    /// A mount waiting for the server to hand over, until the deadline.
    waiting: Option<(OwnedFd, Instant)>,
    /// Since when nobody serves what is kept (or nothing is kept).
    unserved_since: Instant,
}

/// The lock file beside the socket: one holder per socket.
pub fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

/// Runs the holder until it has reason to go (see the module docs).
pub fn run(options: &HolderOptions) -> Result<(), HolderError> {
    let io = |source: std::io::Error| HolderError::Io {
        path: options.socket.clone(),
        source,
    };
    if let Some(dir) = options.socket.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(lock_path(&options.socket))
        .map_err(io)?;
    let _lock = Flock::lock(lock, FlockArg::LockExclusiveNonblock)
        .map_err(|_| HolderError::AlreadyRunning(options.socket.clone()))?;

    // Signals arrive as readable data, between two polls.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().map_err(|e| io(e.into()))?;
    let signal_fd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| io(e.into()))?;

    let _ = std::fs::remove_file(&options.socket);
    let listener = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| io(e.into()))?;
    let addr = UnixAddr::new(&options.socket).map_err(|e| io(e.into()))?;
    bind(listener.as_raw_fd(), &addr).map_err(|e| io(e.into()))?;
    listen(&listener, Backlog::new(16).map_err(|e| io(e.into()))?).map_err(|e| io(e.into()))?;
    info!(socket = %options.socket.display(), pid = std::process::id(), "holder listening");

    let mut holder = Holder {
        kept: None,
        server: None,
        server_process: None,
        waiting: None,
        unserved_since: Instant::now(),
    };
    let reason = holder.serve(options, &listener, &signal_fd);
    let _ = std::fs::remove_file(&options.socket);
    match &holder.kept {
        Some(kept) => {
            info!(mountpoint = %kept.mountpoint.display(), reason, "holder exiting; letting the mount's connection go")
        }
        None => info!(reason, "holder exiting"),
    }
    Ok(())
}

impl Holder {
    /// The loop; returns why it ended.
    fn serve(
        &mut self,
        options: &HolderOptions,
        listener: &OwnedFd,
        signal_fd: &SignalFd,
    ) -> &'static str {
        loop {
            let now = Instant::now();
            let limit = match (&self.kept, &self.server) {
                (_, Some(_)) => None,
                (Some(_), None) => options.orphan_timeout,
                (None, None) => options.idle_timeout,
            };
            if limit.is_some_and(|l| now >= self.unserved_since + l) {
                return match self.kept {
                    Some(_) => "no dfcache mount took the mount over in time",
                    None => "given nothing to hold",
                };
            }
            if let Some((conn, deadline)) = self.waiting.take() {
                if now >= deadline {
                    let _ = send(
                        conn.as_fd(),
                        &Message::Failed("the serving process did not hand over in time".into()),
                        &[],
                    );
                } else {
                    self.waiting = Some((conn, deadline));
                }
            }
            let wake = [
                limit.map(|l| self.unserved_since + l),
                self.waiting.as_ref().map(|w| w.1),
            ]
            .into_iter()
            .flatten()
            .min()
            .map_or(Duration::from_secs(60), |at| {
                at.saturating_duration_since(now) + Duration::from_millis(1)
            });
            let timeout = PollTimeout::try_from(wake.min(Duration::from_secs(60)))
                .unwrap_or(PollTimeout::MAX);

            let mut fds = vec![
                PollFd::new(listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(signal_fd.as_fd(), PollFlags::POLLIN),
            ];
            let fuse_at = self.kept.as_ref().map(|k| {
                fds.push(PollFd::new(k.held.fuse.as_fd(), PollFlags::empty()));
                fds.len() - 1
            });
            let server_at = self.server.as_ref().map(|s| {
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            let waiting_at = self.waiting.as_ref().map(|w| {
                fds.push(PollFd::new(w.0.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            if let Err(e) = poll(&mut fds, timeout) {
                if e != nix::errno::Errno::EINTR {
                    warn!(error = %e, "holder: poll failed");
                    return "poll failed";
                }
                continue;
            }
            let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
            let (listening, signalled) = (ready(0), ready(1));
            let (fuse_ready, server_ready, waiting_ready) = (
                fuse_at.is_some_and(ready),
                server_at.is_some_and(ready),
                waiting_at.is_some_and(ready),
            );
            drop(fds);

            if signalled {
                return "stopped by a signal";
            }
            if fuse_ready
                && self
                    .kept
                    .as_ref()
                    .is_some_and(|k| is_gone(k.held.fuse.as_fd()))
            {
                return "the mount was unmounted";
            }
            if server_ready {
                if let Some(reason) = self.serve_server_message() {
                    return reason;
                }
            }
            if waiting_ready {
                // The waiting mount went away (it sends nothing more).
                self.waiting = None;
            }
            if listening {
                self.accept(listener);
            }
        }
    }

    /// A message (or the end) from the serving process; Some to exit.
    fn serve_server_message(&mut self) -> Option<&'static str> {
        let server = self.server.as_ref()?;
        match recv(server.as_fd(), None) {
            Ok(Some((Message::Release, _))) => return Some("the mount was unmounted for good"),
            Ok(Some((Message::Handed, _))) => {
                info!("the serving process handed the mount over");
                return None;
            }
            Ok(Some((other, _))) => {
                warn!(
                    ?other,
                    "holder: unexpected message from the serving process"
                );
                return None;
            }
            Ok(None) | Err(_) => {}
        }
        // Its process is gone: the connection waits for the next one.
        self.server = None;
        self.unserved_since = Instant::now();
        match self.waiting.take() {
            Some((conn, _)) => self.hand_to(conn),
            None => {
                if let Some(kept) = &self.kept {
                    info!(mountpoint = %kept.mountpoint.display(), "the process serving the mount went away; holding it for the next dfcache mount");
                }
            }
        }
        None
    }

    fn accept(&mut self, listener: &OwnedFd) {
        let conn = match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            // SAFETY: accept4 returned a new descriptor that nothing owns.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            Err(_) => return,
        };
        // Whoever gets the connection serves the mount as they like: only
        // its owner (or root) may ask.
        let me = nix::unistd::geteuid().as_raw();
        match getsockopt(&conn, sockopt::PeerCredentials) {
            Ok(cred) if cred.uid() == me || cred.uid() == 0 => {}
            Ok(cred) => {
                warn!(uid = cred.uid(), "holder: refused a client of another user");
                let _ = send(
                    conn.as_fd(),
                    &Message::Failed("not the mount's owner".into()),
                    &[],
                );
                return;
            }
            Err(_) => return,
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let (message, fds) = match recv(conn.as_fd(), Some(deadline)) {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, "holder: a client sent nothing it understands");
                let _ = send(conn.as_fd(), &Message::Failed(e.to_string()), &[]);
                return;
            }
        };
        match message {
            Message::Hold(mountpoint) => {
                if self.server.is_some() {
                    let pid = peer_pid(self.server.as_ref());
                    let _ = send(conn.as_fd(), &Message::Busy(pid), &[]);
                    return;
                }
                let Ok([fuse, state]) = <[OwnedFd; 2]>::try_from(fds) else {
                    let _ = send(
                        conn.as_fd(),
                        &Message::Failed("HOLD without its two descriptors".into()),
                        &[],
                    );
                    return;
                };
                info!(mountpoint = %mountpoint.display(), server = peer_pid(Some(&conn)), "holding the mount's connection");
                self.kept = Some(Kept {
                    held: Held { fuse, state },
                    mountpoint,
                });
                if send(conn.as_fd(), &Message::Ok(std::process::id()), &[]).is_ok() {
                    self.attach(conn);
                }
            }
            Message::Take | Message::Takeover(_) if self.kept.is_none() => {
                let _ = send(conn.as_fd(), &Message::Empty, &[]);
            }
            Message::Take | Message::Takeover(_) if self.server.is_none() => self.hand_to(conn),
            Message::Take => {
                let pid = peer_pid(self.server.as_ref());
                let _ = send(conn.as_fd(), &Message::Busy(pid), &[]);
            }
            Message::Takeover(within) => {
                let Some(server) = &self.server else { return };
                if self.waiting.is_some() {
                    let _ = send(
                        conn.as_fd(),
                        &Message::Failed("another takeover is under way".into()),
                        &[],
                    );
                    return;
                }
                info!(
                    server = peer_pid(Some(server)),
                    new = peer_pid(Some(&conn)),
                    "asking the serving process to hand the mount over"
                );
                if send(server.as_fd(), &Message::Handover(within), &[]).is_ok() {
                    // Its own deadline, then time to exit.
                    let deadline = Instant::now() + within + Duration::from_secs(10);
                    self.waiting = Some((conn, deadline));
                }
            }
            other => {
                let _ = send(
                    conn.as_fd(),
                    &Message::Failed(format!("unexpected {other:?}")),
                    &[],
                );
            }
        }
    }

    /// Hands what is kept to `conn`, which serves the mount from now on.
    fn hand_to(&mut self, conn: OwnedFd) {
        let Some(kept) = &self.kept else {
            let _ = send(conn.as_fd(), &Message::Empty, &[]);
            return;
        };
        // The previous server's descriptors close one by one as it exits
        // (this socket before its store's lock or its metrics port): the
        // next one gets the mount once it is gone entirely.
        if let Some(process) = self.server_process.take() {
            wait_exited(&process, Duration::from_secs(10));
        }
        let sent = send(
            conn.as_fd(),
            &Message::Held(kept.mountpoint.clone()),
            &[kept.held.fuse.as_fd(), kept.held.state.as_fd()],
        );
        match sent {
            Ok(()) => {
                info!(mountpoint = %kept.mountpoint.display(), server = peer_pid(Some(&conn)), "handed the mount to the next process");
                self.attach(conn);
            }
            Err(e) => warn!(error = %e, "could not hand the mount over"),
        }
    }
}

impl Holder {
    /// `conn`'s process serves the mount from now on.
    fn attach(&mut self, conn: OwnedFd) {
        self.server_process = pidfd(peer_pid(Some(&conn)));
        self.server = Some(conn);
    }
}

/// A pidfd of process `pid` (None for 0, an unknown pid, or a kernel
/// without pidfds).
fn pidfd(pid: u32) -> Option<OwnedFd> {
    if pid == 0 {
        return None;
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new
    // descriptor or -1; nothing else is touched.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a non-negative result is a new descriptor nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until the process of `pidfd` has exited (its pidfd reads as
/// ready), at most `limit`.
fn wait_exited(pidfd: &OwnedFd, limit: Duration) {
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(limit).unwrap_or(PollTimeout::MAX);
    if !matches!(poll(&mut fds, timeout), Ok(n) if n > 0) {
        warn!("the process that handed the mount over has not exited yet; handing it on anyway");
    }
}

/// The process at the other end of a connection (0 if unknown).
fn peer_pid(conn: Option<&OwnedFd>) -> u32 {
    conn.and_then(|c| getsockopt(c, sockopt::PeerCredentials).ok())
        .map_or(0, |cred| cred.pid() as u32)
}
