//! How `dfcache mount` outlives its process: finding what a holder keeps
//! for the mount point (and taking it over), giving a new mount to a
//! holder, keeping it held while the process serves, and the two ways out:
//! unmounting for good, or stepping down so the next process takes over.
//! The mechanisms are the mount crate's (`dfcache_mount::takeover`).

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::mpsc;
use tracing::{info, warn};

use dfcache_mount::takeover::connection::{is_gone, Held};
use dfcache_mount::takeover::gate::until;
use dfcache_mount::takeover::holder::link::{HolderClient, LinkEvent, ServerLink, Taken};
use dfcache_mount::takeover::systemd;
use dfcache_mount::{DfcacheFs, Served};

/// `--holder`: who keeps the mount while no process serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolderKind {
    /// A holder process the mount starts (or finds) at --holder-socket.
    Process,
    /// A holder run beside the mount (the Kubernetes DaemonSet's): the
    /// mount never starts one, and SIGTERM leaves the mount to it.
    External,
    /// The systemd service's file-descriptor store.
    Systemd,
    /// Nobody: a crash leaves a dead mount point.
    None,
}

impl std::str::FromStr for HolderKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "process" => Ok(Self::Process),
            "external" => Ok(Self::External),
            "systemd" => Ok(Self::Systemd),
            "none" => Ok(Self::None),
            other => Err(format!(
                "{other:?} is not one of: process, external, systemd, none"
            )),
        }
    }
}

/// The holder of a mount point, as `dfcache mount` was told.
pub struct Holder {
    pub kind: HolderKind,
    socket: PathBuf,
    /// How long a holder process this mount starts keeps an unserved mount.
    orphan_timeout: Duration,
}

/// The default socket of the holder of `mountpoint`: one per mount point,
/// in the user's runtime directory.
pub fn default_socket(mountpoint: &Path) -> PathBuf {
    let canonical = resolved(mountpoint);
    // FNV-1a: a name per mount point, short enough for a socket path.
    let hash = canonical
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
        });
    runtime_dir().join(format!("holder-{hash:016x}.sock"))
}

fn runtime_dir() -> PathBuf {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    if uid == 0 {
        return PathBuf::from("/run/dfcache");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("dfcache"),
        _ => PathBuf::from(format!("/tmp/dfcache-{uid}")),
    }
}

impl Holder {
    pub fn new(
        kind: HolderKind,
        socket: Option<PathBuf>,
        mountpoint: &Path,
        orphan_timeout: Duration,
    ) -> Self {
        Holder {
            kind,
            socket: socket.unwrap_or_else(|| default_socket(mountpoint)),
            orphan_timeout,
        }
    }

    fn client(&self) -> HolderClient {
        HolderClient::new(self.socket.clone())
    }

    /// What the holder keeps for this mount point, taken over (with
    /// `takeover`, from a live process, which hands it over first). None:
    /// nothing to take over, and the log says why.
    pub fn take(
        &self,
        mountpoint: &Path,
        takeover: Option<Duration>,
    ) -> anyhow::Result<Option<(Held, Option<ServerLink>)>> {
        let taken = match self.kind {
            HolderKind::None => {
                if takeover.is_some() {
                    bail!("--takeover needs a holder (--holder none was given)");
                }
                return Ok(None);
            }
            HolderKind::Systemd => {
                if std::env::var_os("NOTIFY_SOCKET").is_none() {
                    bail!("--holder systemd, but $NOTIFY_SOCKET is not set: run it as a systemd service with Type=notify and FileDescriptorStoreMax=2 or more (deploy/systemd/dfcache-mount.service)");
                }
                if takeover.is_some() {
                    bail!("with --holder systemd, `systemctl restart` replaces the process (--takeover is for the other holders)");
                }
                return Ok(match systemd::listened() {
                    Some(held) => Some((held, None)),
                    None => {
                        info!(mountpoint = %mountpoint.display(), "no takeover: systemd passed no mount from its store (the first start of the service, or it was stopped): mounting anew");
                        None
                    }
                });
            }
            HolderKind::Process | HolderKind::External => self.client().take(takeover)?,
        };
        match taken {
            Taken::Held {
                held,
                mountpoint: held_at,
                link,
            } => {
                if same_place(&held_at, mountpoint) {
                    Ok(Some((held, Some(link))))
                } else {
                    bail!(
                        "the holder at {} keeps the mount at {}, not {}: give each mount point its own --holder-socket",
                        self.socket.display(),
                        held_at.display(),
                        mountpoint.display()
                    )
                }
            }
            Taken::Nothing(why) => {
                info!(mountpoint = %mountpoint.display(), "no takeover: {why}: mounting anew");
                Ok(None)
            }
            Taken::Busy(pid) => bail!(
                "{} is served by a live dfcache mount (pid {pid}): stop it first, or start this one with --takeover to replace it with no error to programs",
                mountpoint.display()
            ),
        }
    }

