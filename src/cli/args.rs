//! Arguments and values shared by the subcommands: the global flags (the
//! daemon's socket, logging, deadlines), how a transfer reaches the daemon,
//! what a new task is created with, and their parsers.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use dfcache_client::mapping::PathMapper;
use dfcache_client::{Client, Deadlines, ImportOptions};
use dfcache_daemon::memory::MIN_MEMORY_BUDGET;
use dfcache_wire::domain::piece::MIN_PIECE_LENGTH;
use dfcache_wire::domain::ttl::{check_ttl, MIN_TTL};

use super::flags;

/// Where dfdaemon listens on a node.
pub const DEFAULT_ENDPOINT: &str = "/var/run/dragonfly/dfdaemon.sock";

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Unix socket of the dfdaemon (or `dfcache serve`) to talk to.
    #[arg(short = 'e', long, global = true, env = "DFCACHE_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: PathBuf,
    /// Log level: error, warn, info, debug or trace [default: info for
    /// serve, warn for the others].
    #[arg(short = 'l', long, global = true, env = "DFCACHE_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Print logs on the console (stderr). dfcache keeps no log files, so
    /// logs always go there; the flag is accepted for upstream compatibility.
    #[arg(long, global = true)]
    pub console: bool,
    /// Do not draw progress bars.
    #[arg(long, global = true, env = "DFCACHE_NO_PROGRESS")]
    pub no_progress: bool,
    /// A daemon call (stat, ls, rm, the start of a transfer) that gets no
    /// answer in this long fails; a transfer fails after this long without
    /// progress (its whole length is bounded by --timeout).
    #[arg(long, global = true, value_parser = parse_timeout, default_value = "30s", env = "DFCACHE_CALL_TIMEOUT")]
    pub call_timeout: Duration,
}

impl GlobalArgs {
    pub fn client(&self) -> Client {
        // No-progress allows longer than a call: a P2P download may wait on
        // peers between pieces.
        Client::new(&self.endpoint).with_deadlines(Deadlines {
            call: self.call_timeout,
            progress: self.call_timeout.max(Deadlines::default().progress),
        })
    }
}

/// How a transfer reaches the daemon; shared by import and export.
#[derive(Debug, Clone, Args)]
pub struct TransferArgs {
    /// Move bytes over the socket (WritePersistentCacheTask /
    /// ReadPersistentCacheTask) instead of handing the daemon a path. A
    /// daemon without the streaming RPCs gets the legacy ones instead.
    #[arg(long, env = "DFCACHE_STREAM_MODE")]
    pub stream_mode: bool,
    /// Where paths handed to the daemon live on its side:
    /// "container:host[,container:host...]".
    #[arg(long, env = "DFCACHE_PATH_MAPPING", value_parser = parse_mapping_arg, default_value = "")]
    pub path_mapping: PathMapper,
}

/// Parses `--path-mapping`; container prefixes that lead through a symlink
/// also match the resolved paths the CLI and the mount hand to `to_host`.
pub fn parse_mapping_arg(s: &str) -> Result<PathMapper, String> {
    s.parse::<PathMapper>()
        .map(PathMapper::with_real_container_prefixes)
        .map_err(|e| e.to_string())
}

/// What a new task is created with; shared by import and the mount.
#[derive(Debug, Clone, Args)]
pub struct TaskArgs {
    /// Replica count of the persistent cache task.
    #[arg(long, default_value_t = 2, env = "DFCACHE_PERSISTENT_REPLICA_COUNT")]
    pub persistent_replica_count: u64,
    /// Piece length, at least 4mib [default: size / 500, as a power of two in 4mib..64mib].
    #[arg(long, value_parser = parse_piece_length, env = "DFCACHE_PIECE_LENGTH")]
    pub piece_length: Option<u64>,
    /// Caller application, for statistics and access control.
    #[arg(long, env = "DFCACHE_APPLICATION")]
    pub application: Option<String>,
    /// Tag: the same content with different tags makes different tasks.
    #[arg(long, env = "DFCACHE_TAG")]
    pub tag: Option<String>,
    /// Time to live of the task, between 5m and 7d.
    #[arg(long, value_parser = parse_ttl, default_value = "1h", env = "DFCACHE_TTL")]
    pub ttl: Duration,
}

impl TaskArgs {
    pub fn import_options(&self, timeout: Option<Duration>) -> ImportOptions {
        ImportOptions {
            persistent_replica_count: self.persistent_replica_count,
            tag: self.tag.clone(),
            application: self.application.clone(),
            ttl: Some(self.ttl),
            piece_length: self.piece_length,
            content_for_calculating_task_id: None,
            timeout,
        }
    }
}

pub fn parse_piece_length(s: &str) -> Result<u64, String> {
    let n = flags::parse_size(s)?;
    if n < MIN_PIECE_LENGTH {
        return Err(format!("piece length {s} is below the minimum of 4mib"));
    }
    Ok(n)
}

pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let ttl = flags::parse_duration(s)?;
    check_ttl(ttl, MIN_TTL).map_err(|_| format!("ttl {s} is outside the allowed range of 5m to 7d"))
}

pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    flags::parse_duration(s)
}

/// `--memory-budget`: a size of at least 16mib (an import's share and a
/// block).
pub fn parse_memory_budget(s: &str) -> Result<u64, String> {
    let n = flags::parse_size(s)?;
    if n < MIN_MEMORY_BUDGET {
        return Err(format!(
            "memory budget {s} is below the minimum of {}mib",
            MIN_MEMORY_BUDGET >> 20
        ));
    }
    Ok(n)
}

/// `--progress-timeout`: a duration; zero would fail every transfer.
pub fn parse_progress_timeout(s: &str) -> Result<Duration, String> {
    let d = flags::parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("progress timeout {s} must be longer than 0"));
    }
    Ok(d)
}

/// Runs `fut` under `timeout`, turning expiry into an error.
pub async fn with_timeout<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {}", flags::format_duration(timeout)))?
}
