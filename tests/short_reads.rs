//! The short-read channel on the embedded daemon's socket: the bytes and
//! errors a gRPC read gives, a framing broken by a client closes only its
//! own connection, and a daemon without the channel is read through gRPC.
//! The daemon runs in-process on a real Unix socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use dfcache_client::{Client, ClientError, Deadlines, ReadRange};
use dfcache_daemon::server::{Emulation, ServeOptions};
use dfcache_mount::daemon::DaemonClient;
use dfcache_wire::short_reads::HELLO;

mod common;

use common::inproc::{write_bytes, Running};
use common::Rng;

fn mount_client(d: &Running) -> Client {
    Client::new(&d.socket)
        .with_deadlines(Deadlines {
            call: Duration::from_secs(10),
            progress: Duration::from_secs(10),
        })
        .with_short_reads()
}

fn range(offset: u64, length: u64) -> ReadRange {
    ReadRange {
        offset,
        length: Some(length),
    }
}

/// Everything a read of `task_id` gives through the fs trait.
async fn read_all(client: &Client, task_id: &str, r: ReadRange) -> Vec<u8> {
    let mut stream = DaemonClient::read(client, task_id, r).await.unwrap();
    let mut got = Vec::new();
    while let Some(chunk) = stream.next_chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    got
}

#[tokio::test]
async fn short_reads_give_the_bytes_and_the_errors_a_grpc_read_gives() {
    let d = Running::start(ServeOptions::default()).await;
    let data = Rng::new(7).bytes(3 << 20);
    let id = write_bytes(&d.client(), &data).await;
    let client = mount_client(&d);

    let mut rng = Rng::new(8);
    for _ in 0..200 {
        let offset = rng.below(data.len() as u64);
        let length = 1 + rng.below(256 << 10);
        let end = (offset + length).min(data.len() as u64) as usize;
        let got = client.short_read(&id, range(offset, length)).await.unwrap();
        assert_eq!(
            got.as_deref(),
            Some(&data[offset as usize..end]),
            "{offset}+{length}"
        );
    }
    assert_eq!(client.short_reads_offered(), Some(true));
    let tail = read_all(&client, &id, range(data.len() as u64 - 10, 4096)).await;
    assert_eq!(tail, &data[data.len() - 10..], "clamped to the task's end");

    let unknown = "0".repeat(64);
    assert!(matches!(
        client.short_read(&unknown, range(0, 4096)).await,
        Err(ClientError::NotFound(id)) if id == unknown
    ));
    assert!(matches!(
        client
            .short_read(&id, range(data.len() as u64 + 1, 4096))
            .await,
        Err(ClientError::InvalidArgument { .. })
    ));
    // Longer than the channel takes, or to the end: gRPC's.
    assert_eq!(
        client.short_read(&id, range(0, 1 << 20)).await.unwrap(),
        None
    );
    assert_eq!(
        client
            .short_read(
                &id,
                ReadRange {
                    offset: 0,
                    length: None
                }
            )
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        read_all(&client, &id, range(5, 1 << 20)).await,
        &data[5..(1 << 20) + 5]
    );
    d.stop().await;
}

/// Sends `bytes` on a new connection and returns all the daemon answers
/// before it closes the connection (bounded: the test fails on a hang).
fn answer_to(socket: &std::path::Path, bytes: &[u8]) -> Vec<u8> {
    let mut conn = UnixStream::connect(socket).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return answer,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            // Closed with our unread bytes still in its buffer.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return answer,
            Err(e) => panic!("the daemon should close a connection whose framing is broken: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_framing_closes_only_its_own_connection() {
    let d = Running::start(ServeOptions::default()).await;
    let data = Rng::new(9).bytes(100_000);
    let id = write_bytes(&d.client(), &data).await;
    let socket = d.socket.clone();

    let broken: Vec<Vec<u8>> = vec![
        [&HELLO[..], &[0u8]].concat(),                 // an empty task id
        [&HELLO[..], &[200u8], &[b'a'; 200]].concat(), // a task id too long
        [
            &HELLO[..],
            &[2u8],
            b"ab",
            &[0u8; 8],
            &u32::MAX.to_le_bytes(),
        ]
        .concat(), // too long a range
        [&HELLO[..], &[2u8], &[0xff, 0xfe], &[0u8; 8], &[1, 0, 0, 0]].concat(), // not UTF-8
        b"\xDFnot the hello".to_vec(),
    ];
    let answers = tokio::task::spawn_blocking(move || {
        broken
            .iter()
            .map(|bytes| answer_to(&socket, bytes))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for (i, answer) in answers.iter().enumerate() {
        let expected: &[u8] = if i < 4 { &HELLO } else { b"" };
        assert_eq!(
            answer, expected,
            "case {i}: closed after the hello, no reply"
        );
    }

    // The daemon still serves both protocols.
    let client = mount_client(&d);
    let got = client.short_read(&id, range(10, 20)).await.unwrap();
    assert_eq!(got.as_deref(), Some(&data[10..30]));
    assert_eq!(d.client().stat(&id).await.unwrap().content_length, 100_000);
    d.stop().await;
}

#[tokio::test]
async fn a_daemon_without_the_channel_is_read_through_grpc() {
    let d = Running::start(ServeOptions {
        emulate: Emulation::Api2_1_12,
        ..Default::default()
    })
    .await;
    let data = Rng::new(10).bytes(200_000);
    let id = write_bytes(&d.client(), &data).await;
    let client = mount_client(&d);

    assert_eq!(client.short_read(&id, range(0, 4096)).await.unwrap(), None);
    assert_eq!(client.short_reads_offered(), Some(false));
    assert_eq!(
        read_all(&client, &id, range(1000, 4096)).await,
        &data[1000..5096]
    );
    d.stop().await;
}
