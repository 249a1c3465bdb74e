//! Power loss: the store's file system (a small ext4 image on a loop
//! device) is shut down without flushing its journal right after an
//! operation returns, as a power cut would; after a remount (journal
//! replay) every operation that returned success must be there: an import
//! byte-exact, a delete gone, an export complete. Needs root and loop
//! devices, as the FUSE tests need root.

mod common;

use std::path::Path;

use common::ext4::Ext4;
use common::*;

/// `dfcache serve` with its store on the image and its socket outside it.
fn serve(root: &Path, fs: &Ext4) -> Daemon {
    Daemon::start_on(&root.join("d.sock"), &fs.mount.join("store"), &[], &[])
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

#[test]
fn an_export_written_by_the_cli_survives_a_power_loss() {
    let root = tempdir();
    let mut fs = Ext4::create(root.path());
    let daemon = Daemon::start(root.path());
    let src = root.path().join("src");
    write_file(&src, 6 * MIB + 9, 4);
    let id = daemon.ok(&["import", "--stream-mode", src.to_str().unwrap()]);
    // Streamed: the CLI writes the output itself, on the image.
    let out = fs.mount.join("export.bin");
    daemon.ok(&["export", "--stream-mode", &id, "-O", out.to_str().unwrap()]);

    fs.go_down_without_flushing();
    fs.unmount();
    fs.mount();

    assert!(out.exists(), "the export is gone after the power loss");
    assert!(same_bytes(&src, &out), "the export is not byte-exact");
}
