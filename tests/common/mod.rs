//! Helpers for the integration tests: a real `dfcache serve` on a real Unix
//! socket, the real CLI binary, and deterministic test files.
#![allow(dead_code)]

pub mod csi;
pub mod ext4;
pub mod inproc;
pub mod metrics;
pub mod ns;
pub mod tree;
pub mod upstream;
pub mod user;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const MIB: u64 = 1 << 20;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dfcache")
}

/// A `dfcache serve` process; killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    pub dir: PathBuf,
}

impl Daemon {
    /// Sends `sig` (`kill`'s form: `-STOP`, `-CONT`) to the daemon.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(sig)
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig}");
    }

    /// Starts a daemon with its store in `root/store` and socket `root/d.sock`.
    pub fn start(root: &Path) -> Daemon {
        Self::start_with(root, &[])
    }

    pub fn start_with(root: &Path, extra: &[&str]) -> Daemon {
        Self::start_in(root, &[], extra)
    }

    /// Like `start_with`, with the daemon's command line appended to
    /// `wrapper` (e.g. `unshare -m ... sh -c '... && exec "$0" "$@"'`), so
    /// it runs in whatever the wrapper sets up. The wrapper must end by
    /// exec-ing the command, so that the child's pid is the daemon's (which
    /// `Drop` signals). An empty wrapper runs the daemon directly.
    pub fn start_in(root: &Path, wrapper: &[&str], extra: &[&str]) -> Daemon {
        Self::start_on(&root.join("d.sock"), &root.join("store"), wrapper, extra)
    }

    /// A daemon on `socket` with its store in `dir` (see `start_in`).
    pub fn start_on(socket: &Path, dir: &Path, wrapper: &[&str], extra: &[&str]) -> Daemon {
        let (socket, dir) = (socket.to_path_buf(), dir.to_path_buf());
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let child = command
            .args(["serve", "--socket"])
            .arg(&socket)
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .env("DFCACHE_LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn dfcache serve");
        let mut daemon = Daemon { child, socket, dir };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("daemon exited early: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon did not listen on {}", self.socket.display());
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs the CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.socket, args)
    }

    /// Runs the CLI and insists it succeeded; returns trimmed stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        succeeded(&self.cli(args), format_args!("dfcache {args:?}"))
    }

    /// The ids `dfcache ls -q` prints.
    pub fn ids(&self) -> Vec<String> {
        let out = self.ok(&["ls", "-q"]);
        out.lines().map(str::to_string).collect()
    }

    /// Files left in the store's temporary directory.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.join("tmp"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM first so the socket is removed, then make sure.
        unsafe_free_term(&self.child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

/// Sends SIGTERM with the `kill` program (no libc in the tests).
fn unsafe_free_term(child: &Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
}

pub fn cli(socket: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .arg("--no-progress")
        .env("DFCACHE_ENDPOINT", socket)
        .stdin(Stdio::null())
        .output()
        .expect("run dfcache")
}

/// Trimmed stdout of a run that must have succeeded; otherwise panics
/// naming `what`, the exit status and stderr.
pub fn succeeded(out: &Output, what: impl std::fmt::Display) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Stderr of a failed run; panics when it succeeded.
pub fn failure(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure, got success: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.status.signal().is_none(),
        "killed by a signal: {:?}",
        out.status
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// xorshift64: deterministic, seeded, no dependency; the tests' one PRNG.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Fills `buf` with the next pseudo-random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.fill(&mut buf);
        buf
    }
}

/// Writes `len` deterministic pseudo-random bytes (seeded) to `path`.
pub fn write_file(path: &Path, len: u64, seed: u64) {
    let mut f =
        std::io::BufWriter::with_capacity(MIB as usize, std::fs::File::create(path).unwrap());
    let mut rng = Rng::new(seed);
    let mut left = len;
    let mut buf = vec![0u8; MIB as usize];
    while left > 0 {
        let n = left.min(MIB) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

/// The task id dfdaemon computes for plain content (no tag, application or
/// piece length), by the crate's own hasher: the one oracle of the tests.
/// (The hasher itself is checked against known ids in `domain::task_id`.)
pub fn id_of(data: &[u8]) -> String {
    let mut hasher = dfcache_wire::domain::task_id::TaskIdHasher::new(Default::default());
    hasher.update(data);
    hasher.finish()
}

/// `id_of` the content of the file at `path`.
pub fn expected_id(path: &Path) -> String {
    id_of(&std::fs::read(path).unwrap())
}

/// `s` as one single-quoted shell word (quotes inside it escaped): the
/// tests' one shell quoting.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

pub fn same_bytes(a: &Path, b: &Path) -> bool {
    Command::new("cmp")
        .arg(a)
        .arg(b)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("dfcache-test-")
        .tempdir()
        .unwrap()
}

/// Polls `cond` every 50 ms for up to `secs` seconds; panics naming `what`.
pub fn eventually(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for: {what}");
}

/// SIGTERM, up to 10 s for `child` to exit, then SIGKILL; its exit status.
pub fn terminate(mut child: Child) -> Option<std::process::ExitStatus> {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok()
}

/// A small tmpfs at a path (a disk that fills up), unmounted on drop, also
/// when the test fails. Needs root, as the FUSE tests do.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(path: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "dfcache-test"])
            .arg(&path)
            .output()
            .unwrap();
        succeeded(&out, format!("mount tmpfs on {}", path.display()));
        Tmpfs(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
