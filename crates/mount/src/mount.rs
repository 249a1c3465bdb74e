//! Mounting: stale-mount recovery, fuser session options, taking over a
//! mount an earlier process served, and the sysfs read-ahead lever (1 MiB
//! requests, 1.7-3x faster: docs/ARCHITECTURE.md).

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{BackgroundSession, Config, MountOption, Session, SessionACL};
use tracing::{debug, info, warn};

use crate::filesystem::DfcacheFs;
use crate::fuse::FuseAdapter;
use crate::read::drop_behind::PageCache;
use crate::takeover::connection::{self, Held, Negotiated, RESEND_MINOR};
use crate::takeover::gate::Gate;
use crate::takeover::journal::{Journal, JournalError};

/// How the kernel side of the mount is set up.
#[derive(Debug, Clone)]
pub struct MountSettings {
    /// Let other users use the mount (needs user_allow_other in
    /// /etc/fuse.conf for a mount by a user other than root); the kernel
    /// then checks the entries' modes (default_permissions).
    pub allow_other: bool,
    /// Kernel read-ahead for the mount, in KiB (0 leaves the default).
    pub kernel_read_ahead_kb: u32,
    /// Threads reading /dev/fuse.
    pub threads: usize,
    /// Whether opens may pass through to local task files.
    pub passthrough: crate::passthrough::PassthroughMode,
    /// A holder keeps the connection for the next process: the state
    /// journal is kept, and every thread reads the one descriptor the
    /// holder shares (a cloned descriptor's unanswered requests are failed
    /// when it closes with its process, instead of waiting to be resent).
    pub hand_over: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{0} is not a directory")]
    NotADirectory(std::path::PathBuf),
    #[error(
        "{0} is already a live dfcache mount (unmount it first, or start the new mount with \
         --takeover to replace its process)"
    )]
    AlreadyMounted(std::path::PathBuf),
    #[error(
        "{0} is a FUSE mount that does not answer (a process holds its connection but none \
         serves it: its holder, or a frozen dfcache); unmount it (umount -l) or stop that process"
    )]
    Unanswered(std::path::PathBuf),
    #[error(
        "mount {path}: this user cannot open /dev/fuse: a mount by a user other than root \
         goes through fusermount3 but opens /dev/fuse first, so it must be mode 0666 (as \
         the kernel creates it; a container may have made it 0600: chmod 0666 /dev/fuse)"
    )]
    DevFuseClosed { path: std::path::PathBuf },
    // The cause is the source: the CLI prints the chain ("mount P: cause").
    #[error("mount {path}")]
    Mount {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("take over the mount at {path}")]
    Takeover {
        path: std::path::PathBuf,
        #[source]
        source: JournalError,
    },
}

/// A mount being served by this process.
pub struct Served {
    pub session: BackgroundSession,
    /// Every request passes it (a process handing over closes it).
    pub gate: Arc<Gate>,
    /// The connection and the state journal, shared, for a holder (when
    /// `hand_over`).
    pub held: Option<Held>,
    /// Whether an earlier process answered FUSE_INIT.
    pub adopted: bool,
}

impl Served {
    /// Unmounts for good (also when an earlier process made the mount)
    /// and waits for the request loop to end.
    pub fn unmount(self, mountpoint: &Path) -> std::io::Result<()> {
        unmount(mountpoint)?;
        self.session.join()
    }
}

fn session_config(settings: &MountSettings) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("dfcache".into()),
        MountOption::Subtype("dfcache".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    // Without allow_other the kernel lets only the mounting user in, and
    // the modes are for show; with it, they are what keeps other users
    // out, so the kernel must check them.
    if settings.allow_other {
        config.mount_options.push(MountOption::DefaultPermissions);
    }
    config.acl = if settings.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(settings.threads.max(1));
    config.clone_fd = settings.threads > 1 && !settings.hand_over;
    config
}

