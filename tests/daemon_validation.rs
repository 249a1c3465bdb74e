//! The daemon checks every client field before it writes anything, and no
//! request, however malformed, makes a handler panic. The daemon runs
//! in-process on a real Unix socket.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tokio_stream::StreamExt;
use tonic::Code;

use dfcache_daemon::server::ServeOptions;
use dfcache_wire::pb::dfdaemon::write_persistent_cache_task_request::Response as WriteMsg;
use dfcache_wire::pb::dfdaemon::*;

mod common;

use common::inproc::{chunk, finished, write_bytes, Running};

fn started(len: u64) -> WritePersistentCacheTaskStartedRequest {
    WritePersistentCacheTaskStartedRequest {
        content_length: len,
        persistent_replica_count: 1,
        ..Default::default()
    }
}

async fn write_raw(
    d: &Running,
    msgs: Vec<Option<WriteMsg>>,
) -> Result<WritePersistentCacheTaskResponse, tonic::Status> {
    let stream = tokio_stream::iter(
        msgs.into_iter()
            .map(|m| WritePersistentCacheTaskRequest { response: m }),
    );
    d.raw()
        .write_persistent_cache_task(stream)
        .await
        .map(|r| r.into_inner())
}

async fn write_started(
    d: &Running,
    s: WritePersistentCacheTaskStartedRequest,
    body: &[u8],
) -> Result<WritePersistentCacheTaskResponse, tonic::Status> {
    write_raw(
        d,
        vec![
            Some(WriteMsg::WritePersistentCacheTaskStartedRequest(s)),
            Some(chunk(body)),
            Some(finished()),
        ],
    )
    .await
}

fn duration(seconds: i64, nanos: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos })
}

