//! The block cache on the fake: big pieces are fetched and cached in 4 MiB
//! blocks within the memory bound, random misses share small spans, and
//! reads across chunk, block and piece boundaries are byte-exact.

use super::*;
use crate::daemon::fake::{Call, Fault};
use crate::read::block_cache::{BLOCK, SMALL_SPAN};

/// A task of `len` bytes with 64 MiB pieces (what a 16 GiB file gets by
/// the default rule).
fn big_piece_task(fake: &FakeDaemon, len: u64, seed: u8) -> (String, Vec<u8>) {
    let data = bytes(len, seed);
    let options = ImportOptions {
        piece_length: Some(64 * MIB),
        ..ImportOptions::default()
    };
    (fake.add_task_with(&data, &options), data)
}

#[tokio::test]
async fn a_sequential_read_of_64_mib_pieces_stays_within_the_cache_size() {
    let fake = FakeDaemon::new(DEADLINE);
    let (id, data) = big_piece_task(&fake, 150 * MIB + 3, 21);
    let fs = mounted(&fake);
    let fh = open_task(&fs, &id).await;
    let bound = config().cache_size;
    let mut at = 0u64;
    while at < data.len() as u64 {
        let got = fs.read(fh, at, 1 << 20).await.unwrap();
        assert_eq!(&got[..], &data[at as usize..at as usize + got.len()]);
        at += got.len() as u64;
        let held = fs.cache().cached_bytes() + fs.cache().inflight_bytes();
        assert!(held <= bound, "{held} bytes held at {at}, bound {bound}");
    }
    let longest = fake.read_ranges().iter().filter_map(|r| r.length).max();
    assert_eq!(longest, Some(BLOCK), "no fetch is longer than a block");
    assert_eq!(
        fake.calls(Call::Read),
        (data.len() as u64).div_ceil(BLOCK),
        "each block fetched once"
    );
}

#[tokio::test]
async fn reads_across_chunk_block_and_piece_boundaries_are_byte_exact() {
    let fake = FakeDaemon::new(DEADLINE);
    let (id, data) = big_piece_task(&fake, 130 * MIB + 17, 22);
    let fs = mounted(&fake);
    let len = data.len() as u64;
    for (offset, size) in [
        (MIB - 1, 2),                   // across two 1 MiB chunks
        (BLOCK - 5, 4096),              // across two blocks
        (64 * MIB - 100, 1 << 20),      // across two pieces
        (128 * MIB - 3 * MIB, 5 << 20), // several blocks, into the last piece
        (len - 10, 100),                // the tail
        (7 * BLOCK + 12345, 1_000_000), // unaligned, inside a block
    ] {
        // A fresh handle each time: a random reader, then the same bytes
        // again as a sequential reader from where it stands.
        let fh = open_task(&fs, &id).await;
        let got = fs.read(fh, offset, size as u32).await.unwrap();
        let end = (offset + size).min(len) as usize;
        assert_eq!(&got[..], &data[offset as usize..end], "at {offset}");
        let again = fs.read(fh, offset, size as u32).await.unwrap();
        assert_eq!(&again[..], &data[offset as usize..end], "again at {offset}");
    }
}

#[tokio::test]
async fn concurrent_random_reads_in_one_span_make_one_daemon_read() {
    let fake = FakeDaemon::new(DEADLINE);
    let (id, data) = big_piece_task(&fake, 70 * MIB, 23);
    // The one read trickles, so every reader arrives while it is in flight.
    fake.inject(Call::Read, Fault::Trickle(Duration::from_millis(30)));
    let fs = Arc::new(mounted(&fake));
    let span_start = 65 * MIB;
    let mut readers = Vec::new();
    for i in 0..16u64 {
        let fs = fs.clone();
        let fh = open_task(&fs, &id).await;
        readers.push(tokio::spawn(async move {
            let offset = span_start + (i * 4096) % SMALL_SPAN;
            (offset, fs.read(fh, offset, 4096).await)
        }));
    }
    for reader in readers {
        let (offset, got) = reader.await.unwrap();
        let got = got.unwrap();
        assert_eq!(&got[..], &data[offset as usize..offset as usize + 4096]);
    }
    assert_eq!(fake.calls(Call::Read), 1, "{:?}", fake.read_ranges());
    let range = fake.read_ranges()[0];
    assert_eq!((range.offset, range.length), (span_start, Some(SMALL_SPAN)));
}

#[tokio::test]
async fn a_random_read_hits_the_span_an_earlier_reader_fetched() {
    let fake = FakeDaemon::new(DEADLINE);
    let (id, data) = big_piece_task(&fake, 70 * MIB, 24);
    let fs = mounted(&fake);
    let span = 9 * MIB + 2 * SMALL_SPAN;
    for offset in [span + 1024, span, span + SMALL_SPAN - 512] {
        // A reader of its own each time: reads this close together on one
        // handle would count as a sequential run.
        let fh = open_task(&fs, &id).await;
        let got = fs.read(fh, offset, 512).await.unwrap();
        assert_eq!(&got[..], &data[offset as usize..offset as usize + 512]);
    }
    assert_eq!(fake.calls(Call::Read), 1, "{:?}", fake.read_ranges());
}

#[tokio::test]
async fn read_ahead_asks_for_runs_of_blocks_and_fetches_each_byte_once() {
    let fake = FakeDaemon::new(DEADLINE);
    let (id, data) = big_piece_task(&fake, 100 * MIB + 5, 25);
    let mut config = config();
    config.cache_size = 64 * MIB;
    config.read_ahead = 32 * MIB;
    let fs = DfcacheFs::new(fake.clone(), config);
    let fh = open_task(&fs, &id).await;
    let mut at = 0u64;
    while at < data.len() as u64 {
        let got = fs.read(fh, at, 1 << 20).await.unwrap();
        assert_eq!(&got[..], &data[at as usize..at as usize + got.len()]);
        at += got.len() as u64;
    }
    let mut ranges: Vec<(u64, u64)> = fake
        .read_ranges()
        .iter()
        .map(|r| (r.offset, r.offset + r.length.unwrap_or(0)))
        .collect();
    assert!(
        ranges.iter().any(|(from, to)| to - from == 4 * BLOCK),
        "no run of four blocks: {ranges:?}"
    );
    ranges.sort();
    let mut next = 0;
    for (from, to) in ranges {
        assert_eq!(from, next, "a gap or an overlap at {from}");
        next = to;
    }
    assert_eq!(next, data.len() as u64);
}
