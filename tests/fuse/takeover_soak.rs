//! 100 cycles of the serving process replaced under 8 concurrent readers
//! (and an importer), every other one a crash (`kill -9`, then `dfcache
//! mount` again) and a graceful `--takeover`: no wrong byte, no failed read,
//! no hang, and nothing leaked: one holder, one mount process, a steady
//! number of descriptors, no spool file. Long (minutes), so ignored by default:
//!
//!     cargo test --test fuse takeover_soak -- --ignored
//!
//! (docs/TESTING.md). CYCLES overrides the number of cycles.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::harness::*;

const READERS: usize = 8;

#[derive(Default)]
struct Tally {
    reads: AtomicU64,
    failed: AtomicU64,
    wrong: AtomicU64,
    imported: AtomicU64,
}

fn reader(
    mnt: PathBuf,
    tasks: Arc<Vec<(String, Vec<u8>)>>,
    seed: u64,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let mut rng = Rng::new(seed);
    let mut files: Vec<std::fs::File> = tasks
        .iter()
        .map(|(id, _)| std::fs::File::open(mnt.join("tasks").join(id)).expect("open a task"))
        .collect();
    while !stop.load(Ordering::Relaxed) {
        let which = rng.below(tasks.len() as u64) as usize;
        let data = &tasks[which].1;
        let off = rng.below(data.len() as u64);
        let len = (1 + rng.below(256 << 10)).min(data.len() as u64 - off) as usize;
        let mut buf = vec![0u8; len];
        match files[which].read_exact_at(&mut buf, off) {
            Ok(()) if buf[..] == data[off as usize..off as usize + len] => {}
            Ok(()) => {
                eprintln!("wrong bytes: task {which} at {off}+{len}");
                tally.wrong.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                eprintln!("read failed: task {which} at {off}: {e}");
                tally.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Now and then a fresh descriptor (a new open), a listing.
        if rng.below(50) == 0 {
            match std::fs::File::open(mnt.join("tasks").join(&tasks[which].0))
                .and_then(|f| std::fs::read_dir(mnt.join("tasks")).map(|_| f))
            {
                Ok(f) => files[which] = f,
                Err(e) => {
                    eprintln!("open or listing failed: {e}");
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        tally.reads.fetch_add(1, Ordering::Relaxed);
    }
}

/// Imports small files one after another: one caught by a crash fails
/// (EIO); every one that succeeds has the right id.
/// The bytes are written by `cp`, not by this process: a process holding a
/// file of the mount open for writing blocks in the exec of every child it
/// starts meanwhile (the exec closes the inherited descriptor, and a close
/// of a writable file waits for the mount's FLUSH), and this process starts
/// the next `dfcache mount`.
fn importer(mnt: PathBuf, scratch: PathBuf, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut rng = Rng::new(7);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let len = 1 + rng.below(3 << 20) as usize;
        let data = rng.bytes(len);
        let src = scratch.join(format!("f{n}"));
        std::fs::write(&src, &data).expect("write the importer's source");
        let path = mnt.join("import").join(format!("f{n}"));
        n += 1;
        let copied = std::process::Command::new("cp")
            .arg(&src)
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let _ = std::fs::remove_file(&src);
        if copied {
            let id = task_id_xattr(&path);
            if id != id_of(&data) {
                eprintln!("import {n} became {id}");
                tally.wrong.fetch_add(1, Ordering::Relaxed);
            }
            tally.imported.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn fd_targets(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .map(|e| format!("{:?}", std::fs::read_link(e.path())))
                .collect()
        })
        .unwrap_or_default()
}

fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn mount_processes(mnt: &Path) -> usize {
    let want = mnt.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|p| {
            p.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter(|p| {
            std::fs::read(p.path().join("cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.get(1) == Some(&&b"mount"[..]) && args.contains(&want)
            })
        })
        .count()
}

fn soak(passthrough: bool) {
    let cycles: usize = std::env::var("CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(100);
    let root = tempdir();
    let daemon = (!passthrough).then(|| Daemon::start(root.path()));
    let spool = root.path().join("spool");
    let mut m = match &daemon {
        Some(d) => Mounted::on(d, root.path(), &["--spool", spool.to_str().unwrap()]),
        None => Mounted::embedded(root.path(), &[]),
    };
    let mut tasks = Vec::new();
    for (i, len) in [(0u64, 48 * MIB + 13), (1, 5 * MIB + 1)] {
        let src = root.path().join(format!("src{i}"));
        write_file(&src, len, 100 + i);
        sh_ok(&format!(
            "cp {} {}",
            q(&src),
            q(&m.import(&format!("src{i}")))
        ));
        tasks.push((
            task_id_xattr(&m.import(&format!("src{i}"))),
            std::fs::read(&src).unwrap(),
        ));
    }
    let tasks = Arc::new(tasks);
    let stop = Arc::new(AtomicBool::new(false));
    // The readers stop also when the test fails (they would spin on a
    // mount that is gone).
    let _stop_on_panic = StopOnDrop(stop.clone());
    let tally = Arc::new(Tally::default());
    let me = std::process::id();
    let fds_before = fds_of(me);
    let mut threads: Vec<_> = (0..READERS)
        .map(|i| {
            let (mnt, tasks, stop, tally) =
                (m.mnt.clone(), tasks.clone(), stop.clone(), tally.clone());
            std::thread::spawn(move || reader(mnt, tasks, i as u64, stop, tally))
        })
        .collect();
    {
        let (mnt, stop, tally) = (m.mnt.clone(), stop.clone(), tally.clone());
        let scratch = root.path().join("importer");
        std::fs::create_dir_all(&scratch).unwrap();
        threads.push(std::thread::spawn(move || {
            importer(mnt, scratch, stop, tally)
        }));
    }

    let mut baseline = None;
    let started = Instant::now();
    for cycle in 0..cycles {
        // Readers move: nothing hangs.
        let before = tally.reads.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(60);
        while tally.reads.load(Ordering::Relaxed) < before + 200 {
            assert!(
                Instant::now() < deadline,
                "cycle {cycle}: the readers are stuck"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // A crash, or every other time a graceful takeover.
        let graceful = cycle % 2 == 1;
        let next = if graceful {
            m.restart(&["--takeover"], None)
        } else {
            m.crash();
            m.restart(&[], None)
        };
        if graceful {
            let status = m.wait_exit(60);
            assert!(status.success(), "cycle {cycle}: the old process {status}");
        }
        drop(std::mem::replace(&mut m, next));
        let holders = holder_pids(&m.holder_socket);
        assert_eq!(holders.len(), 1, "cycle {cycle}: holders {holders:?}");
        assert_eq!(mount_processes(&m.mnt), 1, "cycle {cycle}");
        // The holder's descriptors do not grow: a leak of one per cycle
        // shows within three (a connection it is still answering, or a
        // server's pidfd, comes and goes); this process's move with its
        // threads' opens and children, and are counted at the end.
        let fds = fds_of(holders[0]);
        let base = match cycle {
            0 | 1 => *baseline.insert(fds.max(baseline.unwrap_or(0))),
            _ => baseline.unwrap_or(fds),
        };
        assert!(
            fds <= base + 2,
            "cycle {cycle}: the holder has {fds} descriptors, {base} after the first two cycles: {:?}",
            fd_targets(holders[0])
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    // The readers' descriptors are closed with them: what is left is what
    // this process had before it started them, give or take the
    // directory listings of the harness.
    let left = fds_of(me);
    assert!(
        left <= fds_before + 2,
        "descriptors of the test process: {left}, {fds_before} before the readers"
    );
    let took = started.elapsed();
    eprintln!(
        "{cycles} cycles in {took:?}: {} reads, {} imports",
        tally.reads.load(Ordering::Relaxed),
        tally.imported.load(Ordering::Relaxed)
    );
    assert_eq!(tally.wrong.load(Ordering::Relaxed), 0, "wrong bytes");
    assert_eq!(tally.failed.load(Ordering::Relaxed), 0, "failed reads");
    assert!(tally.imported.load(Ordering::Relaxed) > 0);
    let socket = m.holder_socket.clone();
    let mnt = m.mnt.clone();
    drop(m);
    assert!(!is_mounted(&mnt));
    assert!(
        holder_pids(&socket).is_empty(),
        "a holder outlived the mount"
    );
    assert_eq!(mount_processes(&mnt), 0);
    if daemon.is_some() {
        let left: Vec<_> = std::fs::read_dir(&spool)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "spool files left: {left:?}");
    }
}

#[test]
#[ignore = "long: 100 crash-and-restart cycles (docs/TESTING.md)"]
fn takeover_soak_through_the_mount() {
    soak(false);
}

#[test]
#[ignore = "long: 100 crash-and-restart cycles (docs/TESTING.md)"]
fn takeover_soak_with_passthrough() {
    soak(true);
}
