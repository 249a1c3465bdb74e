//! Transport settings shared by both ends of the Unix socket.
//!
//! Numbers measured on these machines (docs/ARCHITECTURE.md): HTTP/2 frames of 1 MiB (the default
//! 16 KiB is the main throughput limit), large flow-control windows, and a
//! message limit above the 1 MiB chunks plus protobuf framing.

/// HTTP/2 max frame size on both ends.
pub const GRPC_FRAME_SIZE: u32 = 1 << 20;
/// Per-stream flow-control window.
pub const GRPC_STREAM_WINDOW: u32 = 16 << 20;
/// Per-connection flow-control window.
pub const GRPC_CONNECTION_WINDOW: u32 = 64 << 20;
/// Largest message either end decodes. Chunks are 1 MiB and pieces up to
/// 64 MiB (legacy piece content), plus framing.
pub const GRPC_MAX_MESSAGE: usize = (64 << 20) + (1 << 16);

/// HTTP/2 receive settings: how much the daemon may send ahead of what the
/// client has read, and in what frames. Large windows are fastest for one
/// big transfer; a process with many concurrent streams (the mount) bounds
/// its memory with smaller ones.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    pub stream: u32,
    pub connection: u32,
    /// Largest DATA frame the daemon may send.
    pub frame: u32,
}

impl Windows {
    /// For one large transfer at a time (the CLI).
    pub const TRANSFER: Windows = Windows {
        stream: GRPC_STREAM_WINDOW,
        connection: GRPC_CONNECTION_WINDOW,
        frame: GRPC_FRAME_SIZE,
    };
    /// For many piece reads at once (the mount): at most 16 MiB buffered.
    ///
    /// Frames of 256 KiB rather than 1 MiB, so the mount can keep the
    /// chunks tonic hands it instead of copying each one. tonic's decoder
    /// reserves a message's whole length again after its header, on top of
    /// what is already buffered: with 1 MiB frames nearly the whole message
    /// is, so every 1 MiB chunk pinned a 2 MiB buffer (and was realloc'd
    /// into it, 8% of the mount's CPU in `perf`); with 256 KiB frames a
    /// chunk pins at most 1.25 MiB. Measured, 2 GiB read through the mount,
    /// the daemon's file cached, three runs each: 1 MiB frames and a copy
    /// per chunk 651-700 MiB/s, 2.20-2.36 s of mount CPU, peak RSS 220 MiB;
    /// 256 KiB frames uncopied 656-712 MiB/s, 1.88-2.08 s, 229-239 MiB
    /// (1 MiB frames uncopied: 350 MiB).
    pub const BOUNDED: Windows = Windows {
        stream: 4 << 20,
        connection: 16 << 20,
        frame: 256 << 10,
    };
    /// The daemon's: what a client may send ahead of what the daemon has
    /// read. An import waiting for its turn (its import slot, its share of
    /// the memory budget) does not read, so every such import holds its
    /// stream window outside any budget: it is kept small. Measured, one
    /// 2 GiB import, three runs each on a busy machine: 16 MiB windows and
    /// 1 MiB frames 5.3-5.8 s, 1 MiB and 256 KiB 4.4-5.8 s, 256 KiB and
    /// 128 KiB 3.7-5.0 s, 128 KiB and 64 KiB 4.8-7.1 s (the disk's write
    /// is the limit). The connection window is the sum of the stream
    /// windows of `DAEMON_MAX_STREAMS` streams, so streams that wait on one
    /// connection (the mount's) can never use up the window of a stream
    /// that is being read: with 16 MiB stream windows and a 64 MiB
    /// connection window, 50 writers into one mount (16 of them stored,
    /// the rest waiting) stalled the stored ones until 32 imports timed
    /// out.
    pub const DAEMON: Windows = Windows {
        stream: DAEMON_STREAM_WINDOW,
        connection: DAEMON_STREAM_WINDOW * DAEMON_MAX_STREAMS,
        frame: 128 << 10,
    };
}

/// The daemon's stream window (see `Windows::DAEMON`).
const DAEMON_STREAM_WINDOW: u32 = 256 << 10;
/// Streams at once on one connection to the daemon; a client opens more
/// when some have ended.
pub const DAEMON_MAX_STREAMS: u32 = 256;
