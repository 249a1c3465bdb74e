//! The mount's side of the holder: taking a mount over from it, giving it
//! a new mount to hold, and the link the serving process keeps open to it
//! (its end tells the holder the process died; the holder uses it to ask
//! for a handover).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};

use super::wire::{recv, send, Message};
use crate::takeover::connection::Held;

/// What the holder said to a request for its mount.
pub enum Taken {
    /// It had one: this process serves it from now on.
    Held {
        held: Held,
        mountpoint: PathBuf,
        link: ServerLink,
    },
    /// Nothing to take over, and why (for the log).
    Nothing(String),
    /// A live process serves it (its pid).
    Busy(u32),
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("holder at {socket}: {source}")]
    Io {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("holder at {socket}: {why}")]
    Refused { socket: PathBuf, why: String },
    #[error("the mount at the holder {socket} is served by a live process (pid {pid})")]
    Busy { socket: PathBuf, pid: u32 },
}

/// The holder at a socket.
#[derive(Debug, Clone)]
pub struct HolderClient {
    socket: PathBuf,
}

impl HolderClient {
    pub fn new(socket: PathBuf) -> Self {
        Self { socket }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn io(&self, source: std::io::Error) -> LinkError {
        LinkError::Io {
            socket: self.socket.clone(),
            source,
        }
    }

    fn connect(&self) -> std::io::Result<OwnedFd> {
        let sock = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let addr = UnixAddr::new(&self.socket)?;
        connect(sock.as_raw_fd(), &addr)?;
        Ok(sock)
    }

    /// Whether a holder answers at the socket.
    pub fn answers(&self) -> bool {
        self.connect().is_ok()
    }

    /// Polls until a holder answers, or `within` passes.
    pub fn wait_answering(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.answers() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Asks for the mount the holder keeps. With `takeover`, a live process
    /// serving it is asked to hand it over first, within that long.
    pub fn take(&self, takeover: Option<Duration>) -> Result<Taken, LinkError> {
        let conn = match self.connect() {
            Ok(conn) => conn,
            Err(e) => {
                return Ok(Taken::Nothing(format!(
                    "no holder answers at {} ({e})",
                    self.socket.display()
                )))
            }
        };
        let (request, wait) = match takeover {
            Some(within) => (Message::Takeover(within), within + Duration::from_secs(15)),
            None => (Message::Take, Duration::from_secs(10)),
        };
        send(conn.as_fd(), &request, &[]).map_err(|e| self.io(e))?;
        let answer = recv(conn.as_fd(), Some(Instant::now() + wait)).map_err(|e| self.io(e))?;
        match answer {
            Some((Message::Held(mountpoint), fds)) => match <[OwnedFd; 2]>::try_from(fds) {
                Ok([fuse, state]) => Ok(Taken::Held {
                    held: Held { fuse, state },
                    mountpoint,
                    link: ServerLink {
                        conn,
                        holder_pid: 0,
                    },
                }),
                Err(_) => Err(LinkError::Refused {
                    socket: self.socket.clone(),
                    why: "HELD without its two descriptors".into(),
                }),
            },
            Some((Message::Empty, _)) => Ok(Taken::Nothing(format!(
                "the holder at {} holds no mount",
                self.socket.display()
            ))),
            Some((Message::Busy(pid), _)) => Ok(Taken::Busy(pid)),
            Some((Message::Failed(why), _)) => Err(LinkError::Refused {
                socket: self.socket.clone(),
                why,
            }),
            Some((other, _)) => Err(LinkError::Refused {
                socket: self.socket.clone(),
                why: format!("unexpected answer {other:?}"),
            }),
            None => Err(LinkError::Refused {
                socket: self.socket.clone(),
                why: "it closed the connection without an answer".into(),
            }),
        }
    }

    /// Gives the holder a mount this process serves.
    pub fn hold(&self, held: &Held, mountpoint: &Path) -> Result<ServerLink, LinkError> {
        let conn = self.connect().map_err(|e| self.io(e))?;
        send(
            conn.as_fd(),
            &Message::Hold(mountpoint.to_path_buf()),
            &[held.fuse.as_fd(), held.state.as_fd()],
        )
        .map_err(|e| self.io(e))?;
        match recv(conn.as_fd(), Some(Instant::now() + Duration::from_secs(10)))
            .map_err(|e| self.io(e))?
        {
            Some((Message::Ok(pid), _)) => Ok(ServerLink {
                conn,
                holder_pid: pid,
            }),
            Some((Message::Busy(pid), _)) => Err(LinkError::Busy {
                socket: self.socket.clone(),
                pid,
            }),
            other => Err(LinkError::Refused {
                socket: self.socket.clone(),
                why: format!("unexpected answer {:?}", other.map(|o| o.0)),
            }),
        }
    }
}

/// The serving process's connection to its holder, open for its life.
pub struct ServerLink {
    conn: OwnedFd,
    /// The holder's pid, when it said (0 for a link made by a takeover).
    pub holder_pid: u32,
}

/// What the holder tells its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEvent {
    /// Another `dfcache mount --takeover` waits: hand over within this long.
    Handover(Duration),
    /// The holder went away (killed, or its container restarted).
    HolderGone,
}

impl ServerLink {
    /// Blocks until the holder says something or goes away.
    pub fn next_event(&self) -> LinkEvent {
        loop {
            match recv(self.conn.as_fd(), None) {
                Ok(Some((Message::Handover(within), _))) => return LinkEvent::Handover(within),
                Ok(Some(_)) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Ok(None) | Err(_) => return LinkEvent::HolderGone,
            }
        }
    }

    /// Done handing over: this process exits next.
    pub fn handed(&self) -> std::io::Result<()> {
        send(self.conn.as_fd(), &Message::Handed, &[])
    }

    /// Unmounted for good: the holder lets go and exits.
    pub fn release(&self) -> std::io::Result<()> {
        send(self.conn.as_fd(), &Message::Release, &[])
    }
}