    /// Starts a holder process at the socket unless one answers there.
    fn start_process(&self) -> anyhow::Result<()> {
        let client = self.client();
        if client.answers() {
            return Ok(());
        }
        let mut command = std::process::Command::new("/proc/self/exe");
        command
            .arg("mount-holder")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--takeover-wait")
            .arg(format!("{}ms", self.orphan_timeout.as_millis()))
            .arg("--idle-timeout")
            .arg("30s")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        // SAFETY: setsid is async-signal-safe. In a session of its own, a
        // signal to the mount's process group (Ctrl-C, a kill of the
        // group) does not reach the holder.
        unsafe {
            command.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .context("cannot start the mount's holder process")?;
        // Reaped if it exits while this process runs (it outlives it
        // otherwise, which is its point).
        std::thread::spawn(move || child.wait());
        if !client.wait_answering(Duration::from_secs(10)) {
            bail!(
                "the holder started at {} did not answer",
                self.socket.display()
            );
        }
        Ok(())
    }

    /// Hands a new mount to the holder, and keeps it held while this
    /// process serves: a holder that goes away is started again (process)
    /// or waited for (external), and given the mount again. Handover
    /// requests come out of the returned channel.
    pub fn keep(
        self: &Arc<Self>,
        held: Held,
        mountpoint: &Path,
        link: Option<ServerLink>,
    ) -> anyhow::Result<Keeping> {
        let (tx, rx) = mpsc::unbounded_channel();
        let keeping = Keeping {
            link: Arc::new(Mutex::new(None)),
            systemd: self.kind == HolderKind::Systemd,
            ending: Arc::new(AtomicBool::new(false)),
            handovers: rx,
        };
        match self.kind {
            HolderKind::None => {}
            HolderKind::Systemd => {
                systemd::store(&held)?;
                info!("the mount's connection is in systemd's file-descriptor store");
            }
            HolderKind::Process | HolderKind::External => {
                let holder = self.clone();
                let slot = keeping.link.clone();
                let ending = keeping.ending.clone();
                let mountpoint = mountpoint.to_path_buf();
                // A holder that cannot take the mount now is tried again
                // every second (an external one may not be up yet).
                let first = match (link, self.kind) {
                    (Some(link), _) => Some(link),
                    (None, HolderKind::Process) => self.hold(&held, &mountpoint).ok(),
                    (None, _) => None,
                }
                .map(Arc::new);
                // Held from now on, before any signal is looked at.
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = first.clone();
                std::thread::Builder::new()
                    .name("holder-link".into())
                    .spawn(move || holder.keep_held(held, mountpoint, first, slot, ending, tx))
                    .context("cannot start the holder link")?;
            }
        }
        Ok(keeping)
    }

    fn hold(&self, held: &Held, mountpoint: &Path) -> anyhow::Result<ServerLink> {
        if self.kind == HolderKind::Process {
            self.start_process()?;
        }
        let link = self.client().hold(held, mountpoint)?;
        info!(holder = link.holder_pid, socket = %self.socket.display(), "the mount's connection is held for the next process");
        Ok(link)
    }

    fn keep_held(
        &self,
        held: Held,
        mountpoint: PathBuf,
        mut link: Option<Arc<ServerLink>>,
        slot: Arc<Mutex<Option<Arc<ServerLink>>>>,
        ending: Arc<AtomicBool>,
        tx: mpsc::UnboundedSender<Duration>,
    ) {
        let mut waiting_logged = false;
        loop {
            // Unmounted or handed over: nothing to hold any more.
            if ending.load(Ordering::Acquire) || is_gone(held.fuse.as_fd()) {
                return;
            }
            let current = match link.take() {
                Some(l) => l,
                None => match self.hold(&held, &mountpoint) {
                    Ok(l) => Arc::new(l),
                    Err(e) => {
                        if !waiting_logged {
                            warn!(error = %format!("{e:#}"), "no holder keeps the mount yet: a crash of this process now leaves a dead mount point; trying again every second");
                            waiting_logged = true;
                        }
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                },
            };
            waiting_logged = false;
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(current.clone());
            while let LinkEvent::Handover(within) = current.next_event() {
                if tx.send(within).is_err() {
                    return;
                }
            }
            slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            // The holder lets go once the mount is unmounted.
            if ending.load(Ordering::Acquire) || is_gone(held.fuse.as_fd()) {
                return;
            }
            warn!(socket = %self.socket.display(), "the mount's holder went away; giving the mount to a new one");
        }
    }
}

fn same_place(a: &Path, b: &Path) -> bool {
    resolved(a) == resolved(b)
}

/// `path` with its parent resolved (symlinks, `..`), but not itself: a
/// mount held for this process answers nothing until it serves it.
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map(|p| p.join(name))
            .unwrap_or(absolute),
        _ => absolute,
    }
}

