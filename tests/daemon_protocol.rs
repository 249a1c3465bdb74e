//! The embedded daemon at the wire level: malformed streams, range reads,
//! clients written against dragonfly-api 2.1.12, concurrency and TTL. The
//! daemon runs in-process on a real Unix socket.

use std::time::Duration;

use tonic::Code;

use dfcache_client::{ImportOptions, NoProgress, ReadRange};
use dfcache_daemon::server::{Emulation, ServeOptions};
use dfcache_wire::pb::dfdaemon::read_persistent_cache_task_response::Response as ReadMsg;
use dfcache_wire::pb::dfdaemon::write_persistent_cache_task_request::Response as WriteMsg;
use dfcache_wire::pb::dfdaemon::*;

mod common;

use common::id_of;
use common::inproc::{chunk, finished, write_bytes, Running};

const MIB: usize = 1 << 20;

fn started(len: u64) -> WriteMsg {
    WriteMsg::WritePersistentCacheTaskStartedRequest(WritePersistentCacheTaskStartedRequest {
        content_length: len,
        persistent_replica_count: 1,
        tag: None,
        application: None,
        ttl: None,
        piece_length: None,
        content_for_calculating_task_id: None,
    })
}

async fn write_raw(
    d: &Running,
    msgs: Vec<WriteMsg>,
) -> Result<WritePersistentCacheTaskResponse, tonic::Status> {
    let stream = tokio_stream::iter(
        msgs.into_iter()
            .map(|m| WritePersistentCacheTaskRequest { response: Some(m) }),
    );
    d.raw()
        .write_persistent_cache_task(stream)
        .await
        .map(|r| r.into_inner())
}

fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

