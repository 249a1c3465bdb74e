//! `warmup: "true"`: before a volume is published, every file of it is
//! read once through the node's mount, so the node's daemon has fetched
//! every piece from the P2P network (a released dfdaemon downloads each
//! whole task, which the mount keeps in its task cache) and the pod's
//! first reads are local.
//!
//! One warm-up per source at a time: a publish that kubelet retries after
//! its deadline, or a second pod of the same tree, waits for the warm-up
//! already running instead of starting another. A warm-up runs to its end
//! even if the publish that started it is cancelled, so the retry finds
//! the work done. Each read is bounded by the mount's `--fetch-timeout`
//! (a read that makes no progress fails with ETIMEDOUT).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;
use tracing::info;

use crate::error::PublishError;

/// Read size: the mount's requests are at most 1 MiB.
const READ_SIZE: usize = 1 << 20;

/// How a warm-up ended, as every waiter sees it.
#[derive(Debug, Clone)]
struct Failure {
    path: PathBuf,
    errno: Option<i32>,
    message: String,
}

type Outcome = Option<Result<(), Failure>>;

#[derive(Debug, Clone)]
pub struct Warmups {
    running: Arc<Mutex<HashMap<PathBuf, watch::Receiver<Outcome>>>>,
    /// Files read at once.
    concurrency: usize,
}

impl Warmups {
    pub fn new(concurrency: usize) -> Self {
        Warmups {
            running: Arc::default(),
            concurrency: concurrency.max(1),
        }
    }

    /// Reads all of `source` (a file, or a directory and everything below
    /// it) through the mount, or waits for the warm-up of it already
    /// running.
    pub async fn warm(&self, source: &Path) -> Result<(), PublishError> {
        let mut outcome = {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            match running.get(source) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    running.insert(source.to_path_buf(), rx.clone());
                    let (map, path, concurrency) =
                        (self.running.clone(), source.to_path_buf(), self.concurrency);
                    tokio::spawn(async move {
                        let walked = path.clone();
                        let result =
                            tokio::task::spawn_blocking(move || read_all(&walked, concurrency))
                                .await
                                .unwrap_or_else(|e| {
                                    Err(Failure {
                                        path: path.clone(),
                                        errno: None,
                                        message: e.to_string(),
                                    })
                                });
                        map.lock().unwrap_or_else(|p| p.into_inner()).remove(&path);
                        let _ = tx.send(Some(result));
                    });
                    rx
                }
            }
        };
        let ended = outcome
            .wait_for(Option::is_some)
            .await
            .map(|o| o.clone())
            .unwrap_or(None);
        match ended {
            Some(Ok(())) => Ok(()),
            Some(Err(f)) => Err(PublishError::Warmup {
                path: f.path,
                source: match f.errno {
                    Some(errno) => std::io::Error::from_raw_os_error(errno),
                    None => std::io::Error::other(f.message),
                },
            }),
            None => Err(PublishError::Warmup {
                path: source.to_path_buf(),
                source: std::io::Error::other("the warm-up stopped without an outcome"),
            }),
        }
    }
}

/// Every regular file at or below `source`, symlinks not followed.
fn files_of(source: &Path) -> Result<Vec<PathBuf>, Failure> {
    let failure = |path: &Path, e: std::io::Error| Failure {
        path: path.to_path_buf(),
        errno: e.raw_os_error(),
        message: e.to_string(),
    };
    let meta = std::fs::symlink_metadata(source).map_err(|e| failure(source, e))?;
    if meta.is_file() {
        return Ok(vec![source.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut dirs = vec![source.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| failure(&dir, e))? {
            let entry = entry.map_err(|e| failure(&dir, e))?;
            let kind = entry.file_type().map_err(|e| failure(&entry.path(), e))?;
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    Ok(files)
}

/// Reads every file of `source` to its end, `concurrency` at a time; the
/// first failure stops the others.
fn read_all(source: &Path, concurrency: usize) -> Result<(), Failure> {
    let started = Instant::now();
    let files = files_of(source)?;
    let count = files.len();
    let queue = Mutex::new(files);
    let stop = AtomicBool::new(false);
    let bytes = AtomicU64::new(0);
    let first_failure: Mutex<Option<Failure>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..concurrency.min(count.max(1)) {
            scope.spawn(|| {
                let mut buf = vec![0u8; READ_SIZE];
                while !stop.load(Ordering::Relaxed) {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop();
                    let Some(path) = next else { return };
                    match read_file(&path, &mut buf) {
                        Ok(n) => {
                            bytes.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            let mut first = first_failure.lock().unwrap_or_else(|p| p.into_inner());
                            first.get_or_insert(Failure {
                                path,
                                errno: e.raw_os_error(),
                                message: e.to_string(),
                            });
                        }
                    }
                }
            });
        }
    });
    if let Some(failure) = first_failure
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
    {
        return Err(failure);
    }
    info!(
        source = %source.display(),
        files = count,
        bytes = bytes.load(Ordering::Relaxed),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "warmed up"
    );
    Ok(())
}

fn read_file(path: &Path, buf: &mut [u8]) -> std::io::Result<u64> {
    let mut file = std::fs::File::open(path)?;
    let mut total = 0u64;
    loop {
        match file.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
