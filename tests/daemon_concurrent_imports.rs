//! Many imports at once: the daemon stores a bounded number at a time
//! (the rest wait, held back by flow control), every one succeeds
//! byte-exact, identical content is stored once, and nothing is left in
//! `tmp/`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dfcache_daemon::server::ServeOptions;

mod common;

use common::id_of;
use common::inproc::{drain, write_bytes, Running};

const IMPORTS: usize = 64;
/// Fewer distinct contents than imports: the rest are duplicates.
const DISTINCT: usize = 40;
const CAP: usize = 4;

fn content(seed: usize) -> Vec<u8> {
    let len = (1 << 20) + seed * 4099;
    (0..len)
        .map(|i| (i as u8).wrapping_mul(seed as u8 | 1) ^ (i >> 11) as u8 ^ seed as u8)
        .collect()
}

async fn read_all(d: &Running, id: &str) -> Vec<u8> {
    drain(d.read_stream(id).await, Vec::new()).await
}

/// Temporary content files in `tmp/`: one per import being stored.
fn parts_in(tmp: &std::path::Path) -> usize {
    std::fs::read_dir(tmp)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_imports_are_stored_a_few_at_a_time_byte_exact_and_deduplicated() {
    let d = Arc::new(
        Running::start(ServeOptions {
            max_concurrent_imports: CAP,
            ..Default::default()
        })
        .await,
    );
    let tmp = d.store_dir().join("tmp");

    // Watches tmp/ while the imports run: never more than CAP in progress.
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (peak, done, tmp) = (peak.clone(), done.clone(), tmp.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(parts_in(&tmp), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };

    let mut handles = Vec::new();
    for i in 0..IMPORTS {
        let d = d.clone();
        handles.push(tokio::spawn(async move {
            let data = content(i % DISTINCT);
            let id = write_bytes(&d.client(), &data).await;
            (i % DISTINCT, id)
        }));
    }
    let mut ids = HashMap::new();
    for h in handles {
        let (seed, id) = h.await.unwrap();
        assert_eq!(id, id_of(&content(seed)), "content {seed}");
        ids.insert(seed, id);
    }
    done.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        peak <= CAP,
        "{peak} imports were stored at once (cap {CAP})"
    );

    assert_eq!(ids.len(), DISTINCT);
    for (seed, id) in &ids {
        assert!(
            read_all(&d, id).await == content(*seed),
            "task of content {seed} is not byte-exact"
        );
    }
    // One content file per task id.
    let data_files: Vec<String> = std::fs::read_dir(d.store_dir().join("tasks"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".data"))
        .collect();
    assert_eq!(data_files.len(), DISTINCT, "{data_files:?}");
    let want: HashSet<String> = ids.values().map(|id| format!("{id}.data")).collect();
    assert_eq!(data_files.into_iter().collect::<HashSet<_>>(), want);
    // The duplicates' temporary files go after their replies: up to 20 s
    // on a busy machine.
    for _ in 0..1000 {
        if d.leftovers() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(d.leftovers(), 0, "files left in tmp/");
    if let Ok(d) = Arc::try_unwrap(d) {
        d.stop().await;
    }
}

#[test]
fn serve_refuses_a_cap_of_zero_imports() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["serve", "--max-concurrent-imports", "0", "--socket"])
        .arg(dir.path().join("d.sock"))
        .arg("--dir")
        .arg(dir.path().join("store"))
        .output()
        .unwrap();
    let err = common::failure(&out);
    assert!(err.contains("--max-concurrent-imports"), "{err}");
}
