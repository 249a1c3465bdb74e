//! The daemon's memory budget: many transfers at once under a small budget
//! all succeed byte-exact, the budget is what makes them wait (its bytes
//! held never pass it), and a transfer that waited for its share and then
//! stalls ends with DEADLINE_EXCEEDED and gives its share back. (What the
//! budget does to the daemon's RSS is measured by
//! `scripts/measure-concurrency.sh`, not asserted here.)

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dfcache_budget::MemoryBudget;
use dfcache_client::{Client, ReadRange};
use dfcache_daemon::memory::TransferMemory;
use dfcache_daemon::server::ServeOptions;
use dfcache_wire::pb::dfdaemon::write_persistent_cache_task_request::Response as Msg;
use dfcache_wire::pb::dfdaemon::{
    WritePersistentCacheTaskRequest, WritePersistentCacheTaskStartedRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

mod common;

use common::id_of;
use common::inproc::{chunk, finished, write_bytes, Running};

const MIB: u64 = 1 << 20;

/// `len` bytes of content `seed`, unlike any other seed's.
fn content(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(seed as u8 | 1) ^ (i >> 13) as u8 ^ seed as u8)
        .collect()
}

/// Samples the budget until stopped: the most bytes held and the most
/// transfers waiting at any one time.
struct Watch {
    done: Arc<AtomicBool>,
    most_held: Arc<AtomicU64>,
    most_waiting: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

impl Watch {
    fn start(budget: &MemoryBudget) -> Watch {
        let (done, most_held, most_waiting) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let thread = std::thread::spawn({
            let (budget, done) = (budget.clone(), done.clone());
            let (most_held, most_waiting) = (most_held.clone(), most_waiting.clone());
            move || {
                while !done.load(Ordering::SeqCst) {
                    most_held.fetch_max(budget.held(), Ordering::SeqCst);
                    most_waiting.fetch_max(budget.waiting(), Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        Watch {
            done,
            most_held,
            most_waiting,
            thread,
        }
    }

    /// (most bytes held, most transfers waiting)
    fn stop(self) -> (u64, usize) {
        self.done.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
        (
            self.most_held.load(Ordering::SeqCst),
            self.most_waiting.load(Ordering::SeqCst),
        )
    }
}

/// Polls `cond` every 10 ms for up to 20 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 20 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_under_a_64_mib_budget_serves_50_imports_then_50_exports_at_once_byte_exact() {
    const TRANSFERS: usize = 50;
    const LEN: usize = 6 << 20;
    let budget = MemoryBudget::new(64 * MIB);
    let d = Arc::new(
        Running::start(ServeOptions {
            memory_budget: budget.clone(),
            ..Default::default()
        })
        .await,
    );

    let watch = Watch::start(&budget);
    let imports: Vec<_> = (0..TRANSFERS)
        .map(|i| {
            let d = d.clone();
            // One client (one connection) per import, as separate programs.
            tokio::spawn(async move { write_bytes(&d.client(), &content(i, LEN)).await })
        })
        .collect();
    let mut ids = Vec::new();
    for (i, import) in imports.into_iter().enumerate() {
        let id = import.await.unwrap();
        assert_eq!(id, id_of(&content(i, LEN)), "import {i}");
        ids.push(id);
    }
    let (held, waiting) = watch.stop();
    assert!(held <= budget.capacity(), "{held} bytes held");
    assert!(waiting > 0, "no import ever waited for the budget");

    let watch = Watch::start(&budget);
    let exports: Vec<_> = ids
        .iter()
        .cloned()
        .map(|id| {
            let client = Client::new(&d.socket);
            tokio::spawn(async move {
                let mut reader = client.read_task(&id, ReadRange::default()).await.unwrap();
                let mut got = Vec::with_capacity(LEN);
                while let Some((_, bytes)) = reader.next_chunk().await.unwrap() {
                    got.extend_from_slice(&bytes);
                }
                got
            })
        })
        .collect();
    for (i, export) in exports.into_iter().enumerate() {
        assert!(
            export.await.unwrap() == content(i, LEN),
            "export {i} is not byte-exact"
        );
    }
    let (held, waiting) = watch.stop();
    assert!(held <= budget.capacity(), "{held} bytes held");
    assert!(waiting > 0, "no export ever waited for the budget");

    // Everything is given back; what read blocks were kept for reuse goes
    // to the first transfer that needs the room.
    let whole = tokio::time::timeout(Duration::from_secs(20), budget.acquire(budget.capacity()))
        .await
        .expect("the whole budget is free again");
    drop(whole);
    assert_eq!(d.leftovers(), 0, "files left in tmp/");
    if let Ok(d) = Arc::try_unwrap(d) {
        d.stop().await;
    }
}

/// A raw import stream: the started message (no announced length), then
/// whatever is sent on the returned sender.
async fn raw_import(
    d: &Running,
) -> (
    mpsc::Sender<WritePersistentCacheTaskRequest>,
    tokio::task::JoinHandle<Result<String, tonic::Status>>,
) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(WritePersistentCacheTaskRequest {
        response: Some(Msg::WritePersistentCacheTaskStartedRequest(
            WritePersistentCacheTaskStartedRequest::default(),
        )),
    })
    .await
    .unwrap();
    let mut raw = d.raw();
    let call = tokio::spawn(async move {
        raw.write_persistent_cache_task(ReceiverStream::new(rx))
            .await
            .map(|r| r.into_inner().task_id)
    });
    (tx, call)
}

async fn send(tx: &mpsc::Sender<WritePersistentCacheTaskRequest>, msg: Msg) {
    tx.send(WritePersistentCacheTaskRequest {
        response: Some(msg),
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_that_waited_for_its_share_then_stalls_fails_and_gives_the_share_back() {
    // Room for one import's share at a time.
    let share = TransferMemory::new(MemoryBudget::new(64 * MIB)).import_share(None, true);
    let budget = MemoryBudget::new(share * 3 / 2);
    let progress_timeout = Duration::from_secs(1);
    let d = Running::start(ServeOptions {
        memory_budget: budget.clone(),
        progress_timeout,
        ..Default::default()
    })
    .await;

    // A holds the budget, sending a chunk now and then.
    let (a, a_call) = raw_import(&d).await;
    send(&a, chunk(&[1u8; 1000])).await;
    eventually("A holds its share", || budget.held() >= share).await;

    // B waits for its share (its stream is not read meanwhile).
    let (b, b_call) = raw_import(&d).await;
    send(&b, chunk(&[2u8; 1000])).await;
    eventually("B waits for the budget", || budget.waiting() == 1).await;
    for _ in 0..3 {
        tokio::time::sleep(progress_timeout / 3).await;
        send(&a, chunk(&[1u8; 1000])).await;
    }
    assert_eq!(
        budget.waiting(),
        1,
        "B still waits (waiting is not a stall)"
    );

    // A finishes; B gets the share, then sends nothing more.
    send(&a, finished()).await;
    let a_id = a_call.await.unwrap().expect("A is stored");
    assert_eq!(a_id, id_of(&[1u8; 4000]));
    eventually("B holds its share", || {
        budget.waiting() == 0 && budget.held() > 0
    })
    .await;
    let status = tokio::time::timeout(Duration::from_secs(20), b_call)
        .await
        .expect("B ended")
        .unwrap()
        .expect_err("B stalled");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("no progress"), "{status:?}");
    drop(b);

    // Its share is back, and the next import goes through.
    eventually("the budget is free again", || budget.held() == 0).await;
    let data = content(7, 3 << 20);
    assert_eq!(write_bytes(&d.client(), &data).await, id_of(&data));
    assert_eq!(d.leftovers(), 0, "files left in tmp/");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_client_stops_taking_ends_and_gives_its_blocks_back() {
    let budget = MemoryBudget::new(16 * MIB);
    let progress_timeout = Duration::from_secs(1);
    let d = Running::start(ServeOptions {
        memory_budget: budget.clone(),
        progress_timeout,
        ..Default::default()
    })
    .await;
    let data = content(3, 48 << 20);
    let id = write_bytes(&d.client(), &data).await;

    // A reader that takes the first chunk and then nothing: the daemon
    // fills the budget with what it queues for it, and a second reader
    // waits for room.
    let mut stalled = d.read_stream(&id).await;
    let first = tokio_stream::StreamExt::next(&mut stalled).await;
    assert!(matches!(first, Some(Ok(_))));
    eventually("the stalled read fills the budget", || {
        budget.waiting() > 0 || budget.held() >= budget.capacity() / 2
    })
    .await;
    let client = Client::new(&d.socket);
    let second = tokio::spawn(async move {
        let mut reader = client.read_task(&id, ReadRange::default()).await.unwrap();
        let mut got = Vec::new();
        while let Some((_, bytes)) = reader.next_chunk().await.unwrap() {
            got.extend_from_slice(&bytes);
        }
        got
    });
    // The stalled read is ended within its deadline; its blocks go to the
    // second reader, which gets every byte.
    let got = tokio::time::timeout(Duration::from_secs(30), second)
        .await
        .expect("the second read finished")
        .unwrap();
    assert!(got == data, "the second read is not byte-exact");
    drop(stalled);
    let whole = tokio::time::timeout(Duration::from_secs(20), budget.acquire(budget.capacity()))
        .await
        .expect("the whole budget is free again");
    drop(whole);
    d.stop().await;
}