/// Mounts `fs` at `mountpoint`; requests run on `rt`. The mount goes away
/// when the returned session is unmounted (or, without a holder, dropped).
pub fn mount(
    fs: Arc<DfcacheFs>,
    mountpoint: &Path,
    settings: &MountSettings,
    rt: tokio::runtime::Handle,
) -> Result<Served, MountError> {
    clear_stale_mount(mountpoint)?;
    if !mountpoint.is_dir() {
        return Err(MountError::NotADirectory(mountpoint.to_path_buf()));
    }
    let config = session_config(settings);
    let mount_error = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::PermissionDenied && !dev_fuse_opens() {
            return MountError::DevFuseClosed {
                path: mountpoint.to_path_buf(),
            };
        }
        MountError::Mount {
            path: mountpoint.to_path_buf(),
            source,
        }
    };
    let journal = match settings.hand_over {
        true => {
            let journal = Arc::new(Journal::create().map_err(|e| MountError::Takeover {
                path: mountpoint.to_path_buf(),
                source: e,
            })?);
            fs.attach_journal(journal.clone());
            Some(journal)
        }
        false => None,
    };
    let gate = Arc::new(Gate::default());
    let adapter = FuseAdapter::new(fs.clone(), rt, settings.passthrough, gate.clone());
    let negotiated = adapter.negotiated();
    let session = Session::new(adapter, mountpoint, &config).map_err(mount_error)?;
    let negotiated = negotiated.get().copied().unwrap_or_default();
    fs.state_log()
        .connection(negotiated.minor, negotiated.passthrough, 0);
    let held = match journal {
        Some(journal) => Some(Held {
            fuse: connection::share(session.as_fd()).map_err(mount_error)?,
            state: journal.fd().try_clone_to_owned().map_err(mount_error)?,
        }),
        None => None,
    };
    let session = session.spawn().map_err(mount_error)?;
    fs.attach_page_cache(Arc::new(KernelPageCache(session.notifier())));
    if settings.kernel_read_ahead_kb > 0 {
        raise_read_ahead(mountpoint, settings.kernel_read_ahead_kb);
    }
    info!(mountpoint = %mountpoint.display(), "mounted");
    Ok(Served {
        session,
        gate,
        held,
        adopted: false,
    })
}

/// Serves the mount at `mountpoint` on a connection an earlier process
/// served (`held`, from its holder): restores the names the kernel holds
/// from the state journal, has the kernel resend the requests that process
/// left unanswered, and serves. `fs` must not have served anything yet.
pub fn adopt(
    fs: Arc<DfcacheFs>,
    held: Held,
    mountpoint: &Path,
    settings: &MountSettings,
    rt: tokio::runtime::Handle,
) -> Result<Served, MountError> {
    let takeover_error = |source: JournalError| MountError::Takeover {
        path: mountpoint.to_path_buf(),
        source,
    };
    let (journal, records) = Journal::open(held.state).map_err(takeover_error)?;
    let journal = Arc::new(journal);
    fs.attach_journal(journal.clone());
    let restored = fs.restore(records);
    let negotiated = match &restored.connection {
        Some(c) => Negotiated {
            minor: c.minor,
            passthrough: c.passthrough,
        },
        None => {
            warn!("the state journal does not say what the connection negotiated; assuming no passthrough");
            Negotiated::default()
        }
    };
    let gate = Arc::new(Gate::default());
    let adapter = FuseAdapter::adopted(
        fs.clone(),
        rt,
        settings.passthrough,
        gate.clone(),
        negotiated,
    );
    let passthrough = adapter.passthrough();
    let shared = connection::share(held.fuse.as_fd()).map_err(|source| MountError::Mount {
        path: mountpoint.to_path_buf(),
        source,
    })?;
    let session = Session::from_initialized_fd(
        adapter,
        held.fuse,
        session_config(settings).acl,
        session_config(settings),
    );
    if let Some(passthrough) = passthrough {
        passthrough.restore(
            &restored.opens,
            &session.notifier(),
            |ino| fs.task_of(ino),
            fs.local_content(),
        );
    }
    if negotiated.minor >= RESEND_MINOR {
        match connection::resend_unanswered(shared.as_fd()) {
            Ok(()) => info!("asked the kernel to resend the requests left unanswered"),
            Err(e) => {
                warn!(error = %e, "the kernel refused FUSE_NOTIFY_RESEND: requests the previous process read and did not answer wait until the mount is unmounted")
            }
        }
    } else {
        warn!(
            minor = negotiated.minor,
            "this kernel cannot resend requests (FUSE 7.40, Linux 6.9): requests the previous process read and did not answer wait until the mount is unmounted"
        );
    }
    let session = session.spawn().map_err(|source| MountError::Mount {
        path: mountpoint.to_path_buf(),
        source,
    })?;
    fs.attach_page_cache(Arc::new(KernelPageCache(session.notifier())));
    if settings.kernel_read_ahead_kb > 0 {
        raise_read_ahead(mountpoint, settings.kernel_read_ahead_kb);
    }
    info!(mountpoint = %mountpoint.display(), generation = restored.generation, "took the mount over");
    Ok(Served {
        session,
        gate,
        held: Some(Held {
            fuse: shared,
            state: journal
                .fd()
                .try_clone_to_owned()
                .map_err(|source| MountError::Mount {
                    path: mountpoint.to_path_buf(),
                    source,
                })?,
        }),
        adopted: true,
    })
}

