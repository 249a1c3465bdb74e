//! The holder's protocol: short messages over a Unix SOCK_SEQPACKET
//! socket (one message per send, descriptors beside it as SCM_RIGHTS).
//!
//! ```text
//! mount -> holder   HOLD <mountpoint> [fuse, state]   keep these; I serve them
//!                   TAKE                              give me what you hold
//!                   TAKEOVER <ms>                     ... asking its server to hand over
//!                   HANDED                            (the server) done, exiting now
//!                   RELEASE                           unmounted for good: let go, exit
//! holder -> mount   OK <pid> | BUSY <pid> | EMPTY | FAILED <why>
//!                   HELD <mountpoint> [fuse, state]   now yours: you are its server
//!                   HANDOVER <ms>                     (to the server) hand over within <ms>
//! ```
//!
//! Every message starts with `dfcache-holder/1`: a holder and a mount of
//! different protocol versions refuse each other in words.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

const PREFIX: &[u8] = b"dfcache-holder/1 ";
const MAX_MESSAGE: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hold(PathBuf),
    Take,
    Takeover(Duration),
    Handed,
    Release,
    Ok(u32),
    Busy(u32),
    Empty,
    Failed(String),
    Held(PathBuf),
    Handover(Duration),
}

impl Message {
    fn encode(&self) -> Vec<u8> {
        let mut out = PREFIX.to_vec();
        let (verb, arg): (&str, Vec<u8>) = match self {
            Message::Hold(p) => ("HOLD", p.as_os_str().as_bytes().to_vec()),
            Message::Take => ("TAKE", vec![]),
            Message::Takeover(t) => ("TAKEOVER", t.as_millis().to_string().into_bytes()),
            Message::Handed => ("HANDED", vec![]),
            Message::Release => ("RELEASE", vec![]),
            Message::Ok(pid) => ("OK", pid.to_string().into_bytes()),
            Message::Busy(pid) => ("BUSY", pid.to_string().into_bytes()),
            Message::Empty => ("EMPTY", vec![]),
            Message::Failed(why) => ("FAILED", why.as_bytes().to_vec()),
            Message::Held(p) => ("HELD", p.as_os_str().as_bytes().to_vec()),
            Message::Handover(t) => ("HANDOVER", t.as_millis().to_string().into_bytes()),
        };
        out.extend_from_slice(verb.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&arg);
        out
    }

    fn decode(bytes: &[u8]) -> std::io::Result<Message> {
        let bad = |why: &str| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("holder protocol: {why}"),
            )
        };
        let rest = bytes.strip_prefix(PREFIX).ok_or_else(|| {
            bad("not a dfcache-holder/1 message (a holder or mount of another version?)")
        })?;
        let (verb, arg) = match rest.iter().position(|b| *b == b' ') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        let text = || String::from_utf8_lossy(arg).into_owned();
        let number = || text().parse::<u64>().map_err(|_| bad("a number expected"));
        let path = || PathBuf::from(std::ffi::OsString::from_vec(arg.to_vec()));
        Ok(match verb {
            b"HOLD" => Message::Hold(path()),
            b"TAKE" => Message::Take,
            b"TAKEOVER" => Message::Takeover(Duration::from_millis(number()?)),
            b"HANDED" => Message::Handed,
            b"RELEASE" => Message::Release,
            b"OK" => Message::Ok(number()? as u32),
            b"BUSY" => Message::Busy(number()? as u32),
            b"EMPTY" => Message::Empty,
            b"FAILED" => Message::Failed(text()),
            b"HELD" => Message::Held(path()),
            b"HANDOVER" => Message::Handover(Duration::from_millis(number()?)),
            other => {
                return Err(bad(&format!(
                    "unknown message {:?}",
                    String::from_utf8_lossy(other)
                )))
            }
        })
    }
}

/// Sends `message` with `fds` beside it.
pub fn send(
    sock: BorrowedFd<'_>,
    message: &Message,
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<()> {
    let bytes = message.encode();
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let cmsgs = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsgs };
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(std::io::Error::from)?;
    Ok(())
}

/// The next message and the descriptors beside it; None when the peer
/// closed. With a deadline, a peer that sends nothing by then is an error.
pub fn recv(
    sock: BorrowedFd<'_>,
    deadline: Option<Instant>,
) -> std::io::Result<Option<(Message, Vec<OwnedFd>)>> {
    // One poll waits at most u16::MAX ms: poll again until the deadline.
    while let Some(deadline) = deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(sock, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) if left.as_millis() <= u128::from(u16::MAX) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the holder's peer did not answer in time",
                ))
            }
            Ok(0) | Err(nix::errno::Errno::EINTR) => {}
            Ok(_) => break,
            Err(e) => return Err(e.into()),
        }
    }
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for fd in raw {
                // SAFETY: the kernel just installed `fd` in this process for
                // us (SCM_RIGHTS); nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    let len = msg.bytes;
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    Ok(Some((Message::decode(&buf[..len])?, fds)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsFd;

    #[test]
    fn messages_and_descriptors_cross_a_socket() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let file = tempfile::tempfile().unwrap();
        let hold = Message::Hold(PathBuf::from("/mnt/with space/é"));
        send(a.as_fd(), &hold, &[file.as_fd(), file.as_fd()]).unwrap();
        let (got, fds) = recv(b.as_fd(), None).unwrap().unwrap();
        assert_eq!(got, hold);
        assert_eq!(fds.len(), 2);
        for m in [
            Message::Takeover(Duration::from_millis(1500)),
            Message::Busy(42),
            Message::Failed("no".into()),
        ] {
            send(a.as_fd(), &m, &[]).unwrap();
            assert_eq!(recv(b.as_fd(), None).unwrap().unwrap().0, m);
        }
        let late = recv(b.as_fd(), Some(Instant::now() + Duration::from_millis(20)));
        assert_eq!(late.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
        drop(a);
        assert!(recv(b.as_fd(), None).unwrap().is_none());
    }

    #[test]
    fn another_protocol_is_refused_in_words() {
        let err = Message::decode(b"dfcache-holder/2 TAKE").unwrap_err();
        assert!(err.to_string().contains("another version"), "{err}");
    }
}
