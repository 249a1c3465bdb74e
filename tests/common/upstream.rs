//! Real Dragonfly nodes for the tests that need the released daemon: the
//! dfdaemon 1.5.10 and the stand-in scheduler of `../shared/dragonfly/`
//! (its `run.sh` and `stop.sh`), on loopback, with real P2P between
//! nodes. Their binaries come from that directory's `install.sh` (25-40
//! minutes the first time), so these tests are `#[ignore]`d: run them
//! with `cargo test --test upstream_warmup -- --ignored` (docs/TESTING.md).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::*;

/// The harness directory: `DFCACHE_DRAGONFLY_HARNESS`, or `../shared/dragonfly`.
pub fn harness() -> PathBuf {
    std::env::var_os("DFCACHE_DRAGONFLY_HARNESS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/dragonfly"))
}

/// Panics with what to do when `install.sh` has not been run.
pub fn require_installed() {
    let root = std::env::var_os("DRAGONFLY_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/upstream/root")
        });
    for bin in ["dfdaemon", "stub-scheduler"] {
        assert!(
            root.join("bin").join(bin).exists(),
            "{} is missing: run `bash {}/install.sh` first (25-40 minutes the first time)",
            root.join("bin").join(bin).display(),
            harness().display()
        );
    }
}

/// One node: a real dfdaemon (and, for the first node, the stand-in
/// scheduler), stopped with `stop.sh` when dropped (joined nodes must be
/// dropped first: declare them after the node they join).
pub struct Node {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub host_id: String,
    /// The `run.sh` arguments that started it, to start it again.
    args: Vec<String>,
}

impl Node {
    /// The first node, with its own scheduler, at `dir` (a short path:
    /// the socket's must fit a unix socket address).
    pub fn first(dir: &Path, hostname: &str) -> Node {
        Node::run(dir, &["--hostname", hostname])
    }

    /// A node announced to `first`'s scheduler, on its own loopback `ip`.
    pub fn join(dir: &Path, first: &Node, ip: &str, hostname: &str) -> Node {
        let join = first.dir.to_string_lossy().into_owned();
        Node::run(dir, &["--join", &join, "--ip", ip, "--hostname", hostname])
    }

    fn run(dir: &Path, args: &[&str]) -> Node {
        require_installed();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        start(dir, &args);
        let host_id = std::fs::read_to_string(dir.join("host_id"))
            .expect("run.sh writes host_id")
            .trim()
            .to_string();
        Node {
            dir: dir.to_path_buf(),
            socket: dir.join("dfdaemon.sock"),
            host_id,
            args,
        }
    }

    /// Starts the node's dfdaemon again (after `kill_daemon`), on the same
    /// storage. `stop.sh` first: the killed dfdaemon can linger as a zombie
    /// (setsid left it to a parent that has not reaped it), which `run.sh`
    /// takes for a node still running; `stop.sh` knows a zombie and forgets
    /// the pid. For a joined node (a first node's `stop.sh` also stops its
    /// scheduler).
    pub fn restart(&self) {
        stop(&self.dir);
        start(&self.dir, &self.args);
    }

    /// The pid of its dfdaemon.
    pub fn daemon_pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.join("pids"))
            .expect("run.sh writes pids")
            .lines()
            .find_map(|l| l.strip_prefix("dfdaemon "))
            .and_then(|pid| pid.trim().parse().ok())
            .expect("a dfdaemon pid")
    }

    /// Sends `sig` (`-KILL`, `-STOP`, `-CONT`) to its dfdaemon.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(sig)
            .arg(self.daemon_pid().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} dfdaemon");
    }

    /// SIGKILL of its dfdaemon, as a crash; waits until it is gone.
    pub fn kill_daemon(&self) {
        let pid = self.daemon_pid();
        self.signal("-KILL");
        eventually("the killed dfdaemon to exit", 20, || {
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z "))
        });
    }

    /// The CLI against this node's dfdaemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.socket, args)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        succeeded(
            &self.cli(args),
            format_args!("dfcache {args:?} on {}", self.host_id),
        )
    }

    /// The scheduler's log (of the first node, whichever node asks).
    pub fn scheduler_log(&self) -> String {
        let first = std::fs::read_to_string(self.dir.join("joined"))
            .map(|d| PathBuf::from(d.trim()))
            .unwrap_or_else(|_| self.dir.clone());
        std::fs::read_to_string(first.join("log/scheduler.log")).unwrap_or_default()
    }

    /// The tasks this node fetched by P2P, by the scheduler's "P2P
    /// finished" lines: task id to the `from [...]` list of who served it.
    pub fn fetched(&self) -> Vec<(String, String)> {
        self.scheduler_log()
            .lines()
            .filter(|l| {
                l.contains("P2P finished") && l.contains(&format!("host_id={} ", self.host_id))
            })
            .filter_map(|l| {
                let task = l.split("task_id=").nth(1)?.split(' ').next()?.to_string();
                let from = l.split("from [").nth(1)?.split(']').next()?.to_string();
                Some((task, from))
            })
            .collect()
    }
}

fn start(dir: &Path, args: &[String]) {
    let out = Command::new("bash")
        .arg(harness().join("run.sh"))
        .arg(dir)
        .args(args)
        .output()
        .expect("run run.sh");
    succeeded(&out, format!("run.sh {} {args:?}", dir.display()));
}

/// `stop.sh DIR`: stops what `run.sh DIR` started.
fn stop(dir: &Path) {
    let _ = Command::new("bash")
        .arg(harness().join("stop.sh"))
        .arg(dir)
        .output();
}

impl Drop for Node {
    fn drop(&mut self) {
        stop(&self.dir);
    }
}

/// A directory for nodes with a path short enough for their sockets.
pub fn nodes_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("dfw-")
        .tempdir_in("/tmp")
        .unwrap()
}
