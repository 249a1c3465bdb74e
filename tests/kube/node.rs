//! A node's file system under a test directory: the node's paths
//! (`/var/lib/dfcache`, `/var/lib/kubelet/pods`, ...) live under it, and it
//! is a shared mount, as `/` is on a systemd node, so mounts made in pods
//! with Bidirectional propagation reach the node and the pods that see it
//! with HostToContainer (../shared/LIMITS.md). Every mount under it is
//! detached when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::csi::mounts_below;
use crate::common::succeeded;

pub struct NodeRoot {
    pub dir: PathBuf,
}

impl NodeRoot {
    pub fn new(dir: &Path) -> NodeRoot {
        for d in [
            "var/run/dragonfly",
            "var/lib/dfcache",
            "var/lib/kubelet/pods",
            "var/lib/kubelet/plugins_registry",
        ] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let node = NodeRoot {
            dir: dir.to_path_buf(),
        };
        let bind = Command::new("mount")
            .arg("--bind")
            .arg(dir)
            .arg(dir)
            .output()
            .unwrap();
        succeeded(&bind, format_args!("mount --bind {}", dir.display()));
        let shared = Command::new("mount")
            .arg("--make-rshared")
            .arg(dir)
            .output()
            .unwrap();
        succeeded(
            &shared,
            format_args!("mount --make-rshared {}", dir.display()),
        );
        node
    }

    /// Where the node's `path` (absolute) is.
    pub fn host(&self, path: &str) -> PathBuf {
        self.dir.join(path.trim_start_matches('/'))
    }
}

impl Drop for NodeRoot {
    fn drop(&mut self) {
        for mount in mounts_below(&self.dir).iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(mount).status();
        }
    }
}
