//! The stream of a response that a task of the daemon feeds (a read, a
//! download), with the no-progress deadline: once the client has taken
//! nothing for that long while something waits for it (the task's send, or
//! chunks it queued while it waits for budget for the next block), the
//! response ends, and what was queued for the client (chunks holding the
//! memory budget) is dropped at once, not when the client's connection
//! goes. What the response holds beyond its queue (its send share) is its
//! [`Outgoing`]'s, which keeps it until the connection has written (or
//! discarded) every message encoded from the stream.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use dfcache_budget::Lease;

use super::outgoing::Outgoing;
use super::reply::{streamed, ResponseStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::{Response, Status};

type Item<T> = Result<T, Status>;
type Queue<T> = Arc<Mutex<Shared<T>>>;

/// What the stream owns and the feed reaches while the stream lives.
struct Shared<T> {
    /// None once the feed stalled.
    rx: Option<mpsc::Receiver<Item<T>>>,
}

/// The feeding side.
pub struct Feed<T> {
    tx: mpsc::Sender<Item<T>>,
    /// The stream's queue, while the stream (and so its client) lives.
    queue: Weak<Mutex<Shared<T>>>,
    /// Memory the response holds beyond its queued items.
    outgoing: Arc<Outgoing>,
    within: Duration,
    /// When the client last took an item, or the queue was last empty.
    moved: Moved,
}

/// The last time the client made progress, shared by both sides.
type Moved = Arc<Mutex<Instant>>;

/// Why a send did not go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The client went away.
    Gone,
    /// The client took nothing for the deadline; the response is over.
    Stalled,
}

/// A feed of `depth` items and the response stream it feeds; a send that
/// waits longer than `within` for room stalls the response.
pub fn feed<T: Send + 'static>(depth: usize, within: Duration) -> (Feed<T>, FeedStream<T>) {
    let (tx, rx) = mpsc::channel(depth);
    let queue = Arc::new(Mutex::new(Shared { rx: Some(rx) }));
    let moved = Arc::new(Mutex::new(Instant::now()));
    let outgoing = Outgoing::new();
    let feed = Feed {
        tx,
        queue: Arc::downgrade(&queue),
        outgoing: outgoing.clone(),
        within,
        moved: moved.clone(),
    };
    let stream = FeedStream {
        queue,
        outgoing,
        within,
        told: false,
        moved,
    };
    (feed, stream)
}

impl<T> Feed<T> {
    /// The no-progress deadline of a send.
    pub fn within(&self) -> Duration {
        self.within
    }

    /// Has the response hold `lease` until its last encoded message is
    /// written or discarded: memory that outlives the items, such as their
    /// encoded copies waiting in the connection's send buffer.
    pub fn hold(&self, lease: Lease) {
        self.outgoing.hold(lease);
    }

    pub async fn send(&self, item: Item<T>) -> Result<(), Stopped> {
        if self.tx.capacity() == self.tx.max_capacity() {
            // The client has taken everything so far.
            *lock(&self.moved) = Instant::now();
        }
        match self.guard(self.tx.send(item)).await? {
            Ok(()) => Ok(()),
            Err(_) => Err(Stopped::Gone),
        }
    }

    /// Runs `work` (a wait for budget, a send) unless the client stalls
    /// meanwhile: something is queued for it and it has taken nothing for
    /// the deadline. Then what was queued is dropped.
    pub async fn guard<F: Future>(&self, work: F) -> Result<F::Output, Stopped> {
        tokio::pin!(work);
        let check = (self.within / 4).max(Duration::from_millis(10));
        loop {
            if let Ok(out) = tokio::time::timeout(check, &mut work).await {
                return Ok(out);
            }
            if self.tx.is_closed() {
                return Err(Stopped::Gone);
            }
            let queued = self.tx.capacity() < self.tx.max_capacity();
            if queued && lock(&self.moved).elapsed() >= self.within {
                // Dropped here, with the memory its items hold; what
                // the connection still queues for it is discarded.
                if let Some(queue) = self.queue.upgrade() {
                    lock(&queue).rx.take();
                }
                self.outgoing.stall();
                return Err(Stopped::Stalled);
            }
        }
    }
}

/// The response stream: the fed items, or DEADLINE_EXCEEDED once the feed
/// stalled.
pub struct FeedStream<T> {
    queue: Queue<T>,
    outgoing: Arc<Outgoing>,
    within: Duration,
    told: bool,
    moved: Moved,
}

impl<T: Send + 'static> FeedStream<T> {
    /// The response, holding the stream's [`Outgoing`] until its encoded
    /// messages are gone.
    pub fn into_response(self) -> Response<ResponseStream<T>> {
        let outgoing = self.outgoing.clone();
        streamed(Box::pin(self), outgoing)
    }
}

impl<T> Stream for FeedStream<T> {
    type Item = Item<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = lock(&self.queue).rx.as_mut().map(|rx| rx.poll_recv(cx));
        match polled {
            Some(Poll::Ready(Some(item))) => {
                *lock(&self.moved) = Instant::now();
                Poll::Ready(Some(item))
            }
            Some(poll) => poll,
            None if self.told => Poll::Ready(None),
            None => {
                self.told = true;
                Poll::Ready(Some(Err(stalled(self.within))))
            }
        }
    }
}

/// The status of a transfer whose client moved nothing for `within`.
pub fn stalled(within: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "the transfer made no progress for {within:?} (the daemon's --progress-timeout); what it held is given back"
    ))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test(start_paused = true)]
    async fn a_feed_nobody_takes_from_stalls_and_drops_its_queue() {
        let (feed, mut stream) = feed::<std::sync::Arc<()>>(1, Duration::from_secs(5));
        let held = Arc::new(());
        feed.send(Ok(held.clone())).await.unwrap();
        assert_eq!(Arc::strong_count(&held), 2, "queued");
        assert_eq!(feed.send(Ok(held.clone())).await, Err(Stopped::Stalled));
        assert_eq!(Arc::strong_count(&held), 1, "the queue was dropped");
        let status = stream.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_with_chunks_queued_for_a_client_that_takes_none_stalls() {
        let (feed, mut stream) = feed::<Arc<()>>(4, Duration::from_secs(5));
        let held = Arc::new(());
        feed.send(Ok(held.clone())).await.unwrap();
        // A wait for something else (budget) that never comes.
        let waited = feed.guard(std::future::pending::<()>()).await;
        assert_eq!(waited, Err(Stopped::Stalled));
        assert_eq!(Arc::strong_count(&held), 1, "the queue was dropped");
        assert!(stream.next().await.unwrap().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_wait_with_nothing_queued_is_not_a_stall() {
        let (feed, mut stream) = feed::<u8>(4, Duration::from_secs(5));
        feed.send(Ok(1)).await.unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), 1);
        let waited = feed
            .guard(tokio::time::sleep(Duration::from_secs(60)))
            .await;
        assert_eq!(waited, Ok(()));
        // The client took its item a minute ago, but had nothing to take
        // since: the next send starts a new clock.
        feed.send(Ok(2)).await.unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), 2);
    }

    #[tokio::test]
    async fn a_feed_whose_client_is_gone_says_so() {
        let (feed, stream) = feed::<u8>(1, Duration::from_secs(5));
        drop(stream);
        assert_eq!(feed.send(Ok(1)).await, Err(Stopped::Gone));
    }
}