#[tokio::test]
async fn malformed_streams_are_invalid_argument_and_store_nothing() {
    let d = Running::start(ServeOptions::default()).await;
    let cases: Vec<(&str, Vec<WriteMsg>)> = vec![
        ("chunk before started", vec![chunk(b"abc"), finished()]),
        ("finished before started", vec![finished()]),
        ("empty stream", vec![]),
        (
            "two started",
            vec![started(0), chunk(b"abc"), started(0), finished()],
        ),
        ("no finished", vec![started(0), chunk(b"abc")]),
        (
            "longer than announced",
            vec![started(2), chunk(b"abc"), finished()],
        ),
        (
            "shorter than announced",
            vec![started(4), chunk(b"abc"), finished()],
        ),
        (
            "oversize chunk",
            vec![started(0), chunk(&vec![1u8; 17 * MIB]), finished()],
        ),
        (
            "oversize message",
            vec![started(0), chunk(&vec![1u8; 70 * MIB]), finished()],
        ),
    ];
    for (what, msgs) in cases {
        let err = write_raw(&d, msgs).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        // A message with no arm at all.
    }
    let stream = tokio_stream::iter(vec![WritePersistentCacheTaskRequest { response: None }]);
    let err = d
        .raw()
        .write_persistent_cache_task(stream)
        .await
        .expect_err("no arm");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(d.store.list().is_empty());
    // Removal of an aborted write's file trails the error reply: up to 20 s
    // on a busy machine.
    for _ in 0..1000 {
        if d.leftovers() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(d.leftovers(), 0, "temporary files left");
    d.stop().await;
}

#[tokio::test]
async fn a_2_1_12_style_client_works_unchanged() {
    // Such a client sets only the 2.1.12 fields, announces the length, and
    // reads without a range: it must get the whole task, and unknown oneof
    // arms (our started message) are skipped by its decoder.
    let d = Running::start(ServeOptions::default()).await;
    let data = content(9 * MIB + 5, 1);
    let resp = write_raw(
        &d,
        vec![
            started(data.len() as u64),
            chunk(&data[..MIB]),
            chunk(&data[MIB..]),
            finished(),
        ],
    )
    .await
    .unwrap();
    assert_eq!(resp.task_id, id_of(&data));
    assert_eq!(resp.content_length, data.len() as u64);
    assert_eq!(resp.piece_length, 4 * MIB as u64);
    assert_eq!(resp.piece_count, 3);

    let req = ReadPersistentCacheTaskRequest {
        task_id: resp.task_id.clone(),
        offset: None,
        length: None,
    };
    let mut stream = d
        .raw()
        .read_persistent_cache_task(req)
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    let mut finished_seen = false;
    while let Some(msg) = stream.message().await.unwrap() {
        match msg.response {
            Some(ReadMsg::ReadChunkResponse(c)) => got.extend_from_slice(&c.content),
            Some(ReadMsg::ReadPersistentCacheTaskFinishedResponse(_)) => finished_seen = true,
            Some(ReadMsg::ReadPersistentCacheTaskStartedResponse(s)) => {
                assert_eq!(s.content_length, data.len() as u64)
            }
            None => panic!("empty message"),
        }
    }
    assert!(finished_seen);
    assert!(got == data, "whole-task read differs");
    d.stop().await;
}

#[tokio::test]
async fn range_reads_are_exact_across_piece_boundaries() {
    range_reads(Emulation::Current).await;
}

#[tokio::test]
async fn range_reads_are_exact_against_a_server_that_ignores_ranges() {
    // A 2.1.12 daemon sends the whole task without offsets: the client
    // must trim it to the range itself.
    range_reads(Emulation::Api2_1_12).await;
}

async fn range_reads(emulate: Emulation) {
    let d = Running::start(ServeOptions {
        emulate,
        ..Default::default()
    })
    .await;
    let data = content(10 * MIB + 3, 2);
    let client = d.client();
    let opts = ImportOptions {
        piece_length: Some(4 * MIB as u64),
        ..Default::default()
    };
    let summary = client
        .write_task(
            std::io::Cursor::new(data.clone()),
            Some(data.len() as u64),
            &opts,
            std::sync::Arc::new(NoProgress),
        )
        .await
        .unwrap();
    let id = summary.task_id;
    let len = data.len() as u64;
    let p = 4 * MIB as u64;
    for (offset, length) in [
        (0, None),
        (p - 1, Some(2)),
        (p - 1, Some(p + 2)),
        (2 * p - 5, Some(10)),
        (0, Some(1)),
        (len - 1, Some(1)),
        (len - 1, Some(100)),
        (len, Some(0)),
        (len, None),
        (3, Some(2 * p)),
    ] {
        let mut reader = client
            .read_task(&id, ReadRange { offset, length })
            .await
            .unwrap();
        if emulate == Emulation::Current {
            assert_eq!(reader.content_length(), Some(len));
        }
        let mut got = Vec::new();
        let mut next = offset;
        while let Some((at, bytes)) = reader.next_chunk().await.unwrap() {
            assert_eq!(at, next, "chunk offsets are contiguous");
            next += bytes.len() as u64;
            got.extend_from_slice(&bytes);
        }
        let end = length.map_or(len, |l| (offset + l).min(len));
        assert!(
            got == data[offset as usize..end as usize],
            "range {offset}+{length:?}"
        );
    }
    if emulate == Emulation::Current {
        let range = ReadRange {
            offset: len + 1,
            length: None,
        };
        let err = client.read_task(&id, range).await.err().unwrap();
        assert!(err.to_string().contains("past the end"), "{err}");
    }
    d.stop().await;
}

#[tokio::test]
async fn many_concurrent_writers_and_readers() {
    let d = Running::start(ServeOptions::default()).await;
    let client = d.client();
    let mut writers = Vec::new();
    for i in 0..16u8 {
        let client = client.clone();
        // Pairs of writers send the same content at the same time.
        let data = content(3 * MIB + i as usize / 2, i / 2);
        writers.push(tokio::spawn(async move {
            let id = write_bytes(&client, &data).await;
            assert_eq!(id, id_of(&data));
            (id, data)
        }));
    }
    let mut written = Vec::new();
    for w in writers {
        written.push(w.await.unwrap());
    }
    assert_eq!(d.store.list().len(), 8);
    let mut readers = Vec::new();
    for (id, data) in written.into_iter().chain(std::iter::empty()) {
        for _ in 0..2 {
            let client = client.clone();
            let (id, data) = (id.clone(), data.clone());
            readers.push(tokio::spawn(async move {
                let mut reader = client.read_task(&id, ReadRange::default()).await.unwrap();
                let mut got = Vec::new();
                while let Some((_, bytes)) = reader.next_chunk().await.unwrap() {
                    got.extend_from_slice(&bytes);
                }
                assert!(got == data);
            }));
        }
    }
    for r in readers {
        r.await.unwrap();
    }
    d.stop().await;
}

#[tokio::test]
async fn expired_tasks_are_collected() {
    let d = Running::start(ServeOptions {
        gc_interval: Duration::from_millis(100),
        min_ttl: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let short =
        WriteMsg::WritePersistentCacheTaskStartedRequest(WritePersistentCacheTaskStartedRequest {
            content_length: 0,
            persistent_replica_count: 1,
            tag: None,
            application: None,
            ttl: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            piece_length: None,
            content_for_calculating_task_id: None,
        });
    let client = d.client();
    // The TTL runs from the end of the write: a stat less than a second
    // after the write began finds the task. (A busy machine can take that
    // long to write and stat; then it may be gone already.)
    let began = std::time::Instant::now();
    let gone = write_raw(&d, vec![short, chunk(b"short-lived"), finished()])
        .await
        .unwrap()
        .task_id;
    let stat = client.stat(&gone).await;
    if began.elapsed() < Duration::from_secs(1) {
        if let Err(e) = stat {
            panic!("a task is gone within its TTL: {e}");
        }
    }
    let kept = write_raw(&d, vec![started(0), chunk(b"kept"), finished()])
        .await
        .unwrap()
        .task_id;
    // Gone once the TTL is over, by the next GC round (every 100 ms); a
    // busy machine may run the round late, so this waits up to 20 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let err = loop {
        match client.stat(&gone).await {
            Err(e) => break e,
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Ok(_) => panic!("a task with a 1 s TTL is still there after 20 s"),
        }
    };
    assert!(err.to_string().contains("does not exist"), "{err}");
    let ids: Vec<String> = client
        .list_local()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.task_id)
        .collect();
    assert_eq!(ids, vec![kept]);
    d.stop().await;
}

#[tokio::test]
async fn thousands_of_small_reads_on_one_connection_keep_working() {
    // The mount makes one small read per random access; they all share
    // one HTTP/2 connection, which must keep serving them (a benchmark saw
    // h2 refuse streams after 1024 local resets before the client read
    // each stream to its trailers).
    let d = Running::start(ServeOptions::default()).await;
    let client = d.client();
    let data = content(3 * MIB, 4);
    let id = write_bytes(&client, &data).await;
    for i in 0..1500u64 {
        let offset = (i * 7919 * 4096) % (data.len() as u64 - 4096);
        let mut reader = client
            .read_task(
                &id,
                ReadRange {
                    offset,
                    length: Some(4096),
                },
            )
            .await
            .unwrap();
        let (at, bytes) = reader.next_chunk().await.unwrap().unwrap();
        assert_eq!(at, offset);
        assert!(
            bytes[..] == data[offset as usize..offset as usize + 4096],
            "read {i}"
        );
        assert!(reader.next_chunk().await.unwrap().is_none());
    }
    d.stop().await;
}

#[tokio::test]
async fn legacy_daemon_reports_unknown_tasks_as_released_dfdaemon_does() {
    // Released dfdaemon answers INTERNAL "... not found", not NOT_FOUND; the
    // emulation must too, and the client must still call it not found.
    let d = Running::start(ServeOptions {
        emulate: Emulation::Legacy,
        ..Default::default()
    })
    .await;
    let unknown = "b".repeat(64);
    let status = d
        .raw()
        .stat_persistent_cache_task(StatPersistentCacheTaskRequest {
            task_id: unknown.clone(),
            remote_ip: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert!(
        status.message().contains("not found"),
        "{}",
        status.message()
    );
    let err = d.client().stat(&unknown).await.unwrap_err();
    assert_eq!(err.errno(), libc::ENOENT, "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    d.stop().await;
}

/// One short range read with the raw client: its chunks' bytes, or the
/// status that ended it.
async fn raw_short_read(
    d: &Running,
    id: &str,
    offset: u64,
    length: u64,
) -> Result<Vec<u8>, tonic::Status> {
    use tokio_stream::StreamExt;
    let request = ReadPersistentCacheTaskRequest {
        task_id: id.to_string(),
        offset: Some(offset),
        length: Some(length),
    };
    let mut stream = d
        .raw()
        .read_persistent_cache_task(request)
        .await?
        .into_inner();
    let mut got = Vec::new();
    let mut finished = false;
    while let Some(item) = stream.next().await {
        match item?.response {
            Some(ReadMsg::ReadChunkResponse(c)) => {
                assert_eq!(c.offset, Some(offset + got.len() as u64));
                got.extend_from_slice(&c.content);
            }
            Some(ReadMsg::ReadPersistentCacheTaskFinishedResponse(_)) => finished = true,
            _ => {}
        }
    }
    assert!(finished, "a read that ends well says it finished");
    Ok(got)
}

#[tokio::test]
async fn short_reads_are_the_same_from_the_page_cache_and_from_the_disk_and_a_cut_file_is_data_loss(
) {
    // Short ranges (a random read through the mount) are answered from the
    // page cache on the connection's thread, or read on a blocking thread
    // when the page cache lacks them: both must give the same bytes, and
    // content cut short on disk must be DATA_LOSS, never short data.
    let d = Running::start(ServeOptions::default()).await;
    let client = d.client();
    let data = content(3 * MIB, 9);
    let id = write_bytes(&client, &data).await;
    let file = d.store_dir().join("tasks").join(format!("{id}.data"));
    let check = |got: Vec<u8>, offset: usize, len: usize| {
        assert!(got == data[offset..offset + len], "range {offset}+{len}");
    };
    for (offset, len) in [
        (0, 4096),
        (5000, 16384),
        (3 * MIB - 7, 7),
        (MIB - 3, 256 << 10),
    ] {
        // Out of the page cache first, then in it (the first read put it there).
        let f = std::fs::File::open(&file).unwrap();
        // SAFETY: advice only, on a descriptor open for the call.
        unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
                0,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        for _ in 0..2 {
            let got = raw_short_read(&d, &id, offset as u64, len as u64)
                .await
                .unwrap();
            check(got, offset, len);
        }
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(2 * MIB as u64)
        .unwrap();
    let err = raw_short_read(&d, &id, 2 * MIB as u64 - 100, 4096)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err}");
    let got = raw_short_read(&d, &id, 100, 4096).await.unwrap();
    check(got, 100, 4096);
    d.stop().await;
}