/// The kernel's page cache of the mount, reached by FUSE notifications.
struct KernelPageCache(fuser::Notifier);

impl PageCache for KernelPageCache {
    fn drop_range(&self, ino: u64, offset: u64, len: u64) {
        let (offset, len) = (offset as i64, len.min(i64::MAX as u64) as i64);
        if let Err(e) = self.0.inval_inode(fuser::INodeNo(ino), offset, len) {
            // ENOENT: the kernel forgot the inode, and its pages with it.
            debug!(ino, offset, len, error = %e, "dropping cached pages failed");
        }
    }
}

/// Whether this process may open /dev/fuse, which fuser does before it
/// falls back to fusermount3 (the kernel refuses the mount itself to a
/// user other than root).
fn dev_fuse_opens() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok()
}

/// A dfcache that crashed leaves a mount whose every access fails with
/// ENOTCONN: detach it so the new mount can take its place. A live mount
/// is left alone and refused.
pub fn clear_stale_mount(mountpoint: &Path) -> Result<(), MountError> {
    if !is_fuse_mount(mountpoint) {
        return Ok(());
    }
    // statfs always reaches the file system (stat may be answered from the
    // kernel's attribute cache even when the process behind it is gone).
    // A connection that someone holds but nobody serves never answers.
    match statfs_within(mountpoint, STALE_CHECK) {
        Some(Err(e))
            if e.raw_os_error() == Some(libc::ENOTCONN)
                || e.raw_os_error() == Some(libc::ECONNABORTED) =>
        {
            warn!(mountpoint = %mountpoint.display(), "replacing a dead mount left by a crashed dfcache");
            detach(mountpoint).map_err(|source| MountError::Mount {
                path: mountpoint.to_path_buf(),
                source,
            })
        }
        None => Err(MountError::Unanswered(mountpoint.to_path_buf())),
        Some(_) => Err(MountError::AlreadyMounted(mountpoint.to_path_buf())),
    }
}

/// How long a mount at the mount point has to answer statfs before it is
/// taken for one that nobody serves.
const STALE_CHECK: Duration = Duration::from_secs(3);

/// statfs of `path`, or None when it has not answered within `limit` (the
/// thread asking is left behind, blocked until the mount answers or goes).
fn statfs_within(path: &Path, limit: Duration) -> Option<std::io::Result<()>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("statfs".into())
        .spawn(move || {
            let _ = tx.send(statfs(&path));
        })
        .ok()?;
    rx.recv_timeout(limit).ok()
}