/// Nothing stored and nothing left in `tmp/` (removal of an aborted
/// write's file can trail the error reply: up to 20 s on a busy machine).
async fn assert_nothing_stored(d: &Running, what: &str) {
    assert!(d.store.list().is_empty(), "{what}: a task was stored");
    for _ in 0..2000 {
        if d.leftovers() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: temporary files left");
}

#[tokio::test]
async fn ttls_outside_five_minutes_to_seven_days_are_refused_and_listing_keeps_working() {
    let d = Running::start(ServeOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    std::fs::write(&source, b"uploaded").unwrap();
    for (seconds, nanos) in [
        (i64::MAX, 0),
        (i64::MIN, 0),
        (-1, 0),
        (60, 0),
        (7 * 86400 + 1, 0),
        (3600, -1),
        (3600, i32::MAX),
    ] {
        let what = format!("ttl {seconds}s {nanos}ns");
        let mut s = started(4);
        s.ttl = duration(seconds, nanos);
        let err = write_started(&d, s, b"data").await.expect_err(&what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains("5m to 7d"), "{what}: {err:?}");

        let err = d
            .raw()
            .upload_persistent_cache_task(UploadPersistentCacheTaskRequest {
                path: source.to_string_lossy().into_owned(),
                ttl: duration(seconds, nanos),
                ..Default::default()
            })
            .await
            .expect_err(&what);
        assert_eq!(err.code(), Code::InvalidArgument, "upload {what}: {err:?}");
        assert_nothing_stored(&d, &what).await;
    }
    // What listing and GC panicked on before: they still work.
    assert!(d.client().list_local().await.unwrap().is_empty());
    assert_eq!(d.store.collect_expired(), 0);
    // The edges of the range are accepted.
    for seconds in [5 * 60, 7 * 86400] {
        let mut s = started(4);
        s.ttl = duration(seconds, 0);
        write_started(&d, s, b"edge").await.unwrap();
    }
    d.stop().await;
}

#[tokio::test]
async fn content_of_another_length_than_announced_or_beyond_free_space_stores_nothing() {
    let d = Running::start(ServeOptions::default()).await;
    for (announced, sent, code) in [
        (10, 5, Code::InvalidArgument),
        (3, 5, Code::InvalidArgument),
        (u64::MAX, 5, Code::ResourceExhausted),
        (u64::MAX / 2, 5, Code::ResourceExhausted),
        (1 << 60, 0, Code::ResourceExhausted),
    ] {
        let what = format!("announced {announced}, sent {sent}");
        let err = write_started(&d, started(announced), &vec![1u8; sent])
            .await
            .expect_err(&what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert_nothing_stored(&d, &what).await;
    }
    d.stop().await;
}

#[tokio::test]
async fn oversized_names_and_piece_lengths_out_of_bounds_are_refused() {
    let d = Running::start(ServeOptions::default()).await;
    let long = "t".repeat(1025);
    let cases: Vec<(&str, WritePersistentCacheTaskStartedRequest)> = vec![
        ("long tag", {
            let mut s = started(4);
            s.tag = Some(long.clone());
            s
        }),
        ("long application", {
            let mut s = started(4);
            s.application = Some(long.clone());
            s
        }),
        ("long content for the id", {
            let mut s = started(4);
            s.content_for_calculating_task_id = Some("c".repeat(4097));
            s
        }),
        ("piece length 1", {
            let mut s = started(4);
            s.piece_length = Some(1);
            s
        }),
        ("piece length below 4 MiB", {
            let mut s = started(4);
            s.piece_length = Some((4 << 20) - 1);
            s
        }),
        ("piece length above 1 GiB", {
            let mut s = started(4);
            s.piece_length = Some((1 << 30) + 1);
            s
        }),
        ("piece length u64::MAX", {
            let mut s = started(4);
            s.piece_length = Some(u64::MAX);
            s
        }),
    ];
    for (what, s) in cases {
        let err = write_started(&d, s, b"data").await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert_nothing_stored(&d, what).await;
    }
    // Piece length 0 is "the default", as unset.
    let mut s = started(4);
    s.piece_length = Some(0);
    let resp = write_started(&d, s, b"data").await.unwrap();
    assert_eq!(resp.piece_length, 4 << 20);
    d.stop().await;
}

#[tokio::test]
async fn task_ids_that_are_not_64_lowercase_hex_digits_are_invalid_argument_everywhere() {
    let d = Running::start(ServeOptions::default()).await;
    let good = write_bytes(&d.client(), b"a task").await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out").to_string_lossy().into_owned();
    for id in [
        String::new(),
        "abc".into(),
        good.to_uppercase(),
        format!("{good}0"),
        good[..63].to_string(),
        "../../../../etc/passwd".into(),
        format!("../{}", &good[3..]),
        format!("{}\0", &good[..63]),
        "g".repeat(64),
        "é".repeat(32),
    ] {
        let mut raw = d.raw();
        let codes = [
            raw.stat_persistent_cache_task(StatPersistentCacheTaskRequest {
                task_id: id.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .unwrap_err()
            .code(),
            raw.stat_local_persistent_cache_task(StatLocalPersistentCacheTaskRequest {
                task_id: id.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .unwrap_err()
            .code(),
            raw.read_persistent_cache_task(ReadPersistentCacheTaskRequest {
                task_id: id.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .unwrap_err()
            .code(),
            raw.download_persistent_cache_task(DownloadPersistentCacheTaskRequest {
                task_id: id.clone(),
                output_path: Some(out.clone()),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .unwrap_err()
            .code(),
            raw.delete_persistent_cache_task(DeletePersistentCacheTaskRequest {
                task_id: id.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .unwrap_err()
            .code(),
        ];
        assert_eq!(codes, [Code::InvalidArgument; 5], "id {id:?}");
    }
    assert!(!std::path::Path::new(&out).exists());
    assert_eq!(d.store.list().len(), 1);
    d.stop().await;
}

#[tokio::test]
async fn relative_or_nul_output_and_upload_paths_are_refused() {
    let d = Running::start(ServeOptions::default()).await;
    let good = write_bytes(&d.client(), b"exported").await;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    std::fs::write(&source, b"uploaded").unwrap();
    let with_nul = format!("{}\0x", dir.path().join("out").display());
    for path in ["out", "./out", "", "\0", with_nul.as_str()] {
        if !path.is_empty() {
            let err = d
                .raw()
                .download_persistent_cache_task(DownloadPersistentCacheTaskRequest {
                    task_id: good.clone(),
                    output_path: Some(path.to_string()),
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .expect_err(path);
            assert_eq!(err.code(), Code::InvalidArgument, "{path:?}: {err:?}");
        }
        let upload = if path.is_empty() {
            String::new()
        } else {
            format!("{}\0", source.display())
        };
        for p in [path.to_string(), upload] {
            let err = d
                .raw()
                .upload_persistent_cache_task(UploadPersistentCacheTaskRequest {
                    path: p.clone(),
                    ..Default::default()
                })
                .await
                .expect_err(&p);
            assert_eq!(err.code(), Code::InvalidArgument, "upload {p:?}: {err:?}");
        }
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    assert_eq!(d.store.list().len(), 1);
    d.stop().await;
}

// ---- property tests: no client input panics a handler ----

/// One request with arbitrary fields.
#[derive(Debug, Clone)]
enum Call {
    Write(Vec<Option<WriteMsg>>),
    Read {
        id: String,
        offset: Option<u64>,
        length: Option<u64>,
    },
    Stat(String),
    StatLocal(String),
    Delete(String),
    Download {
        id: String,
        output: Option<String>,
        need_piece_content: bool,
        digest: Option<String>,
        overwrite: bool,
    },
    Upload {
        path: String,
        piece_length: Option<u64>,
        ttl: Option<prost_types::Duration>,
        tag: Option<String>,
    },
}

fn any_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        0..64u64,
        Just(u64::MAX),
        Just(4u64 << 20),
        Just(1u64 << 30),
        (1u64 << 30)..(1u64 << 31),
    ]
}

fn any_duration() -> impl Strategy<Value = Option<prost_types::Duration>> {
    proptest::option::of(
        (
            prop_oneof![
                any::<i64>(),
                Just(i64::MAX),
                Just(i64::MIN),
                -10..10_000_000i64
            ],
            prop_oneof![any::<i32>(), 0..1_000_000_000i32],
        )
            .prop_map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
    )
}

fn any_text() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(prop_oneof![
        ".{0,40}",
        Just(String::new()),
        Just("x".repeat(1025)),
    ])
}

/// Ids: the known task's, any well-formed one, and garbage.
fn any_id(good: String) -> impl Strategy<Value = String> {
    prop_oneof![
        Just(good),
        "[0-9a-f]{64}",
        "[0-9a-fA-F./\\x00]{0,70}",
        ".{0,80}",
    ]
}

fn write_msg() -> impl Strategy<Value = Option<WriteMsg>> {
    let started = (
        any_u64(),
        any::<u64>(),
        any_text(),
        any_text(),
        any_duration(),
        proptest::option::of(any_u64()),
        any_text(),
    )
        .prop_map(
            |(content_length, replicas, tag, application, ttl, piece, id)| {
                WriteMsg::WritePersistentCacheTaskStartedRequest(
                    WritePersistentCacheTaskStartedRequest {
                        content_length,
                        persistent_replica_count: replicas,
                        tag,
                        application,
                        ttl,
                        piece_length: piece,
                        content_for_calculating_task_id: id,
                    },
                )
            },
        );
    prop_oneof![
        3 => started,
        4 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| chunk(&b)),
        2 => Just(finished()),
    ]
    .prop_map(Some)
    .boxed()
    .prop_union(Just(None).boxed())
}

/// Output paths: relative, with NUL, or inside `dir` (never elsewhere:
/// the daemon runs as root here and would write where it is told).
fn any_output(dir: String) -> impl Strategy<Value = Option<String>> {
    proptest::option::of(prop_oneof![
        "[a-z./]{0,12}".prop_filter("relative", |p| !p.starts_with('/')),
        "[a-z]{1,8}".prop_map(move |n| format!("{dir}/{n}")),
        Just("/nonexistent-dfcache-dir/out\0".to_string()),
    ])
}

fn any_call(good: String, dir: String, source: String) -> impl Strategy<Value = Call> {
    let upload_path = prop_oneof![
        Just(source.clone()),
        Just(format!("{source}\0")),
        Just(dir.clone()),
        "[a-z./]{0,12}",
        Just(String::new()),
    ];
    prop_oneof![
        proptest::collection::vec(write_msg(), 0..6).prop_map(Call::Write),
        (
            any_id(good.clone()),
            proptest::option::of(any_u64()),
            proptest::option::of(any_u64())
        )
            .prop_map(|(id, offset, length)| Call::Read { id, offset, length }),
        any_id(good.clone()).prop_map(Call::Stat),
        any_id(good.clone()).prop_map(Call::StatLocal),
        // Never the known task: it must survive the run.
        prop_oneof!["[0-9a-f]{64}", ".{0,80}"]
            .prop_filter("not the known task", {
                let good = good.clone();
                move |id| *id != good
            })
            .prop_map(Call::Delete),
        (
            any_id(good),
            any_output(dir),
            any::<bool>(),
            proptest::option::of(prop_oneof![
                "(sha256|sha512|crc32|md5|):[0-9a-f]{0,70}",
                ".{0,20}"
            ]),
            any::<bool>()
        )
            .prop_map(|(id, output, need_piece_content, digest, overwrite)| {
                Call::Download {
                    id,
                    output,
                    need_piece_content,
                    digest,
                    overwrite,
                }
            }),
        (
            upload_path,
            proptest::option::of(any_u64()),
            any_duration(),
            any_text()
        )
            .prop_map(|(path, piece_length, ttl, tag)| Call::Upload {
                path,
                piece_length,
                ttl,
                tag,
            }),
    ]
}

/// Sends one call and drains its response stream. A status is any answer;
/// what must never happen is the connection breaking under a call, which
/// is what a panicking handler looks like from here.
async fn send(d: &Running, call: Call) -> Result<(), String> {
    let mut raw = d.raw();
    let transport = |s: tonic::Status| {
        if s.code() == Code::Unknown || s.message().contains("transport") {
            Err(format!("transport error: {s:?}"))
        } else {
            Ok(())
        }
    };
    match call {
        Call::Write(msgs) => match write_raw(d, msgs).await {
            Ok(_) => Ok(()),
            Err(s) => transport(s),
        },
        Call::Read { id, offset, length } => {
            match raw
                .read_persistent_cache_task(ReadPersistentCacheTaskRequest {
                    task_id: id,
                    offset,
                    length,
                })
                .await
            {
                Ok(resp) => {
                    let mut stream = resp.into_inner();
                    while let Some(item) = stream.next().await {
                        if let Err(s) = item {
                            return transport(s);
                        }
                    }
                    Ok(())
                }
                Err(s) => transport(s),
            }
        }
        Call::Stat(id) => match raw
            .stat_persistent_cache_task(StatPersistentCacheTaskRequest {
                task_id: id,
                ..Default::default()
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(s) => transport(s),
        },
        Call::StatLocal(id) => match raw
            .stat_local_persistent_cache_task(StatLocalPersistentCacheTaskRequest {
                task_id: id,
                ..Default::default()
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(s) => transport(s),
        },
        Call::Delete(id) => match raw
            .delete_persistent_cache_task(DeletePersistentCacheTaskRequest {
                task_id: id,
                ..Default::default()
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(s) => transport(s),
        },
        Call::Download {
            id,
            output,
            need_piece_content,
            digest,
            overwrite,
        } => {
            match raw
                .download_persistent_cache_task(DownloadPersistentCacheTaskRequest {
                    task_id: id,
                    output_path: output,
                    need_piece_content,
                    digest,
                    overwrite,
                    ..Default::default()
                })
                .await
            {
                Ok(resp) => {
                    let mut stream = resp.into_inner();
                    while let Some(item) = stream.next().await {
                        if let Err(s) = item {
                            return transport(s);
                        }
                    }
                    Ok(())
                }
                Err(s) => transport(s),
            }
        }
        Call::Upload {
            path,
            piece_length,
            ttl,
            tag,
        } => match raw
            .upload_persistent_cache_task(UploadPersistentCacheTaskRequest {
                path,
                piece_length,
                ttl,
                tag,
                ..Default::default()
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(s) => transport(s),
        },
    }
}

#[test]
fn no_request_with_arbitrary_fields_panics_a_handler_and_the_daemon_keeps_serving() {
    // Every panic in any thread of this test process is counted: handlers
    // run on the runtime's workers and on blocking threads, where a panic
    // would otherwise only show as a broken stream.
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Channels are made outside `block_on` too (`d.raw()`).
    let _runtime = rt.enter();
    let d = Arc::new(rt.block_on(Running::start(ServeOptions::default())));
    let known = b"known good content".to_vec();
    let good = rt.block_on(write_bytes(&d.client(), &known));
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    std::fs::write(&source, b"uploadable").unwrap();
    let outputs = dir.path().join("outputs");
    std::fs::create_dir(&outputs).unwrap();

    let mut runner = TestRunner::new(Config {
        cases: 1500,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = any_call(
        good.clone(),
        outputs.to_string_lossy().into_owned(),
        source.to_string_lossy().into_owned(),
    );
    let result = runner.run(&strategy, |call| {
        rt.block_on(send(&d, call)).map_err(TestCaseError::fail)?;
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a handler panicked");
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }

    // The daemon still lists and serves the known task, byte-exact.
    rt.block_on(async {
        let listed: Vec<String> = d
            .client()
            .list_local()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.task_id)
            .collect();
        assert!(listed.contains(&good), "{listed:?}");
        let mut stream = d
            .raw()
            .read_persistent_cache_task(ReadPersistentCacheTaskRequest {
                task_id: good.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut bytes = Vec::new();
        use dfcache_wire::pb::dfdaemon::read_persistent_cache_task_response::Response as R;
        while let Some(item) = stream.next().await {
            if let Some(R::ReadChunkResponse(c)) = item.unwrap().response {
                bytes.extend_from_slice(&c.content);
            }
        }
        assert_eq!(bytes, known);
        d.store.collect_expired();
    });
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a handler panicked");
    if let Ok(d) = Arc::try_unwrap(d) {
        rt.block_on(d.stop());
    }
    drop(_runtime);
}
