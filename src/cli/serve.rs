//! `dfcache serve --socket PATH --dir DIR`: the embedded single-node daemon.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use dfcache_budget::MemoryBudget;
use dfcache_daemon::server::{serve, Emulation, ServeOptions, DEFAULT_MAX_CONCURRENT_IMPORTS};
use dfcache_daemon::store::Store;
use dfcache_metrics::Exposed;

use super::args::{parse_memory_budget, parse_progress_timeout, parse_timeout};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Unix socket to listen on.
    #[arg(long, env = "DFCACHE_SOCKET", default_value = super::args::DEFAULT_ENDPOINT)]
    pub socket: PathBuf,
    /// Directory of the task store (created if missing).
    #[arg(long, env = "DFCACHE_DIR", default_value = "/var/lib/dfcache")]
    pub dir: PathBuf,
    /// Permission bits of the socket, in octal.
    #[arg(long, default_value = "600", value_parser = parse_mode)]
    pub socket_mode: u32,
    /// How often expired tasks are collected.
    #[arg(long, value_parser = parse_timeout, default_value = "1m")]
    pub gc_interval: Duration,
    /// Behave like today's released dfdaemon: no streaming RPCs, no delete
    /// on the download service, export pieces out of order.
    #[arg(long, conflicts_with = "emulate_api")]
    pub legacy: bool,
    /// Behave like a daemon built on this dragonfly-api version ("2.1.12":
    /// streaming without dfcache's extensions). For compatibility tests.
    #[arg(long, value_parser = ["2.1.12"], hide = true)]
    pub emulate_api: Option<String>,
    /// With --legacy: deliver download pieces in order, each after this
    /// delay (a slow P2P download of a task this node does not hold: its
    /// local stat finds none). For tests.
    #[arg(long, value_parser = parse_timeout, requires = "legacy", hide = true)]
    pub legacy_piece_delay: Option<Duration>,
    /// Imports stored at once; more wait their turn (backpressure).
    #[arg(
        long,
        env = "DFCACHE_MAX_CONCURRENT_IMPORTS",
        default_value_t = DEFAULT_MAX_CONCURRENT_IMPORTS,
        value_parser = parse_max_imports
    )]
    pub max_concurrent_imports: usize,
    /// Memory for transfers (receive windows, queued chunks, blocks,
    /// read-ahead, short-read replies); a transfer that would need more
    /// waits its turn.
    #[arg(long, value_name = "SIZE", env = "DFCACHE_MEMORY_BUDGET", value_parser = parse_memory_budget, default_value = "256mib")]
    pub memory_budget: u64,
    /// An import or export whose client moves no byte for this long fails
    /// (DEADLINE_EXCEEDED) and gives back its memory.
    #[arg(long, env = "DFCACHE_PROGRESS_TIMEOUT", value_parser = parse_progress_timeout, default_value = "5m")]
    pub progress_timeout: Duration,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (off unless set).
    #[arg(long, value_name = "HOST:PORT", env = "DFCACHE_METRICS_ADDR", value_parser = super::metrics_endpoint::parse_metrics_addr)]
    pub metrics_addr: Option<String>,
}

/// 1 to 4096: zero would block every import forever.
fn parse_max_imports(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .ok()
        .filter(|n| (1..=4096).contains(n))
        .ok_or_else(|| format!("{s:?} is not a number of imports from 1 to 4096"))
}

pub(super) fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal mode like 600"))
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let store = Store::open(&args.dir)
        .with_context(|| format!("cannot open the store at {}", args.dir.display()))?;
    let emulate = match (args.legacy, args.emulate_api.as_deref()) {
        (true, _) => Emulation::Legacy,
        (false, Some(_)) => Emulation::Api2_1_12,
        (false, None) => Emulation::Current,
    };
    let memory_budget = MemoryBudget::new(args.memory_budget);
    let options = ServeOptions {
        socket_mode: args.socket_mode,
        gc_interval: args.gc_interval,
        emulate,
        legacy_piece_delay: args.legacy_piece_delay,
        max_concurrent_imports: args.max_concurrent_imports,
        memory_budget: memory_budget.clone(),
        progress_timeout: args.progress_timeout,
        ..ServeOptions::default()
    };
    let exposed = Exposed {
        mount: false,
        daemon: true,
    };
    let refresh = vec![
        super::metrics_endpoint::store_refresh(&store),
        super::metrics_endpoint::daemon_memory_refresh(&memory_budget),
    ];
    let _metrics =
        super::metrics_endpoint::start_metrics(args.metrics_addr.as_deref(), exposed, refresh)
            .await?;
    serve(store, &args.socket, options, shutdown_signal())
        .await
        .with_context(|| format!("cannot serve on {}", args.socket.display()))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers, Ctrl-C still ends the process.
            std::future::pending::<()>().await;
        }
    }
    tracing::info!("shutting down");
}