/// Unmounts `mountpoint` (fusermount3 -u for a user other than root), as
/// fuser's own unmount does, but for a mount this process may not have
/// made.
pub fn unmount(mountpoint: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path =
        std::ffi::CString::new(mountpoint.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: `path` is a valid NUL-terminated string for the call's duration.
    if unsafe { libc::umount(path.as_ptr()) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EPERM) {
        return Err(err);
    }
    let out = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(mountpoint)
        .stdin(std::process::Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "fusermount3 -u: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn statfs(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c` is NUL-terminated and `buf` is large enough for statfs.
    let rc = unsafe { libc::statfs(c.as_ptr(), buf.as_mut_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Lazy unmount (MNT_DETACH), as `umount -l` does.
pub fn detach(mountpoint: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path =
        std::ffi::CString::new(mountpoint.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: `path` is a valid NUL-terminated string for the call's duration.
    let rc = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        return Ok(());
    }
    // Not root: fusermount3 can detach mounts the user owns.
    let status = std::process::Command::new("fusermount3")
        .arg("-uz")
        .arg(mountpoint)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether /proc/self/mountinfo lists a FUSE mount at `mountpoint`.
fn is_fuse_mount(mountpoint: &Path) -> bool {
    let Ok(target) = std::path::absolute(mountpoint) else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let fstype = fields
            .iter()
            .position(|f| *f == "-")
            .and_then(|i| fields.get(i + 1));
        fields
            .get(4)
            .is_some_and(|mp| unescape(mp) == target.to_string_lossy())
            && fstype.is_some_and(|t| t.starts_with("fuse"))
    })
}

/// mountinfo escapes spaces and a few others as \ooo.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Writes the mount's read-ahead into /sys/class/bdi/<major:minor>/: FUSE
/// cannot raise it past 128 KiB itself.
fn raise_read_ahead(mountpoint: &Path, kb: u32) {
    let dev = match std::fs::metadata(mountpoint) {
        Ok(m) => m.dev(),
        Err(e) => {
            warn!(error = %e, "cannot stat the mount to raise read-ahead");
            return;
        }
    };
    let bdi = format!(
        "class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    let path = format!("/sys/{bdi}");
    match std::fs::write(&path, kb.to_string()) {
        Ok(()) => info!(path, kb, "raised kernel read-ahead"),
        // A container's /sys is read-only even when it is privileged: a
        // sysfs of its own, mounted privately, is writable.
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => match write_in_private_sysfs(&bdi, kb) {
            Ok(()) => info!(
                path,
                kb, "raised kernel read-ahead through a private sysfs (/sys is read-only here)"
            ),
            Err(private) => warn!(
                path,
                error = %private,
                "cannot raise kernel read-ahead: /sys is read-only here and mounting a sysfs of \
                 our own needs CAP_SYS_ADMIN; reads stay at 128 KiB"
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            warn!(path, error = %e, "cannot raise kernel read-ahead (writing it needs root); reads stay at 128 KiB")
        }
        Err(e) => warn!(path, error = %e, "cannot raise kernel read-ahead; reads stay at 128 KiB"),
    }
}

/// Mounts a sysfs at a directory of this process's own, writes `kb` to
/// `bdi` in it, and detaches it again.
fn write_in_private_sysfs(bdi: &str, kb: u32) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let dir = std::env::temp_dir().join(format!("dfcache-sysfs-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let c_dir =
        std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: every string is NUL-terminated and outlives the call.
    let rc = unsafe {
        libc::mount(
            c"sysfs".as_ptr(),
            c_dir.as_ptr(),
            c"sysfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    let written = if rc == 0 {
        let written = std::fs::write(dir.join(bdi), kb.to_string());
        // SAFETY: as above.
        unsafe { libc::umount2(c_dir.as_ptr(), libc::MNT_DETACH) };
        written
    } else {
        Err(std::io::Error::last_os_error())
    };
    let _ = std::fs::remove_dir(&dir);
    written
}
