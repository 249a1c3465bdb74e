//! The short-read channel: small byte ranges of tasks (a random read's
//! pages) asked of this project's daemon in a plain framing on its
//! socket, beside gRPC, which keeps everything else.
//!
//! Why: a random 4 KiB read through the mount is one daemon round trip,
//! and over gRPC that round trip cost more CPU than everything else the
//! read does: per read the mount spent 110-150 us of CPU and the daemon
//! 90-125 us (HTTP/2 frames, tonic, a task per stream on both sides), so
//! one reader got 3,100-5,400 IOPS on this 2-core VM (fio psync, 2 GiB
//! task, daemon cold). A first cut of this framing, interleaved with gRPC
//! in one session: 7,280-8,210 IOPS against 4,334-5,397. This one: 68 and
//! 70 us of CPU per read, 5,946 and 6,737 IOPS in two runs of
//! `scripts/bench-mount.sh`.
//!
//! A connection says which protocol it speaks with its first byte: an
//! HTTP/2 client's preface starts with `P`, this channel's hello with
//! 0xDF, so one socket (one path to mount into a pod, one mode) serves
//! both. A daemon without the channel (a released dfdaemon, or one
//! emulating dragonfly-api 2.1.12) answers the hello as a broken HTTP/2
//! connection, and the client reads through gRPC from then on.
//!
//! Framing, all integers little-endian:
//! - hello, both ways: the 8 bytes of [`HELLO`];
//! - request: task id length (u8, 1..=[`MAX_ID_LEN`]), the task id,
//!   offset (u64), length (u32, 1..=[`MAX_LEN`]);
//! - reply: status (u8, a gRPC code), length (u32), then that many bytes:
//!   the content (status 0; the range clamped to the task's end) or an
//!   error message (UTF-8, at most [`MAX_MESSAGE`] bytes).
//!
//! One request at a time per connection; a malformed request closes it.

/// The first bytes of a connection on the channel, and the daemon's answer.
pub const HELLO: [u8; 8] = *b"\xDFdfc-sr1";
/// Longest task id a request may carry (ids are 64 hex digits).
pub const MAX_ID_LEN: usize = 128;
/// Longest range one request may ask for: what the daemon reads in one
/// go for gRPC too (its short ranges).
pub const MAX_LEN: u32 = 256 << 10;
/// Longest error message in a reply.
pub const MAX_MESSAGE: u32 = 4 << 10;
/// Bytes of a request before its task id, and after it.
pub const ID_LEN_BYTES: usize = 1;
pub const RANGE_BYTES: usize = 12;
/// Bytes of a reply before its payload.
pub const REPLY_HEADER: usize = 5;

/// A request's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub task_id: String,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    /// The request on the wire; None when a field is out of its bounds.
    pub fn encode(&self) -> Option<Vec<u8>> {
        let id = self.task_id.as_bytes();
        if id.is_empty() || id.len() > MAX_ID_LEN || self.length == 0 || self.length > MAX_LEN {
            return None;
        }
        let mut out = Vec::with_capacity(ID_LEN_BYTES + id.len() + RANGE_BYTES);
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.length.to_le_bytes());
        Some(out)
    }

    /// The offset and length that follow a task id.
    pub fn range_of(bytes: [u8; RANGE_BYTES]) -> (u64, u32) {
        let (offset, length) = bytes.split_at(8);
        let mut o = [0u8; 8];
        o.copy_from_slice(offset);
        let mut l = [0u8; 4];
        l.copy_from_slice(length);
        (u64::from_le_bytes(o), u32::from_le_bytes(l))
    }
}

/// A reply's header: its status and how many bytes follow.
pub fn reply_header(status: u8, len: u32) -> [u8; REPLY_HEADER] {
    let l = len.to_le_bytes();
    [status, l[0], l[1], l[2], l[3]]
}

pub fn parse_reply_header(h: [u8; REPLY_HEADER]) -> (u8, u32) {
    (h[0], u32::from_le_bytes([h[1], h[2], h[3], h[4]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_encodes_its_fields_in_order_and_refuses_what_is_out_of_bounds() {
        let req = Request {
            task_id: "ab".into(),
            offset: 0x0102,
            length: 4096,
        };
        let wire = req.encode().unwrap();
        assert_eq!(wire[0], 2);
        assert_eq!(&wire[1..3], b"ab");
        let mut range = [0u8; RANGE_BYTES];
        range.copy_from_slice(&wire[3..]);
        assert_eq!(Request::range_of(range), (0x0102, 4096));

        let bad = |task_id: &str, length| {
            Request {
                task_id: task_id.into(),
                offset: 0,
                length,
            }
            .encode()
        };
        assert_eq!(bad("", 1), None);
        assert_eq!(bad(&"a".repeat(MAX_ID_LEN + 1), 1), None);
        assert_eq!(bad("a", 0), None);
        assert_eq!(bad("a", MAX_LEN + 1), None);
        assert!(bad(&"a".repeat(MAX_ID_LEN), MAX_LEN).is_some());
    }

    #[test]
    fn a_reply_header_round_trips() {
        assert_eq!(parse_reply_header(reply_header(15, 70_000)), (15, 70_000));
    }

    #[test]
    fn the_hello_cannot_be_mistaken_for_an_http2_preface() {
        assert_ne!(HELLO[0], b'P');
    }
}
