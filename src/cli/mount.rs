//! `dfcache mount MOUNTPOINT`: the FUSE mount, in the foreground until
//! SIGINT/SIGTERM (or an external umount), on a dfdaemon's socket or on an
//! embedded daemon (`--embedded DIR`). A holder keeps the mount for the
//! next process when this one dies or steps down (`takeover.rs`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tokio::sync::oneshot;
use tracing::{info, warn};

use dfcache_budget::MemoryBudget;
use dfcache_client::mapping::PathMapper;
use dfcache_client::{Client, Deadlines};
use dfcache_daemon::server::{serve, ServeOptions};
use dfcache_daemon::store::Store;
use dfcache_metrics::Exposed;
use dfcache_mount::attr::{Modes, Owner};
use dfcache_mount::daemon::metered::Metered;
use dfcache_mount::passthrough::PassthroughMode;
use dfcache_mount::takeover::systemd;
use dfcache_mount::{DfcacheFs, FsConfig, MountSettings, Served};

use super::args::{parse_memory_budget, parse_timeout, GlobalArgs, TaskArgs};
use super::flags::parse_size;
use super::takeover::{step_down, Holder, HolderKind};

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Directory to mount at (created if missing).
    pub mountpoint: PathBuf,
    /// Run an embedded daemon with its store in DIR instead of using --endpoint.
    #[arg(long, value_name = "DIR", env = "DFCACHE_EMBEDDED")]
    pub embedded: Option<PathBuf>,
    /// Bytes of task pieces kept in memory.
    #[arg(long, value_parser = parse_size, default_value = "256mib", env = "DFCACHE_CACHE_SIZE")]
    pub cache_size: u64,
    /// Memory for transfers beyond --cache-size: imports being streamed
    /// (a quarter of it with --embedded, whose daemon's transfers get the
    /// rest); a transfer that would need more waits its turn.
    #[arg(long, value_name = "SIZE", env = "DFCACHE_MEMORY_BUDGET", value_parser = parse_memory_budget, default_value = "256mib")]
    pub memory_budget: u64,
    /// Most bytes fetched ahead of a sequential reader (0 disables).
    #[arg(long, value_parser = parse_size, default_value = "64mib")]
    pub read_ahead: u64,
    /// Tasks larger than this are not kept in the kernel's page cache behind
    /// a sequential reader (0: all are kept) [default: a quarter of the memory].
    #[arg(long, value_parser = parse_size, env = "DFCACHE_DROP_BEHIND_ABOVE")]
    pub drop_behind_above: Option<u64>,
    /// Kernel read-ahead of the mount, set through sysfs (0 keeps the kernel's).
    #[arg(long, value_parser = parse_size, default_value = "1mib")]
    pub kernel_read_ahead: u64,
    /// Spool imports here and upload them on close: allows writes at any offset.
    #[arg(long, value_name = "DIR", env = "DFCACHE_SPOOL")]
    pub spool: Option<PathBuf>,
    /// Container-to-host prefixes for paths handed to the daemon (the spool).
    #[arg(long, env = "DFCACHE_PATH_MAPPING", value_parser = super::args::parse_mapping_arg, default_value = "")]
    pub path_mapping: PathMapper,
    /// Let other users use the mount, within --file-mode and --dir-mode
    /// (the kernel checks them). A user other than root needs
    /// `user_allow_other` in /etc/fuse.conf.
    #[arg(long)]
    pub allow_other: bool,
    /// Owner of the mount's files and directories [default: the mounting user].
    #[arg(long, env = "DFCACHE_UID")]
    pub uid: Option<u32>,
    /// Group of the mount's files and directories [default: the mounting user's group].
    #[arg(long, env = "DFCACHE_GID")]
    pub gid: Option<u32>,
    /// Permission bits of tasks/<id>, in octal (write bits are dropped: tasks are read-only).
    #[arg(long, default_value = "0444", value_parser = super::serve::parse_mode, env = "DFCACHE_FILE_MODE")]
    pub file_mode: u32,
    /// Permission bits of import/, in octal (its write bits say who may
    /// import); the root and tasks/ get the same without write bits.
    #[arg(long, default_value = "0755", value_parser = super::serve::parse_mode, env = "DFCACHE_DIR_MODE")]
    pub dir_mode: u32,
    /// Bound on every daemon call: a lookup, listing or stat the daemon does
    /// not answer in this long fails with ETIMEDOUT, and so does a read or
    /// import whose transfer makes no progress for this long.
    #[arg(long, value_parser = parse_timeout, default_value = "30s")]
    pub fetch_timeout: Duration,
    /// Disk space for whole tasks downloaded from a daemon without range
    /// reads (a released dfdaemon), kept in the spool directory and
    /// evicted least recently used, task by task.
    #[arg(long, value_parser = parse_size, default_value = "10gib", env = "DFCACHE_TASK_CACHE_SIZE")]
    pub task_cache_size: u64,
    /// On a daemon without range reads, the first open of a file under
    /// trees/<id>/ also starts downloading the tree's other files in the
    /// background (within --task-cache-size, after what programs wait for).
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set, env = "DFCACHE_PREFETCH_TREES")]
    pub prefetch_trees: bool,
    /// Threads reading kernel requests.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// `auto`: opens of task content that is a file on this machine (the
    /// --embedded store, or a released dfdaemon's download linked into
    /// --spool) pass through to it in the kernel (Linux 6.9+, root);
    /// `never`: every read goes through the mount.
    #[arg(
        long,
        value_name = "never|auto",
        default_value = "auto",
        env = "DFCACHE_PASSTHROUGH"
    )]
    pub passthrough: PassthroughMode,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (off unless set).
    #[arg(long, value_name = "HOST:PORT", env = "DFCACHE_METRICS_ADDR", value_parser = super::metrics_endpoint::parse_metrics_addr)]
    pub metrics_addr: Option<String>,
    /// Who keeps the mount while no process serves it (a crash, an OOM
    /// kill, an upgrade), for the next `dfcache mount` here to take over:
    /// `process`: a holder process this mount starts (or finds) at
    /// --holder-socket; `external`: a holder run beside it (`dfcache
    /// mount-holder`), to which SIGTERM leaves the mount; `systemd`: the
    /// service's file-descriptor store; `none`: nobody (a crash leaves a
    /// dead mount point).
    #[arg(
        long,
        value_name = "process|external|systemd|none",
        default_value = "process",
        env = "DFCACHE_HOLDER"
    )]
    pub holder: HolderKind,
    /// The holder's socket [default: holder-<hash of the mount point>.sock
    /// in /run/dfcache as root, else in $XDG_RUNTIME_DIR/dfcache].
    #[arg(long, value_name = "PATH", env = "DFCACHE_HOLDER_SOCKET")]
    pub holder_socket: Option<PathBuf>,
    /// How long a holder this mount starts keeps the mount after its
    /// process died, waiting for the next `dfcache mount` (programs wait
    /// meanwhile); then it lets go and they get ENOTCONN. 0: as long as the
    /// holder runs.
    #[arg(long, value_parser = parse_timeout, default_value = "10m", env = "DFCACHE_TAKEOVER_WAIT")]
    pub takeover_wait: Duration,
    /// Replace the live process serving this mount point: it finishes the
    /// imports being written, hands the mount over and exits, and this
    /// process serves on; programs see no error.
    #[arg(long)]
    pub takeover: bool,
    /// How long a process handing over may take (imports being written
    /// finish within it; later ones fail with EIO).
    #[arg(long, value_parser = parse_timeout, default_value = "60s", env = "DFCACHE_TAKEOVER_TIMEOUT")]
    pub takeover_timeout: Duration,
    #[command(flatten)]
    pub task: TaskArgs,
}

