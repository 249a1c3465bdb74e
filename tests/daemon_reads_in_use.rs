//! A task being read keeps its content: GC skips it until the stream ends,
//! and a delete hides it from new readers while the running stream
//! finishes with the content it started with.

use std::time::Duration;

use bytes::Bytes;
use tokio_stream::StreamExt;
use tonic::Code;

use dfcache_daemon::server::ServeOptions;
use dfcache_wire::pb::dfdaemon::read_persistent_cache_task_response::Response as ReadMsg;
use dfcache_wire::pb::dfdaemon::write_persistent_cache_task_request::Response as WriteMsg;
use dfcache_wire::pb::dfdaemon::*;

mod common;

use common::inproc::{drain, ReadStream, Running};

/// Larger than everything that can be in flight (the server's queue, the
/// HTTP/2 windows), so the server's read task is still running while the
/// test holds the stream without reading it.
const LEN: usize = 96 << 20;

fn content(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 13) as u8)
        .collect()
}

async fn write_with_ttl(d: &Running, data: &[u8], ttl_secs: i64) -> String {
    let mut msgs = vec![WriteMsg::WritePersistentCacheTaskStartedRequest(
        WritePersistentCacheTaskStartedRequest {
            content_length: data.len() as u64,
            persistent_replica_count: 1,
            ttl: Some(prost_types::Duration {
                seconds: ttl_secs,
                nanos: 0,
            }),
            ..Default::default()
        },
    )];
    for c in data.chunks(1 << 20) {
        msgs.push(WriteMsg::WriteChunkRequest(WriteChunkRequest {
            content: Bytes::copy_from_slice(c),
        }));
    }
    msgs.push(WriteMsg::WritePersistentCacheTaskFinishedRequest(
        WritePersistentCacheTaskFinishedRequest {},
    ));
    let stream = tokio_stream::iter(
        msgs.into_iter()
            .map(|m| WritePersistentCacheTaskRequest { response: Some(m) }),
    );
    d.raw()
        .write_persistent_cache_task(stream)
        .await
        .unwrap()
        .into_inner()
        .task_id
}

/// Opens a read of the whole task and takes its first chunk.
async fn start_read(d: &Running, id: &str) -> (ReadStream, Vec<u8>) {
    let mut stream = d.read_stream(id).await;
    let mut got = Vec::new();
    while got.is_empty() {
        match stream.next().await.unwrap().unwrap().response {
            Some(ReadMsg::ReadChunkResponse(c)) => got.extend_from_slice(&c.content),
            _ => continue,
        }
    }
    (stream, got)
}

/// Polls `cond` every 20 ms for up to 10 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_task_being_read_is_collected_only_after_its_stream_ends() {
    let d = Running::start(ServeOptions {
        // GC runs by hand below; the background one must not race it.
        gc_interval: Duration::from_secs(3600),
        min_ttl: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let data = content(LEN);
    // The read must start before the task expires, and a 1 s TTL, which
    // runs from the end of the write, can be over before the write returns
    // on a busy disk (the commit syncs). So the task is written to last,
    // the read started, then the same content written again with a 1 s
    // TTL: storing content already stored refreshes the task's metadata.
    let id = write_with_ttl(&d, &data, 3600).await;
    let data_file = d.store_dir().join(format!("tasks/{id}.data"));
    let (stream, got) = start_read(&d, &id).await;
    assert_eq!(write_with_ttl(&d, &data, 1).await, id);

    let store = d.store.clone();
    eventually("the task to expire", || store.get(&id).is_err()).await;
    assert_eq!(
        d.store.collect_expired(),
        0,
        "a task being read was collected"
    );
    assert!(
        data_file.exists(),
        "the content of a task being read was removed"
    );

    assert!(
        drain(stream, got).await == data,
        "the read is not byte-exact"
    );
    // The server's read task has ended with the stream: the next round
    // collects the task.
    let store = d.store.clone();
    eventually("the task to be collected", || store.collect_expired() == 1).await;
    assert!(!data_file.exists());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_deleted_while_being_read_disappears_for_new_readers_and_the_running_read_completes()
{
    let d = Running::start(ServeOptions::default()).await;
    let data = content(LEN);
    let id = write_with_ttl(&d, &data, 3600).await;
    let (stream, got) = start_read(&d, &id).await;

    d.client().delete(&id).await.unwrap();
    assert!(d.store.list().is_empty(), "a deleted task is still listed");
    let err = d
        .raw()
        .read_persistent_cache_task(ReadPersistentCacheTaskRequest {
            task_id: id.clone(),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    assert!(
        drain(stream, got).await == data,
        "the running read was cut short"
    );
    d.stop().await;
}
