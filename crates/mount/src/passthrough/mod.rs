//! FUSE passthrough (Linux 6.9+): when a task's content is a complete file
//! on this machine, `open()` of `tasks/<id>` hands that file to the kernel,
//! and reads, mmap and read-ahead go straight to it, never through the
//! mount.
//!
//! Where such a file comes from (`LocalContent`):
//! - the embedded daemon's store: the task's content file;
//! - a released dfdaemon: a finished whole-task download, which the daemon
//!   hard-linked into the spool (`task_files`).
//!
//! A daemon elsewhere (another machine or namespace, no shared file
//! system) has no such file: its reads go through the mount as before.
//! What applies is decided once at start and logged with its reason
//! (`Decision`); a kernel that refuses the first backing file turns it off
//! for the rest of the mount, also logged.
//!
//! - `io_modes.rs`: the kernel's rule that an inode is open either through
//!   the mount or through one backing file, never both at once.

pub mod io_modes;
pub mod kernel;

use std::fs::File;
use std::sync::Arc;

pub use io_modes::IoModes;

/// `--passthrough`: whether the mount may hand files to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassthroughMode {
    /// Every read goes through the mount.
    Never,
    /// Passthrough where the content is local and the kernel allows it.
    Auto,
}

impl std::str::FromStr for PassthroughMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "never" => Ok(Self::Never),
            "auto" => Ok(Self::Auto),
            other => Err(format!("{other:?} is not one of: never, auto")),
        }
    }
}

/// A complete local file holding a task's content, and whatever must live
/// as long as it is read (the store's read lease, which keeps GC away).
pub struct LocalFile {
    pub file: Arc<File>,
    _hold: Option<Box<dyn Send + Sync>>,
}

impl LocalFile {
    pub fn new(file: Arc<File>, hold: Option<Box<dyn Send + Sync>>) -> Self {
        Self { file, _hold: hold }
    }
}

/// A source of local task files, asked at each open (it must not wait).
pub trait LocalContent: Send + Sync {
    /// The task's complete content file, if it is on this machine.
    fn open(&self, task_id: &str) -> Option<LocalFile>;
}

/// Whether the mount uses passthrough, and why (logged once at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    On(&'static str),
    Off(String),
}

impl Decision {
    /// What start-up knows: the flag, the privilege the kernel requires to
    /// register backing files (CAP_SYS_ADMIN), and whether any content can
    /// be local. The kernel's own support is asked at FUSE init.
    pub fn at_start(mode: PassthroughMode, local_source: Option<&'static str>) -> Decision {
        match (mode, local_source) {
            (PassthroughMode::Never, _) => Decision::Off("--passthrough never".into()),
            (PassthroughMode::Auto, None) => Decision::Off(
                "the daemon's content is not on this machine (no --embedded store, no --spool): \
                 reads go through the mount"
                    .into(),
            ),
            (PassthroughMode::Auto, Some(_)) if !has_cap_sys_admin() => Decision::Off(
                "the kernel registers backing files only for CAP_SYS_ADMIN, which this mount \
                 lacks (an unprivileged mount): reads go through the mount"
                    .into(),
            ),
            (PassthroughMode::Auto, Some(source)) => Decision::On(source),
        }
    }

    pub fn is_on(&self) -> bool {
        matches!(self, Decision::On(_))
    }
}

/// CAP_SYS_ADMIN (bit 21) in this process's effective capabilities.
fn has_cap_sys_admin() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passthrough_is_off_when_asked_or_when_no_content_is_local() {
        assert_eq!(
            Decision::at_start(PassthroughMode::Never, Some("store")),
            Decision::Off("--passthrough never".into())
        );
        assert!(!Decision::at_start(PassthroughMode::Auto, None).is_on());
        assert_eq!("auto".parse(), Ok(PassthroughMode::Auto));
        assert!("always".parse::<PassthroughMode>().is_err());
    }
}
