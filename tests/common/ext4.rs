//! A small ext4 image on a loop device, for power-loss tests: shut down
//! without flushing its journal (`FS_IOC_GOINGDOWN`), as a power cut would,
//! then remounted. Needs root and loop devices.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::succeeded;

/// `FS_IOC_GOINGDOWN` = `_IOR('X', 125, __u32)`: direction read (2) << 30,
/// size 4 << 16, type 'X' << 8, number 125.
const FS_IOC_GOINGDOWN: libc::c_ulong =
    (2 << 30) | (4 << 16) | ((b'X' as libc::c_ulong) << 8) | 125;
/// Shut down without flushing the journal: what was not committed is lost.
const FS_GOING_DOWN_NOLOGFLUSH: u32 = 2;

/// An ext4 image mounted on a loop device; unmounted on drop, also when
/// the test fails.
pub struct Ext4 {
    image: PathBuf,
    pub mount: PathBuf,
    mounted: bool,
}

impl Ext4 {
    pub fn create(root: &Path) -> Ext4 {
        let image = root.join("ext4.img");
        let mount = root.join("mnt");
        std::fs::create_dir_all(&mount).unwrap();
        run(Command::new("truncate").args(["-s", "64M"]).arg(&image));
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
        let mut fs = Ext4 {
            image,
            mount,
            mounted: false,
        };
        fs.mount();
        fs
    }

    pub fn mount(&mut self) {
        run(Command::new("mount")
            .args(["-t", "ext4", "-o", "loop"])
            .arg(&self.image)
            .arg(&self.mount));
        self.mounted = true;
    }

    /// Unmounts, and waits until the loop device under the image is gone:
    /// a remount while the old (shut down) one lingers could meet the old
    /// file system's state (seen as EIO on a loaded machine).
    pub fn unmount(&mut self) {
        // A process killed a moment ago may still hold a file here until
        // the kernel has torn it down ("target is busy", 1 run in 5-8 on a
        // loaded machine): try again until it lets go.
        super::eventually("the image to unmount", 20, || {
            Command::new("umount")
                .arg(&self.mount)
                .output()
                .is_ok_and(|out| out.status.success())
        });
        self.mounted = false;
        super::eventually("the image's loop device to detach", 20, || {
            Command::new("losetup")
                .arg("-j")
                .arg(&self.image)
                .output()
                .is_ok_and(|out| out.status.success() && out.stdout.is_empty())
        });
    }

    /// The power cut: nothing after the journal's last commit survives.
    pub fn go_down_without_flushing(&self) {
        let dir = std::fs::File::open(&self.mount).unwrap();
        let flag = FS_GOING_DOWN_NOLOGFLUSH;
        // SAFETY: the ioctl reads a u32 from the pointer we pass, which
        // lives until the call returns.
        let rc = unsafe { libc::ioctl(dir.as_raw_fd(), FS_IOC_GOINGDOWN as _, &flag) };
        assert_eq!(
            rc,
            0,
            "FS_IOC_GOINGDOWN: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.mount).status();
        }
    }
}

pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    succeeded(&out, format!("{cmd:?}"));
}
