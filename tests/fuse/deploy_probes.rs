//! The node DaemonSet's liveness probe (of its dfcache container) and
//! preStop hook (of its holder container)
//! (deploy/kubernetes/node-daemonset.yaml), run as written against real
//! mounts, with the manifest's mount point replaced by the test's: the
//! probe passes on a live mount and fails on a crashed one or on a mount
//! point with nothing mounted; the hook unmounts, and dfcache then exits
//! cleanly on its own.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;
use crate::harness::*;

/// The DaemonSet's mount point, as its `dfcache mount` command says.
const NODE_MOUNT: &str = "/var/lib/dfcache/mnt";

/// One command of a container of the DaemonSet, by the container's name
/// and its path in the manifest ("livenessProbe.exec.command"), as its
/// arguments.
fn manifest_command(container: &str, path: &str) -> Vec<String> {
    let manifest = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kubernetes/node-daemonset.yaml"
    );
    let code = "import sys, yaml\n\
                doc = yaml.safe_load(open(sys.argv[1]))\n\
                containers = doc['spec']['template']['spec']['containers']\n\
                node = [c for c in containers if c['name'] == sys.argv[3]][0]\n\
                for key in sys.argv[2].split('.'):\n    node = node[key]\n\
                print('\\n'.join(node))\n";
    let out = python(code, &[manifest, path, container]);
    succeeded(&out, format_args!("reading {path}"))
        .lines()
        .map(str::to_string)
        .collect()
}

/// Runs `command` with the node's mount point replaced by `mnt`.
fn run_at(command: &[String], mnt: &Path) -> Output {
    let args: Vec<String> = command
        .iter()
        .map(|a| a.replace(NODE_MOUNT, &mnt.to_string_lossy()))
        .collect();
    Command::new(&args[0])
        .args(&args[1..])
        .output()
        .expect("run the manifest's command")
}

#[test]
fn the_liveness_probe_passes_on_a_live_mount_and_fails_on_a_dead_or_missing_one() {
    let probe = manifest_command("dfcache", "livenessProbe.exec.command");
    assert!(probe.iter().any(|a| a.starts_with(NODE_MOUNT)), "{probe:?}");
    let root = tempdir();
    let mut m = Mounted::embedded(root.path(), &[]);
    succeeded(&run_at(&probe, &m.mnt), "the probe on a live mount");
    m.crash_with_holder();
    assert!(is_mounted(&m.mnt), "the crash should leave a dead mount");
    let dead = run_at(&probe, &m.mnt);
    assert!(!dead.status.success(), "the probe passed on a dead mount");
    assert!(
        String::from_utf8_lossy(&dead.stderr).contains("Transport endpoint is not connected"),
        "{}",
        String::from_utf8_lossy(&dead.stderr)
    );
    drop(m);
    assert!(!is_mounted(&root.path().join("mnt")));
    let unmounted = run_at(&probe, &root.path().join("mnt"));
    assert!(
        !unmounted.status.success(),
        "the probe passed with nothing mounted"
    );
}

#[test]
fn the_prestop_hook_unmounts_and_dfcache_exits_cleanly() {
    let hook = manifest_command("holder", "lifecycle.preStop.exec.command");
    let root = tempdir();
    let mut m = Mounted::embedded(root.path(), &[]);
    succeeded(&run_at(&hook, &m.mnt), "the preStop hook");
    assert!(!is_mounted(&m.mnt), "still mounted after the preStop hook");
    // dfcache notices its mount is gone and exits by itself, with success.
    let mut child = m.child.take().expect("the mount process");
    let mut exited = None;
    eventually("dfcache exits after the unmount", 10, || {
        exited = child.try_wait().ok().flatten();
        exited.is_some()
    });
    let status = exited.expect("an exit status");
    assert!(status.success(), "{status}");
}