pub async fn run(global: &GlobalArgs, args: MountArgs) -> anyhow::Result<()> {
    // From the start: a signal that comes while mounting is not lost.
    let mut signals = Signals::new();
    create_mount_point(&args.mountpoint).with_context(|| {
        format!(
            "cannot create the mount point {}",
            args.mountpoint.display()
        )
    })?;
    let holder = Arc::new(Holder::new(
        args.holder,
        args.holder_socket.clone(),
        &args.mountpoint,
        args.takeover_wait,
    ));
    // First, before the store or the metrics port is opened: a process
    // handing over holds them until it exits.
    let takeover = args.takeover.then_some(args.takeover_timeout);
    let taken = tokio::task::block_in_place(|| holder.take(&args.mountpoint, takeover))?;

    if let Some(spool) = &args.spool {
        std::fs::create_dir_all(spool)
            .with_context(|| format!("cannot create the spool {}", spool.display()))?;
        dfcache_mount::import::write::spool_dir_ok(spool)
            .with_context(|| format!("cannot write in the spool {}", spool.display()))?;
        match dfcache_mount::import::write::remove_stale_spool_files(spool) {
            Ok(0) => {}
            Ok(n) => {
                info!(spool = %spool.display(), files = n, "removed the spool files of a mount that is gone")
            }
            Err(e) => {
                warn!(spool = %spool.display(), error = %e, "cannot look for stale spool files")
            }
        }
    }

    let budgets = Budgets::split(args.memory_budget, args.embedded.is_some());
    let (daemon, socket) = match &args.embedded {
        Some(dir) => {
            let (daemon, socket) = start_embedded(dir, budgets.daemon.clone()).await?;
            (Some(daemon), socket)
        }
        None => (None, global.endpoint.clone()),
    };
    // The embedded store's content files are on this machine: opens of
    // tasks pass through to them.
    let local_store = daemon.as_ref().map(|d| d.store.clone());
    // With --embedded the daemon's families are this process's too.
    let exposed = Exposed {
        mount: true,
        daemon: daemon.is_some(),
    };
    let mut refresh: Vec<_> = daemon
        .iter()
        .map(|d| super::metrics_endpoint::store_refresh(&d.store))
        .collect();
    refresh.push(super::metrics_endpoint::import_memory_refresh(
        &budgets.imports,
    ));
    refresh.extend(
        budgets
            .daemon
            .as_ref()
            .map(super::metrics_endpoint::daemon_memory_refresh),
    );
    let _metrics =
        super::metrics_endpoint::start_metrics(args.metrics_addr.as_deref(), exposed, refresh)
            .await?;
    // Every daemon call of the mount is bounded by --fetch-timeout: a frozen
    // daemon must not hang the programs (and kubelet) touching the mount.
    let client = Client::with_windows(&socket, dfcache_wire::transport::Windows::BOUNDED)
        .with_deadlines(Deadlines {
            call: args.fetch_timeout,
            progress: args.fetch_timeout,
        })
        .with_short_reads();
    match client.probe_streaming().await {
        Ok(false) if args.spool.is_none() => bail!(
            "the daemon at {} has no streaming RPCs (a released dfdaemon): it imports files by path, so \
             mount with --spool DIR on a directory it can read (and --path-mapping if it sees that \
             directory under another path)",
            socket.display()
        ),
        Ok(_) => {}
        Err(e) => warn!(
            error = %e,
            "cannot ask the daemon whether it streams yet; asking again when it first answers"
        ),
    }
    // Owner of the mount's own entries: the user running the mount,
    // unless told otherwise.
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let owner = Owner {
        uid: args.uid.unwrap_or(uid),
        gid: args.gid.unwrap_or(gid),
    };
    let modes = Modes {
        file: args.file_mode as u16,
        dir: args.dir_mode as u16,
    };
    let config = FsConfig {
        cache_size: args.cache_size,
        read_ahead: args.read_ahead,
        spool: args.spool.clone(),
        free_space_of: args.spool.clone().or_else(|| args.embedded.clone()),
        path_mapping: args.path_mapping.clone(),
        import: args.task.import_options(None),
        fetch_timeout: args.fetch_timeout,
        import_memory: budgets.imports,
        negative_ttl: Duration::from_secs(5),
        task_cache_size: args.task_cache_size,
        prefetch_trees: args.prefetch_trees,
        owner,
        modes,
    };
    let drop_behind_above = args
        .drop_behind_above
        .unwrap_or_else(dfcache_mount::read::drop_behind::quarter_of_memory);
    let mut fs =
        DfcacheFs::new(Arc::new(Metered::new(client)), config).with_drop_behind(drop_behind_above);
    if let Some(store) = local_store {
        fs = fs.with_local_content(Arc::new(crate::embedded::StoreFiles(store)));
    }
    let fs = Arc::new(fs);
    let settings = MountSettings {
        allow_other: args.allow_other,
        kernel_read_ahead_kb: u32::try_from(args.kernel_read_ahead / 1024).unwrap_or(u32::MAX),
        threads: args.threads,
        passthrough: args.passthrough,
        hand_over: args.holder != HolderKind::None,
    };
    let rt = tokio::runtime::Handle::current();
    let (served, link) = match taken {
        Some((held, link)) => (
            dfcache_mount::adopt(fs.clone(), held, &args.mountpoint, &settings, rt)
                .context("cannot take the mount over")?,
            link,
        ),
        None => (
            dfcache_mount::mount(fs.clone(), &args.mountpoint, &settings, rt)
                .context("cannot mount")?,
            None,
        ),
    };
    let mut served = served;
    let mut keeping = match served.held.take() {
        Some(held) => Some(holder.keep(held, &args.mountpoint, link)?),
        None => None,
    };
    if args.holder == HolderKind::Systemd {
        if let Err(e) = systemd::state("READY=1") {
            warn!(error = %e, "cannot tell systemd the mount is ready");
        }
    }
    info!(mountpoint = %args.mountpoint.display(), socket = %socket.display(), "dfcache mounted; Ctrl-C to unmount");

    // Until a signal, a takeover, or someone unmounts us from outside.
    let ending = {
        let handover = async {
            match keeping.as_mut() {
                Some(k) => k.handovers.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            signal = signals.next() => match signal {
                // An external holder's life is the mount's: a SIGTERM
                // (a container restart) leaves the mount to it.
                Ending::ForGood if args.holder == HolderKind::External => Ending::StepDown(None),
                other => other,
            },
            _ = wait_session_end(&served.session) => Ending::Unmounted,
            Some(within) = handover => Ending::StepDown(Some(within)),
        }
    };
    // Stepping down with nobody holding the mount would leave it dead.
    let ending = match ending {
        Ending::StepDown(_) if !keeping.as_ref().is_some_and(|k| k.is_held()) => {
            warn!("nobody holds the mount for a next process (no holder answers at its socket): unmounting instead of leaving it dead");
            Ending::ForGood
        }
        other => other,
    };
    match ending {
        Ending::StepDown(handover) => {
            if let Some(keeping) = &keeping {
                keeping.ending();
            }
            let within = handover.unwrap_or(args.takeover_timeout);
            step_down(&fs, &served, within).await;
            if let Some(keeping) = &keeping {
                if handover.is_some() {
                    keeping.handed();
                }
            }
            // Nothing is torn down: the mount, its connection and backing
            // files stay with the holder, and the store lock and the
            // metrics port go with the process.
            std::process::exit(0);
        }
        Ending::ForGood | Ending::Unmounted => {
            if let Some(keeping) = &keeping {
                keeping.ending();
            }
            let unmounted = tokio::task::spawn_blocking({
                let mountpoint = args.mountpoint.clone();
                let outside = ending == Ending::Unmounted;
                move || finish(served, &mountpoint, outside)
            })
            .await
            .context("unmount task failed")?;
            if let Some(keeping) = &keeping {
                keeping.release(args.holder);
            }
            if let Some(daemon) = daemon {
                daemon.stop().await;
            }
            match unmounted {
                Ok(()) => {
                    info!("unmounted");
                    Ok(())
                }
                Err(e) => bail!("unmount of {} failed: {e}", args.mountpoint.display()),
            }
        }
    }
}

/// Creates the mount point if it is missing, without looking inside: a
/// mount held for this process answers nothing until it serves it (and a
/// dead one answers ENOTCONN), so only its parent is asked.
fn create_mount_point(mountpoint: &std::path::Path) -> std::io::Result<()> {
    if let Some(parent) = mountpoint.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::create_dir(mountpoint) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// How the mount's process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// SIGINT/SIGTERM: unmount.
    ForGood,
    /// Unmounted from outside (umount, fusermount3 -u).
    Unmounted,
    /// SIGUSR2 (or a takeover: its deadline): leave the mount to the holder.
    StepDown(Option<Duration>),
}

/// SIGINT/SIGTERM: for good; SIGUSR2: step down.
struct Signals(Option<[tokio::signal::unix::Signal; 3]>);

impl Signals {
    fn new() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::user_defined2()),
        ) {
            (Ok(term), Ok(int), Ok(usr2)) => Signals(Some([term, int, usr2])),
            // Without signal handlers, Ctrl-C still ends the process.
            _ => Signals(None),
        }
    }

    async fn next(&mut self) -> Ending {
        let Some([term, int, usr2]) = &mut self.0 else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => Ending::ForGood,
            _ = int.recv() => Ending::ForGood,
            _ = usr2.recv() => Ending::StepDown(None),
        }
    }
}

