//! Mounting: stale-mount recovery, fuser session options, and the sysfs
//! read-ahead lever (1 MiB requests, 1.7-3x faster: docs/ARCHITECTURE.md).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};
use tracing::{debug, info, warn};

use crate::filesystem::DfcacheFs;
use crate::fuse::FuseAdapter;
use crate::read::drop_behind::PageCache;

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
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{0} is not a directory")]
    NotADirectory(std::path::PathBuf),
    #[error("{0} is already a live dfcache mount (unmount it first)")]
    AlreadyMounted(std::path::PathBuf),
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
}

/// Mounts `fs` at `mountpoint`; requests run on `rt`. The mount goes away
/// when the returned session is unmounted or dropped.
pub fn mount(
    fs: Arc<DfcacheFs>,
    mountpoint: &Path,
    settings: &MountSettings,
    rt: tokio::runtime::Handle,
) -> Result<BackgroundSession, MountError> {
    clear_stale_mount(mountpoint)?;
    if !mountpoint.is_dir() {
        return Err(MountError::NotADirectory(mountpoint.to_path_buf()));
    }
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
    config.clone_fd = settings.threads > 1;
    let session = fuser::spawn_mount(
        FuseAdapter::new(fs.clone(), rt, settings.passthrough),
        mountpoint,
        &config,
    )
    .map_err(|source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied && !dev_fuse_opens() {
            return MountError::DevFuseClosed {
                path: mountpoint.to_path_buf(),
            };
        }
        MountError::Mount {
            path: mountpoint.to_path_buf(),
            source,
        }
    })?;
    fs.attach_page_cache(Arc::new(KernelPageCache(session.notifier())));
    if settings.kernel_read_ahead_kb > 0 {
        raise_read_ahead(mountpoint, settings.kernel_read_ahead_kb);
    }
    info!(mountpoint = %mountpoint.display(), "mounted");
    Ok(session)
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
    match statfs(mountpoint) {
        Err(e)
            if e.raw_os_error() == Some(libc::ENOTCONN)
                || e.raw_os_error() == Some(libc::ECONNABORTED) =>
        {
            warn!(mountpoint = %mountpoint.display(), "replacing a dead mount left by a crashed dfcache");
            detach(mountpoint).map_err(|source| MountError::Mount {
                path: mountpoint.to_path_buf(),
                source,
            })
        }
        _ => Err(MountError::AlreadyMounted(mountpoint.to_path_buf())),
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
