//! Reads through the piece cache and the whole-task downloads, on the fake.

use super::*;
use crate::daemon::fake::{Call, Fault};
use crate::error::Errno;
use crate::inodes::IMPORT_INO;

/// Reads `[offset, offset + len)` in 128 KiB requests, as the kernel does.
async fn read_range(fs: &DfcacheFs, fh: u64, offset: u64, len: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while (out.len() as u64) < len {
        let at = offset + out.len() as u64;
        let want = (len - out.len() as u64).min(128 << 10) as u32;
        let got = fs.read(fh, at, want).await.unwrap();
        if got.is_empty() {
            break;
        }
        out.extend_from_slice(&got);
    }
    out
}

#[tokio::test]
async fn sequential_random_and_tail_reads_are_byte_exact() {
    let fake = FakeDaemon::new(DEADLINE);
    let data = bytes(21 * MIB + 77, 7);
    let id = fake.add_task(&data);
    let fs = mounted(&fake);
    let fh = open_task(&fs, &id).await;
    assert_eq!(read_range(&fs, fh, 0, data.len() as u64).await, data);
    for (offset, len) in [(5 * MIB - 3, 10), (17 * MIB, 4096), (21 * MIB, 200)] {
        let got = read_range(&fs, fh, offset, len).await;
        let end = (offset + len).min(data.len() as u64);
        assert_eq!(got, &data[offset as usize..end as usize], "at {offset}");
    }
    assert!(fs.read(fh, data.len() as u64, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn concurrent_misses_on_one_piece_make_one_daemon_read() {
    let fake = FakeDaemon::new(DEADLINE);
    let data = bytes(8 * MIB, 8);
    let id = fake.add_task(&data);
    let fs = Arc::new(mounted(&fake));
    let fh = open_task(&fs, &id).await;
    // Sequential readers of the first piece, all at once: a first read at
    // 0 then the rest, so the read-ahead window is the same for each.
    let mut readers = Vec::new();
    for i in 0..8u64 {
        let fs = fs.clone();
        readers.push(tokio::spawn(async move {
            fs.read(fh, i * 64 * 1024, 64 * 1024).await
        }));
    }
    for (i, r) in readers.into_iter().enumerate() {
        let got = r.await.unwrap().unwrap();
        let at = i * 64 * 1024;
        assert_eq!(&got[..], &data[at..at + 64 * 1024]);
    }
    // Piece 0 once, whatever the read-ahead fetched after it.
    assert!(
        fake.calls(Call::Read) <= 2,
        "{} daemon reads",
        fake.calls(Call::Read)
    );
}

#[tokio::test]
async fn the_cache_holds_what_it_was_given_and_no_more() {
    let fake = FakeDaemon::new(DEADLINE);
    let data = bytes(40 * MIB, 9);
    let id = fake.add_task(&data);
    let fs = mounted(&fake);
    let fh = open_task(&fs, &id).await;
    assert_eq!(read_range(&fs, fh, 0, data.len() as u64).await, data);
    // --cache-size 16 MiB: read-ahead takes half, the LRU the rest.
    assert!(
        fs.cache().cached_bytes() <= 8 * MIB,
        "{}",
        fs.cache().cached_bytes()
    );
}

#[tokio::test]
async fn an_import_reads_back_as_its_task_once_finished() {
    let fake = FakeDaemon::new(DEADLINE);
    let fs = mounted(&fake);
    let (_, opened) = fs
        .create(IMPORT_INO, &name("f"), 0o644, false, 0, 0)
        .await
        .unwrap();
    let data = bytes(3 * MIB, 10);
    fs.write(opened.fh, 0, data.clone()).await.unwrap();
    assert_eq!(fs.read(opened.fh, 0, 10).await, Err(Errno::EINVAL));
    fs.flush(opened.fh).await.unwrap();
    fs.release(opened.fh).await.unwrap();
    let ino = fs.lookup(IMPORT_INO, &name("f")).await.unwrap().ino;
    let fh = fs.open(ino, false, false).await.unwrap().fh;
    assert_eq!(read_range(&fs, fh, 0, data.len() as u64).await, data);
}

#[tokio::test]
async fn a_released_daemon_serves_reads_from_whole_task_downloads_in_any_piece_order() {
    let fake = FakeDaemon::legacy(DEADLINE);
    let data = bytes(13 * MIB + 1, 11);
    let id = fake.add_task(&data);
    fake.inject(Call::Download, Fault::Reorder);
    let fs = mounted(&fake);
    let fh = open_task(&fs, &id).await;
    assert_eq!(
        read_range(&fs, fh, 9 * MIB, 4 * MIB + 1).await,
        &data[9 << 20..]
    );
    assert_eq!(read_range(&fs, fh, 0, data.len() as u64).await, data);
    assert_eq!(
        fake.calls(Call::Download),
        1,
        "one download serves every read"
    );
    assert_eq!(fake.calls(Call::Read), 0);
}
