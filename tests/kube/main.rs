//! The manifests of deploy/kubernetes/ run by a real container runtime
//! (podman + runc, ../shared/LIMITS.md), on an image made from the binary
//! under test, against a `dfcache serve` in the node's dfdaemon's place:
//!
//! - the node pod (node-daemonset.yaml's template): its mount reaches the
//!   node; its liveness probe passes on the live mount; a file open on the
//!   node reads on across a restart (SIGTERM) and a kill -9 of the dfcache
//!   container (the holder container keeps the mount, each new dfcache
//!   takes it over); the holder's preStop hook detaches the mount and both
//!   exit 0;
//! - pods reading the node's mount through a hostPath with
//!   HostToContainer: `cp -r` into `import/` makes a tree, a non-root pod
//!   reads `tasks/` and `trees/`;
//! - the CLI pod (cli-pod.yaml) imports through its path mapping;
//! - the CSI plugin of the node pod publishes a tree, called over its
//!   socket as kubelet calls it, and model-pod.yaml (non-root, no
//!   privileges) reads it at the target path; the time from
//!   `podman kube play` to its first read is printed, with and without
//!   warm-up;
//! - the sidecar pod (sidecar-pod.yaml): its app starts once the mount's
//!   startup probe passes and reads its task on its first run.
//!
//! Every pod, container, image and mount is removed after, also on
//! failure. Fails where podman or runc is not installed
//! (`scripts/install-deps.sh` installs them).
//! With `DFCACHE_KUBE_DFDAEMON=1` the node's daemon is the released
//! dfdaemon of ../shared/dragonfly/ instead (`scripts/kube-play-dfdaemon.sh`).

#[path = "../common/mod.rs"]
mod common;
mod manifests;
mod node;
mod podman;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::csi::{mounts_below, publish_request, CsiPlugin};
use common::*;
use manifests::{container_command, translate, Translation};
use node::NodeRoot;
use podman::{Image, Played, Podman};

