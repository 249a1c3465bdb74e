//! An accepted connection with its caller attached, as tonic takes it.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::Connected;

use super::Caller;

/// A connection and who made it. Served to tonic, every request on it
/// carries the [`Caller`] as an extension (`request.extensions()`).
pub struct PeerStream {
    stream: UnixStream,
    caller: Caller,
}

impl PeerStream {
    pub fn new(stream: UnixStream, caller: Caller) -> Self {
        Self { stream, caller }
    }

    /// Reads the credentials of a just-accepted connection.
    pub fn accepted(stream: UnixStream) -> std::io::Result<Self> {
        let caller = Caller::of(&stream)?;
        Ok(Self { stream, caller })
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    pub fn into_parts(self) -> (UnixStream, Caller) {
        (self.stream, self.caller)
    }
}

impl Connected for PeerStream {
    type ConnectInfo = Caller;

    fn connect_info(&self) -> Caller {
        self.caller.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
