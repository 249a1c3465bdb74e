//! Power loss: the store's file system (a small ext4 image on a loop
//! device) is shut down without flushing its journal right after an
//! operation returns, as a power cut would; after a remount (journal
//! replay) every operation that returned success must be there: an import
//! byte-exact, a delete gone, an export complete. Needs root and loop
//! devices, as the FUSE tests need root.

mod common;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

/// `FS_IOC_GOINGDOWN` = `_IOR('X', 125, __u32)`: direction read (2) << 30,
/// size 4 << 16, type 'X' << 8, number 125.
const FS_IOC_GOINGDOWN: libc::c_ulong =
    (2 << 30) | (4 << 16) | ((b'X' as libc::c_ulong) << 8) | 125;
/// Shut down without flushing the journal: what was not committed is lost.
const FS_GOING_DOWN_NOLOGFLUSH: u32 = 2;

/// An ext4 image mounted on a loop device; unmounted on drop, also when
/// the test fails.
struct Ext4 {
    image: PathBuf,
    mount: PathBuf,
    mounted: bool,
}

impl Ext4 {
    fn create(root: &Path) -> Ext4 {
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

    fn mount(&mut self) {
        run(Command::new("mount")
            .args(["-t", "ext4", "-o", "loop"])
            .arg(&self.image)
            .arg(&self.mount));
        self.mounted = true;
    }

    fn unmount(&mut self) {
        run(Command::new("umount").arg(&self.mount));
        self.mounted = false;
    }

    /// The power cut: nothing after the journal's last commit survives.
    fn go_down_without_flushing(&self) {
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

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    succeeded(&out, format!("{cmd:?}"));
}

/// `dfcache serve` with its store on the image and its socket outside it.
fn serve(root: &Path, fs: &Ext4) -> Daemon {
    let socket = root.join("d.sock");
    let dir = fs.mount.join("store");
    let child = Command::new(bin())
        .args(["serve", "--socket"])
        .arg(&socket)
        .arg("--dir")
        .arg(&dir)
        .env("DFCACHE_LOG_LEVEL", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let daemon = Daemon { child, socket, dir };
    eventually("the daemon to listen", 20, || {
        std::os::unix::net::UnixStream::connect(&daemon.socket).is_ok()
    });
    daemon
}

/// Cuts the power on `daemon`'s file system, kills it, and remounts.
fn power_cycle(mut daemon: Daemon, fs: &mut Ext4) {
    fs.go_down_without_flushing();
    daemon.kill();
    drop(daemon);
    fs.unmount();
    fs.mount();
}

#[test]
fn an_import_and_then_a_delete_survive_a_power_loss() {
    let root = tempdir();
    let mut fs = Ext4::create(root.path());
    let daemon = serve(root.path(), &fs);
    let doomed = root.path().join("doomed");
    write_file(&doomed, 3 * MIB, 1);
    let doomed_id = daemon.ok(&["import", "--stream-mode", doomed.to_str().unwrap()]);
    let kept = root.path().join("kept");
    write_file(&kept, 5 * MIB + 123, 2);
    let kept_id = daemon.ok(&["import", "--stream-mode", kept.to_str().unwrap()]);
    // Last, so no later fsync commits it by chance: only the delete's own
    // directory fsync can make it survive.
    daemon.ok(&["rm", &doomed_id]);

    power_cycle(daemon, &mut fs);

    let daemon = serve(root.path(), &fs);
    assert_eq!(daemon.ids(), vec![kept_id.clone()], "after the power loss");
    let out = root.path().join("kept.out");
    daemon.ok(&[
        "export",
        "--stream-mode",
        &kept_id,
        "-O",
        out.to_str().unwrap(),
    ]);
    assert!(same_bytes(&kept, &out), "the import is not byte-exact");
}

#[test]
fn an_export_written_by_the_daemon_survives_a_power_loss() {
    let root = tempdir();
    let mut fs = Ext4::create(root.path());
    let daemon = serve(root.path(), &fs);
    let src = root.path().join("src");
    write_file(&src, 6 * MIB + 7, 3);
    let id = daemon.ok(&["import", "--stream-mode", src.to_str().unwrap()]);
    // The legacy RPC: the daemon writes the output path itself.
    let out = fs.mount.join("export.bin");
    daemon.ok(&["export", &id, "-O", out.to_str().unwrap()]);

    power_cycle(daemon, &mut fs);

    assert!(out.exists(), "the export is gone after the power loss");
    assert!(same_bytes(&src, &out), "the export is not byte-exact");
}