const NODE_MOUNT: &str = "/var/lib/dfcache/mnt";
const CSI_SOCKET: &str = "/var/lib/kubelet/plugins/dfcache.d7y.io/csi.sock";

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    succeeded(&out, "sha256sum")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Polls until `path` answers statfs (a live mount's `import/`).
fn wait_statfs(path: &Path, secs: u64) {
    eventually(&format!("statfs of {}", path.display()), secs, || {
        Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(path)
            .output()
            .is_ok_and(|o| o.status.success())
    });
}

/// The output of a command the test runs in a container as kubelet runs
/// a probe or a hook: success, and what it printed.
fn run_in(podman: &Podman, container: &str, command: &[&str]) -> (bool, String) {
    let out = podman.exec(container, command);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The node's dfdaemon, at the node's socket: `dfcache serve`, or the
/// released dfdaemon (../shared/dragonfly/run.sh) with
/// DFCACHE_KUBE_DFDAEMON=1; stopped when dropped.
enum NodeDaemon {
    Serve(#[allow(dead_code)] Daemon),
    Released(PathBuf),
}

impl NodeDaemon {
    fn start(node: &NodeRoot, store: &Path) -> NodeDaemon {
        let dir = node.host("/var/run/dragonfly");
        if std::env::var("DFCACHE_KUBE_DFDAEMON").is_ok_and(|v| v == "1") {
            let out = Command::new("bash")
                .arg(shared_dragonfly("run.sh"))
                .arg(&dir)
                .args(["--hostname", "kube-play-node"])
                .output()
                .expect("run ../shared/dragonfly/run.sh");
            // Made first, so a failed start is stopped too.
            let daemon = NodeDaemon::Released(dir);
            succeeded(&out, "../shared/dragonfly/run.sh");
            return daemon;
        }
        NodeDaemon::Serve(Daemon::start_on(
            &dir.join("dfdaemon.sock"),
            store,
            &[],
            &[],
        ))
    }
}

impl Drop for NodeDaemon {
    fn drop(&mut self) {
        if let NodeDaemon::Released(dir) = self {
            let _ = Command::new("bash")
                .arg(shared_dragonfly("stop.sh"))
                .arg(dir)
                .status();
        }
    }
}

fn shared_dragonfly(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/dragonfly")
        .join(script)
}

fn small_model(dir: &Path) {
    std::fs::create_dir_all(dir.join("weights")).unwrap();
    write_file(&dir.join("weights/model.safetensors"), 5 * MIB + 11, 301);
    std::fs::write(dir.join("config.json"), br#"{"layers": 4}"#).unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
}

#[test]
fn the_deploy_manifests_run_under_podman() {
    // A machine without the runtime fails here rather than passing
    // quietly: scripts/install-deps.sh installs podman and runc.
    if let Some(why) = Podman::unavailable() {
        panic!("{why}: run scripts/install-deps.sh");
    }
    let root = tempdir();
    let podman = Podman::new(root.path());
    let node = NodeRoot::new(&root.path().join("node"));
    let _daemon = NodeDaemon::start(&node, &root.path().join("store"));
    let image = Image::build(&podman, root.path(), Path::new(bin()));
    let node_dir = node.dir.to_str().expect("a UTF-8 path");
    let suffix = std::process::id().to_string();
    let name = |pod: &str| format!("{pod}-{suffix}");
    let file = |pod: &str| root.path().join(format!("{pod}.yaml"));

    // The node pod: the mount and the CSI plugin (the registrar's side,
    // kubelet, is this test).
    let node_pod_name = name("dfcache-node");
    // The spool is at the node's path in the container; the node's paths
    // are under the test's directory here.
    let spool_mapping = format!(
        "/var/lib/dfcache:{}",
        node.host("/var/lib/dfcache").display()
    );
    let node_pod = Played::play(
        &podman,
        &file("node"),
        &translate(
            "node-daemonset.yaml",
            &Translation {
                name: &node_pod_name,
                image: &image.name,
                root: node_dir,
                drop: &["csi-registrar"],
                env: &[("dfcache", "DFCACHE_PATH_MAPPING", spool_mapping.as_str())],
                ..Default::default()
            },
        ),
        &node_pod_name,
        true,
    );
    let mount_container = node_pod.container("dfcache");
    let mnt = node.host(NODE_MOUNT);
    wait_statfs(&mnt.join("import"), 60);
    let probe = container_command(
        "node-daemonset.yaml",
        "dfcache",
        "livenessProbe.exec.command",
    );
    let probe: Vec<&str> = probe.iter().map(String::as_str).collect();
    let (live, said) = run_in(&podman, &mount_container, &probe);
    assert!(live, "the liveness probe failed on a live mount: {said}");
    eprintln!("node pod: mount live, liveness probe passes");

    // The CLI pod imports through its path mapping.
    let data = node.host("/var/lib/dfcache-volumes/trainer");
    std::fs::create_dir_all(&data).unwrap();
    write_file(&data.join("model.bin"), 6 * MIB + 5, 302);
    let cli_pod_name = name("trainer");
    let cli_pod = Played::play(
        &podman,
        &file("cli"),
        &translate(
            "cli-pod.yaml",
            &Translation {
                name: &cli_pod_name,
                image: &image.name,
                root: node_dir,
                ..Default::default()
            },
        ),
        &cli_pod_name,
        true,
    );
    eventually("the CLI pod's task id", 60, || {
        std::fs::read_to_string(data.join("model.id")).is_ok_and(|s| s.trim().len() == 64)
    });
    let task = std::fs::read_to_string(data.join("model.id"))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(task, expected_id(&data.join("model.bin")));
    assert!(same_bytes(
        &mnt.join("tasks").join(&task),
        &data.join("model.bin")
    ));
    cli_pod.down();
    eprintln!("CLI pod: imported {task} through its path mapping");

    // Pods on the node's mount through a hostPath: `cp -r` into
    // import/, then a non-root pod reads tasks/ and trees/.
    let src = node.host("/srv/model");
    small_model(&src);
    let reader = |pod: &str, user: u32, script: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}}}\nspec:\n  restartPolicy: Never\n  \
             securityContext: {{runAsUser: {user}, runAsGroup: {user}}}\n  containers:\n    \
             - name: app\n      image: {image}\n      command: [sh, -c, {script:?}]\n      \
             volumeMounts:\n        - {{name: dfcache, mountPath: /dfcache, mountPropagation: HostToContainer}}\n        \
             - {{name: src, mountPath: /src}}\n  volumes:\n    \
             - {{name: dfcache, hostPath: {{path: {dfc}, type: Directory}}}}\n    \
             - {{name: src, hostPath: {{path: {srcdir}, type: Directory}}}}\n",
            image = image.name,
            dfc = node.host("/var/lib/dfcache").display(),
            srcdir = node.host("/srv").display(),
        )
    };
    let importer_name = name("importer");
    let importer = Played::play(
        &podman,
        &file("importer"),
        &reader(
            &importer_name,
            0,
            "cp -r /src/model /dfcache/mnt/import/model",
        ),
        &importer_name,
        true,
    );
    assert_eq!(
        podman.wait_exit(&importer.container("app")),
        0,
        "{}",
        podman.logs(&importer.container("app"))
    );
    importer.down();
    let tree = Command::new("getfattr")
        .args(["--only-values", "-n", "user.dfcache.tree_id"])
        .arg(mnt.join("import/model"))
        .output()
        .unwrap();
    let tree = succeeded(&tree, "the tree id of import/model");
    assert_eq!(tree.len(), 64, "{tree}");
    let consumer_name = name("consumer");
    let consumer = Played::play(
        &podman,
        &file("consumer"),
        &reader(
            &consumer_name,
            65534,
            &format!(
                "id -u && sha256sum /dfcache/mnt/tasks/{task} /dfcache/mnt/trees/{tree}/weights/model.safetensors"
            ),
        ),
        &consumer_name,
        true,
    );
    let app = consumer.container("app");
    assert_eq!(podman.wait_exit(&app), 0, "{}", podman.logs(&app));
    let log = podman.logs(&app);
    assert!(log.starts_with("65534\n"), "{log}");
    assert!(log.contains(&sha256(&data.join("model.bin"))), "{log}");
    assert!(
        log.contains(&sha256(&src.join("weights/model.safetensors"))),
        "{log}"
    );
    consumer.down();
    eprintln!("hostPath pods: cp -r made tree {tree}; a non-root pod read tasks/ and trees/");

    // The CSI plugin publishes the tree as kubelet asks; model-pod.yaml
    // reads it, non-root, with and without warm-up.
    let socket = node.host(CSI_SOCKET);
    eventually("the CSI plugin's socket", 30, || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    let plugin = CsiPlugin::attach(&socket);
    assert_eq!(plugin.probe().ready, Some(true));
    for warmup in ["true", "false"] {
        let uid = format!("uid-warmup-{warmup}");
        // The plugin sees the node's paths; kubelet makes the parent.
        let target = format!("/var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~csi/model/mount");
        std::fs::create_dir_all(node.host(&target).parent().unwrap()).unwrap();
        let model_pod_name = name(&format!("model-reader-{warmup}"));
        let host_target = node.host(&target);
        let started = Instant::now();
        let attributes = [("tree", tree.as_str()), ("warmup", warmup)];
        plugin
            .publish(publish_request(
                "csi-model",
                Path::new(&target),
                &attributes,
            ))
            .expect("publish the model");
        let published = started.elapsed();
        let model_pod = Played::play(
            &podman,
            &file("model"),
            &translate(
                "model-pod.yaml",
                &Translation {
                    name: &model_pod_name,
                    image: &image.name,
                    root: node_dir,
                    replace: &[("<tree id>", tree.as_str())],
                    csi_targets: &[("model", host_target.as_path())],
                    ..Default::default()
                },
            ),
            &model_pod_name,
            true,
        );
        let app = model_pod.container("app");
        let want = sha256(&src.join("config.json"));
        let line = podman.wait_log_line(&app, 60, |l| l.contains("config.json"));
        let first_read = started.elapsed();
        assert!(line.starts_with(&want), "{line}");
        let (ok, uid_in_pod) = run_in(&podman, &app, &["id", "-u"]);
        assert!(ok && uid_in_pod.trim() == "65534", "{uid_in_pod}");
        eprintln!(
            "model pod, warmup {warmup}: publish {published:?}, publish + kube play to its first read {first_read:?}"
        );
        model_pod.down();
        plugin
            .unpublish("csi-model", Path::new(&target))
            .expect("unpublish");
        assert!(!node.host(&target).exists());
        assert_eq!(
            mounts_below(&node.host("/var/lib/kubelet/pods")),
            Vec::<PathBuf>::new()
        );
    }

    // The sidecar pod: the mount first; the app once the startup probe
    // passes, as kubelet orders a native sidecar.
    let sidecar_name = name("inference");
    let sidecar = Played::play(
        &podman,
        &file("sidecar"),
        &translate(
            "sidecar-pod.yaml",
            &Translation {
                name: &sidecar_name,
                image: &image.name,
                root: node_dir,
                replace: &[("<task id>", task.as_str())],
                ..Default::default()
            },
        ),
        &sidecar_name,
        false,
    );
    podman.ok(&["start", &sidecar.container("dfcache")]);
    let startup = container_command("sidecar-pod.yaml", "dfcache", "startupProbe.exec.command");
    let startup: Vec<&str> = startup.iter().map(String::as_str).collect();
    eventually("the sidecar's startup probe", 60, || {
        run_in(&podman, &sidecar.container("dfcache"), &startup).0
    });
    podman.ok(&["start", &sidecar.container("app")]);
    let line = podman.wait_log_line(&sidecar.container("app"), 60, |l| l.contains(&task));
    assert!(line.starts_with(&sha256(&data.join("model.bin"))), "{line}");
    assert_eq!(podman.state(&sidecar.container("app")), "running");
    sidecar.down();
    assert_eq!(
        mounts_below(&node.host("/var/lib/kubelet/pods")),
        Vec::<PathBuf>::new()
    );
    eprintln!("sidecar pod: the app read its task on its first run");

    // A restart of the mount's container (SIGTERM, as kubelet restarts it
    // for a failed probe or a new image), then a crash (kill -9, an OOM
    // kill): the holder container keeps the mount, each new dfcache takes
    // it over, and a file opened on the node before reads on, same bytes,
    // through the same descriptor (the kernel's page cache is dropped, so
    // the reads reach the new process).
    let mut open_task = std::fs::File::open(mnt.join("tasks").join(&task)).unwrap();
    let expected = std::fs::read(data.join("model.bin")).unwrap();
    let third = expected.len() / 3;
    let drop_caches = || {
        let dropped = Command::new("sh")
            .args(["-c", "sync; echo 3 > /proc/sys/vm/drop_caches"])
            .status()
            .unwrap();
        assert!(dropped.success());
    };
    let mut read = vec![0u8; third];
    std::io::Read::read_exact(&mut open_task, &mut read).unwrap();
    podman.ok(&["restart", &mount_container]);
    drop_caches();
    let mut more = vec![0u8; third];
    std::io::Read::read_exact(&mut open_task, &mut more).unwrap();
    read.extend(more);
    let pid = podman.ok(&["inspect", "-f", "{{.State.Pid}}", &mount_container]);
    let killed = Command::new("kill").args(["-KILL", &pid]).status().unwrap();
    assert!(killed.success());
    assert_eq!(podman.wait_exit(&mount_container), 137);
    drop_caches();
    podman.ok(&["start", &mount_container]);
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut open_task, &mut rest).unwrap();
    read.extend(rest);
    assert!(
        read == expected,
        "the open file read other bytes across the restarts"
    );
    // Closed before the unmount: a lazy unmount ends the mount's
    // connection only once no file of it is open.
    drop(open_task);
    let took = podman
        .logs(&mount_container)
        .matches("took the mount over")
        .count();
    assert_eq!(took, 2, "{}", podman.logs(&mount_container));
    let (live, said) = run_in(&podman, &mount_container, &probe);
    assert!(live, "the probe failed on the mount taken over: {said}");
    eprintln!(
        "node pod: a file open on the node read on across a restart and a kill -9 of the dfcache container, each new one taking the mount over"
    );

    // The holder's preStop hook (the pod is going) detaches the mount;
    // dfcache and the holder then exit 0.
    let holder_container = node_pod.container("holder");
    let hook = container_command(
        "node-daemonset.yaml",
        "holder",
        "lifecycle.preStop.exec.command",
    );
    let hook: Vec<&str> = hook.iter().map(String::as_str).collect();
    assert_eq!(hook.last(), Some(&NODE_MOUNT));
    // The hook's unmount ends the holder, the container's main process,
    // which may end the exec session before it reports: the hook is
    // judged by what it did.
    let (done, said) = run_in(&podman, &holder_container, &hook);
    assert_eq!(
        podman.wait_exit(&holder_container),
        0,
        "the holder after the preStop hook (exec: {done}, {said:?})"
    );
    assert_eq!(podman.wait_exit(&mount_container), 0);
    assert!(
        mounts_below(&mnt).is_empty(),
        "still mounted after the preStop hook"
    );
    eprintln!(
        "node pod: the holder's preStop hook detached the mount; dfcache and the holder exited 0"
    );
    drop(plugin);
    node_pod.down();
    let left = podman.ok(&["ps", "-a", "--filter", &format!("name={suffix}"), "-q"]);
    assert_eq!(left, "", "containers left");
}