/// A mount kept by its holder while this process serves it.
pub struct Keeping {
    link: Arc<Mutex<Option<Arc<ServerLink>>>>,
    /// Kept in systemd's file-descriptor store.
    systemd: bool,
    /// Set once this process stops serving: the holder is not replaced.
    ending: Arc<AtomicBool>,
    /// Handover requests (with their deadline), from `--takeover`.
    pub handovers: mpsc::UnboundedReceiver<Duration>,
}

impl Keeping {
    fn link(&self) -> Option<Arc<ServerLink>> {
        self.link.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether a holder holds the mount now (systemd's store always does,
    /// once given it).
    pub fn is_held(&self) -> bool {
        self.systemd || self.link().is_some()
    }

    /// This process is about to stop serving: a holder that goes away
    /// from now on is not replaced.
    pub fn ending(&self) {
        self.ending.store(true, Ordering::Release);
    }

    /// Unmounted for good: the holder lets go.
    pub fn release(&self, kind: HolderKind) {
        self.ending();
        match kind {
            HolderKind::Systemd => {
                if let Err(e) = systemd::forget() {
                    warn!(error = %e, "cannot remove the mount from systemd's store");
                }
            }
            _ => {
                if let Some(link) = self.link() {
                    let _ = link.release();
                }
            }
        }
    }

    /// Handed over: the holder gives the mount to the waiting process.
    pub fn handed(&self) {
        self.ending.store(true, Ordering::Release);
        if let Some(link) = self.link() {
            let _ = link.handed();
        }
    }
}

/// Steps down without unmounting: lets imports being written finish
/// (holding back new ones), then every request, waits for those under way
/// to answer, all within `within`. Requests held back are resent by the
/// kernel to the next process. The state journal is complete when this
/// returns.
pub async fn step_down(fs: &DfcacheFs, served: &Served, within: Duration) {
    let deadline = Instant::now() + within;
    served.gate.hold_imports();
    let writing = fs.imports_being_written();
    if writing > 0 {
        info!(
            imports = writing,
            "stepping down: waiting for the imports being written to close (new ones wait)"
        );
    }
    if !until(deadline, || fs.imports_being_written() == 0).await {
        warn!(
            imports = fs.imports_being_written(),
            "imports still being written when the time to hand over ran out: they fail (EIO) at their next write or close"
        );
    }
    served.gate.close();
    if !served.gate.drained(deadline).await {
        warn!(
            requests = served.gate.in_progress(),
            "requests still under way when the time to hand over ran out: the kernel resends them to the next process"
        );
    }
    info!("stepped down: the next dfcache mount at this mount point serves it");
}
