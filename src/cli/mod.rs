//! The `dfcache` command line: one file per subcommand.

pub mod completions;
pub mod export;
pub mod flags;
pub mod import;
pub mod ls;
pub mod mount;
pub mod progress;
pub mod rm;
pub mod serve;
pub mod stat;
pub mod tree;
mod tree_fetch;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use dfcache::domain::piece::MIN_PIECE_LENGTH;
use dfcache::domain::ttl::{check_ttl, MIN_TTL};
use dfcache::grpc::client::{Client, Deadlines, ImportOptions};
use dfcache::mapping::PathMapper;

/// Where dfdaemon listens on a node.
pub const DEFAULT_ENDPOINT: &str = "/var/run/dragonfly/dfdaemon.sock";

#[derive(Debug, Parser)]
#[command(
    name = "dfcache",
    version,
    about = "Dragonfly persistent cache tasks as files: import, export, stat, ls, rm, and an embedded daemon"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import a file; prints the task id on stdout.
    Import(import::ImportArgs),
    /// Export a task to a file.
    Export(export::ExportArgs),
    /// Show a task's information.
    Stat(stat::StatArgs),
    /// List the daemon's local tasks.
    Ls(ls::LsArgs),
    /// Delete a task.
    Rm(rm::RmArgs),
    /// Run the embedded single-node daemon.
    Serve(serve::ServeArgs),
    /// Mount tasks/ and import/ at a directory (stays in the foreground).
    Mount(mount::MountArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
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

/// `--metrics-addr`: HOST:PORT, as a TCP listener takes it (`0.0.0.0:9464`,
/// `localhost:9464`, `[::1]:9464`; port 0 picks a free one).
pub fn parse_metrics_addr(s: &str) -> Result<String, String> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(s.to_string()),
        _ => Err(format!("{s:?} is not HOST:PORT, like 127.0.0.1:9464")),
    }
}

/// Serves the `exposed` families at `http://ADDR/metrics` when asked to;
/// the endpoint lives as long as the returned server.
pub async fn start_metrics(
    addr: Option<&str>,
    exposed: dfcache::metrics::Exposed,
    refresh: Vec<dfcache::metrics::Refresh>,
) -> anyhow::Result<Option<dfcache::metrics::MetricsServer>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let registry = dfcache::metrics::registry(exposed);
    Ok(Some(
        dfcache::metrics::serve_metrics(addr, registry, refresh).await?,
    ))
}

/// Reads the store's task count, bytes and free space before a scrape.
pub fn store_refresh(store: &dfcache::store::Store) -> dfcache::metrics::Refresh {
    let store = store.clone();
    std::sync::Arc::new(move || {
        let (tasks, bytes, free) = store.usage();
        dfcache::metrics::daemon().store_state(tasks, bytes, free);
    })
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
