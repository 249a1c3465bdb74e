//! What a response's encoded messages hold until the connection has
//! written them to the socket.
//!
//! tonic encodes each message of a response into a buffer of its own (a
//! copy of a 1 MiB chunk) and hands it to hyper, whose HTTP/2 connection
//! queues it until the socket takes it. A response's stream ending does
//! not mean its messages are gone: the last ones wait in the connection's
//! queue for as long as the client takes to read them. Counted only until
//! the stream ended, they were outside the budget, and the more exports
//! at once, the more of them waited for their clients: the daemon's peak
//! RSS grew by about 0.3 MiB per export at once beyond its budget
//! (`scripts/measure-concurrency.sh`: +58 MiB at 16 exports, +127 MiB at
//! 200).
//!
//! So a response's send share ([`Outgoing`]) lives as long as any of its
//! encoded messages does. [`layer`] wraps the body of every
//! response that carries an `Outgoing` in its extensions, and each data
//! frame passed to hyper holds the share until hyper drops it (written, or
//! discarded with the stream). How much is in flight is hyper's and h2's to
//! bound: hyper hands h2 a message once h2 has room for a byte, and h2
//! gives room while less than 400 KiB of the stream waits; with the frame
//! h2 keeps after writing it, about two encoded chunks, which
//! `SEND_SHARE` covers. (Holding the body back until the share had room
//! for the next frame cost a 1 GiB export 7 to 11% of its speed: h2 lets
//! go of a written frame only when it next has something to do.)
//!
//! A response whose client stopped taking (its feed stalled) gives its
//! share back at once, as it did before the share outlived the stream:
//! what its connection still queues for it waits for a client that may
//! never read, and must not hold the budget from the transfers that run.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use dfcache_budget::Lease;
use http_body::{Body, Frame, SizeHint};
use tonic::codegen::http;
use tower::util::MapResponseLayer;

/// One response's send share, held by the response's body and by every
/// data frame of it that hyper has not dropped yet.
#[derive(Default)]
pub struct Outgoing {
    share: Mutex<Lease>,
}

impl Outgoing {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// The response holds `lease` until its last encoded byte is gone.
    pub fn hold(&self, lease: Lease) {
        self.lock().merge(lease);
    }

    /// The client took nothing for the no-progress deadline: the share
    /// goes back now.
    pub fn stall(&self) {
        *self.lock() = Lease::empty();
    }

    /// `data`, holding the share until hyper drops it (and every slice of
    /// it).
    fn carry(self: &Arc<Self>, data: Bytes) -> Bytes {
        Bytes::from_owner(InFlight {
            data,
            _outgoing: self.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Lease> {
        self.share
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A data frame handed to hyper, with the share it holds.
struct InFlight {
    data: Bytes,
    _outgoing: Arc<Outgoing>,
}

impl AsRef<[u8]> for InFlight {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// A response body whose data frames hold its [`Outgoing`].
pub struct Carrying<B> {
    inner: B,
    outgoing: Arc<Outgoing>,
}

impl<B> Body for Carrying<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        Poll::Ready(frame.map(|frame| {
            frame.map(|frame| match frame.into_data() {
                Ok(data) => Frame::data(self.outgoing.carry(data)),
                Err(frame) => frame,
            })
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Has the body of each response that carries an [`Outgoing`] in its
/// extensions hold it (see [`Carrying`]); other responses pass as they are.
pub fn layer() -> MapResponseLayer<fn(Response) -> Response> {
    MapResponseLayer::new(carry_outgoing as fn(Response) -> Response)
}

type Response = http::Response<tonic::body::Body>;

fn carry_outgoing(mut response: Response) -> Response {
    match response.extensions_mut().remove::<Arc<Outgoing>>() {
        Some(outgoing) => {
            response.map(|inner| tonic::body::Body::new(Carrying { inner, outgoing }))
        }
        None => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfcache_budget::MemoryBudget;
    use dfcache_wire::domain::CHUNK_SIZE;
    use http_body_util::BodyExt;
    use tokio_stream::StreamExt;
    use tower::{Layer, Service};

    const MIB: u64 = 1 << 20;

    /// A body of `n` frames of 1 MiB.
    fn chunks(n: usize) -> tonic::body::Body {
        let frames =
            tokio_stream::iter((0..n).map(|i| {
                Ok::<_, tonic::Status>(Frame::data(Bytes::from(vec![i as u8; CHUNK_SIZE])))
            }));
        tonic::body::Body::new(http_body_util::StreamBody::new(frames))
    }

    /// A body of `n` frames carrying a share of `share` bytes of a 16 MiB
    /// budget.
    async fn carrying(
        share: u64,
        n: usize,
    ) -> (MemoryBudget, Arc<Outgoing>, Carrying<tonic::body::Body>) {
        let budget = MemoryBudget::new(16 * MIB);
        let outgoing = Outgoing::new();
        outgoing.hold(budget.acquire(share).await);
        let body = Carrying {
            inner: chunks(n),
            outgoing: outgoing.clone(),
        };
        (budget, outgoing, body)
    }

    #[tokio::test]
    async fn the_share_lasts_until_the_last_frame_is_dropped() {
        let (budget, outgoing, mut body) = carrying(4 * MIB, 2).await;
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(body.frame().await.is_none());
        drop(body);
        drop(outgoing);
        assert_eq!(budget.held(), 4 * MIB, "frames still queued hold the share");
        drop(first);
        assert_eq!(budget.held(), 4 * MIB);
        drop(second);
        assert_eq!(budget.held(), 0, "the last frame gave the share back");
    }

    #[tokio::test]
    async fn a_stall_gives_the_share_back_though_frames_wait_in_the_connection() {
        let (budget, outgoing, mut body) = carrying(3 * MIB, 3).await;
        let queued = body.frame().await.unwrap().unwrap();
        outgoing.stall();
        assert_eq!(budget.held(), 0);
        drop(queued);
    }

    #[tokio::test]
    async fn the_layer_wraps_only_responses_that_carry_an_outgoing() {
        let budget = MemoryBudget::new(16 * MIB);
        let service = tower::service_fn({
            let budget = budget.clone();
            move |request: http::Request<()>| {
                let budget = budget.clone();
                async move {
                    let mut response = http::Response::new(chunks(1));
                    if request.uri().path() == "/carried" {
                        let outgoing = Outgoing::new();
                        outgoing.hold(budget.acquire(3 * MIB).await);
                        response.extensions_mut().insert(outgoing);
                    }
                    Ok::<_, std::convert::Infallible>(response)
                }
            }
        });
        let mut service = layer().layer(service);
        let call = |path: &'static str| http::Request::get(path).body(()).unwrap();

        let plain = Service::call(&mut service, call("/plain")).await.unwrap();
        let frame = plain.into_body().frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap()[..], [0u8; CHUNK_SIZE][..]);
        assert_eq!(budget.held(), 0);

        let carried = Service::call(&mut service, call("/carried")).await.unwrap();
        let mut frames = carried.into_body().into_data_stream();
        let frame = frames.next().await.unwrap().unwrap();
        assert_eq!(frame[..], [0u8; CHUNK_SIZE][..]);
        drop(frames);
        assert_eq!(
            budget.held(),
            3 * MIB,
            "the frame hyper holds keeps the share"
        );
        drop(frame);
        assert_eq!(budget.held(), 0);
    }
}