/// Unmounts (unless already unmounted from outside) and waits for the
/// session to end.
fn finish(served: Served, mountpoint: &std::path::Path, outside: bool) -> std::io::Result<()> {
    if outside {
        served.session.join()
    } else {
        served.unmount(mountpoint)
    }
}

/// `on` or `off`.
fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("{other:?} is not one of: on, off")),
    }
}

async fn wait_session_end(session: &fuser::BackgroundSession) {
    while !session.guard.is_finished() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `--memory-budget`, split between what the mount's imports hold and
/// (with `--embedded`) the embedded daemon's transfers.
struct Budgets {
    imports: MemoryBudget,
    daemon: Option<MemoryBudget>,
}

impl Budgets {
    /// With an embedded daemon, its transfers get three quarters: they
    /// hold the larger buffers (blocks), and the daemon must have room
    /// for every import the mount lets through at once, or those would
    /// wait on the daemon and the mount's writers behind them.
    fn split(total: u64, embedded: bool) -> Self {
        if !embedded {
            return Self {
                imports: MemoryBudget::new(total),
                daemon: None,
            };
        }
        let imports = total / 4;
        Self {
            imports: MemoryBudget::new(imports),
            daemon: Some(MemoryBudget::new(total - imports)),
        }
    }
}

/// An embedded daemon on a private socket inside its store directory.
struct Embedded {
    store: Store,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Embedded {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn start_embedded(
    dir: &std::path::Path,
    memory_budget: Option<MemoryBudget>,
) -> anyhow::Result<(Embedded, PathBuf)> {
    let store =
        Store::open(dir).with_context(|| format!("cannot open the store at {}", dir.display()))?;
    let socket = dir.join("dfdaemon.sock");
    let served = store.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let listen_socket = socket.clone();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        let mut options = ServeOptions::default();
        if let Some(budget) = memory_budget {
            options.memory_budget = budget;
        }
        if let Err(e) = serve(served, &listen_socket, options, shutdown).await {
            warn!(error = %e, "embedded daemon stopped");
        }
    });
    // A connection proves the new listener is up (a crashed run may have
    // left a stale socket file at the same path).
    for _ in 0..200 {
        if tokio::net::UnixStream::connect(&socket).await.is_ok() {
            return Ok((Embedded { store, stop, task }, socket));
        }
        if task.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("the embedded daemon did not start on {}", socket.display())
}
