//! `dfcache csi` driven as kubelet drives it: a CSI client generated from
//! the spec calls its Identity and Node services over its Unix socket,
//! and the volumes it publishes from a real node mount are read by real
//! programs (as root and as another user). Checked: the driver's identity
//! and capabilities; a tree and a task published read-only whatever the
//! access mode, idempotently; unpublish removes every mount and the
//! target, idempotently; each bad request gets the spec's code and leaves
//! nothing mounted; volumes outlive a killed plugin and a new one takes
//! them over; `warmup: "true"` returns once the content is on the node.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tonic::Code;

use crate::common::csi::*;
use crate::common::user::{as_ids, sh_as};
use crate::common::*;
use crate::harness::*;

/// A node: its dfcache mount (embedded daemon, `--allow-other` as the
/// DaemonSet runs it), the plugin on it, and the pods' directory whose
/// mounts are detached when the test ends, however it ends.
struct Node {
    _published: PublishedBelow,
    plugin: CsiPlugin,
    m: Mounted,
    pods: PathBuf,
    socket: PathBuf,
}

impl Node {
    fn embedded(root: &Path) -> Node {
        let m = Mounted::embedded(root, &["--allow-other"]);
        Self::on(root, m, root.join("store/dfdaemon.sock"))
    }

    fn on(root: &Path, m: Mounted, daemon_socket: PathBuf) -> Node {
        // Other users reach the volumes only through the test's root.
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let pods = root.join("pods");
        std::fs::create_dir_all(&pods).unwrap();
        let plugin = CsiPlugin::start(&root.join("plugin/csi.sock"), &m.mnt);
        Node {
            _published: PublishedBelow(pods.clone()),
            plugin,
            m,
            pods,
            socket: daemon_socket,
        }
    }

    /// kubelet's layout: it makes the volume's directory, the plugin the
    /// `mount` target in it.
    fn target(&self, volume: &str) -> PathBuf {
        let dir = self.pods.join(volume);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("mount")
    }

    fn import(&self, args: &[&str]) -> String {
        let mut all = vec!["import", "--stream-mode"];
        all.extend_from_slice(args);
        succeeded(&cli(&self.socket, &all), format_args!("dfcache {all:?}"))
    }

    fn nothing_published(&self) {
        assert_eq!(mounts_below(&self.pods), Vec::<PathBuf>::new());
    }
}

/// A small model: nested directories, an empty file, a symlink.
fn small_model(dir: &Path) {
    std::fs::create_dir_all(dir.join("weights/shards")).unwrap();
    write_file(&dir.join("weights/model.safetensors"), 3 * MIB + 5, 231);
    write_file(&dir.join("weights/shards/s0"), 4099, 232);
    std::fs::write(dir.join("config.json"), br#"{"layers": 2}"#).unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("weights/model.safetensors", dir.join("model")).unwrap();
}

fn diff_r(a: &Path, b: &Path) {
    let out = std::process::Command::new("diff")
        .args(["-r", "--no-dereference"])
        .args([a, b])
        .output()
        .unwrap();
    succeeded(&out, format!("diff -r {} {}", a.display(), b.display()));
}

fn refused_read_only(script: &str) {
    let out = sh(script);
    assert!(
        !out.status.success(),
        "`{script}` succeeded on a read-only volume"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Read-only file system"), "`{script}`: {err}");
}

fn code_of(result: Result<(), tonic::Status>) -> Code {
    match result {
        Ok(()) => Code::Ok,
        Err(status) => {
            assert!(!status.message().is_empty(), "{status:?} says nothing");
            status.code()
        }
    }
}

#[test]
fn identity_and_node_info_name_the_driver_and_offer_no_controller_or_staging() {
    let root = tempdir();
    let mut n = Node::embedded(root.path());
    let info = n.plugin.plugin_info();
    assert_eq!(info.name, "dfcache.d7y.io");
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(n.plugin.plugin_capabilities().capabilities, vec![]);
    assert_eq!(n.plugin.node_capabilities().capabilities, vec![]);
    assert_eq!(n.plugin.node_info().node_id, "test-node");
    assert_eq!(n.plugin.probe().ready, Some(true));

    // The node's mount dies: the plugin is not ready, a volume published
    // from it is still unpublished, and a publish is UNAVAILABLE (kubelet
    // retries) with nothing mounted.
    let src = root.path().join("model");
    small_model(&src);
    let id = n.import(&["-r", src.to_str().unwrap()]);
    let live = n.target("live");
    n.plugin
        .publish(publish_request("csi-live", &live, &[("tree", id.as_str())]))
        .expect("publish on the live mount");
    n.m.crash();
    assert_eq!(n.plugin.probe().ready, Some(false));
    // A volume of the dead mount is still unpublished cleanly.
    n.plugin
        .unpublish("csi-live", &live)
        .expect("unpublish a dead volume");
    assert!(!live.exists());
    let target = n.target("dead");
    let result = n.plugin.publish(publish_request(
        "csi-dead",
        &target,
        &[("tree", id.as_str())],
    ));
    assert_eq!(code_of(result), Code::Unavailable);
    assert!(!target.exists());
    n.nothing_published();
}

#[test]
fn a_tree_is_published_read_only_idempotently_and_unpublished_idempotently() {
    let root = tempdir();
    let src = root.path().join("model");
    small_model(&src);
    let n = Node::embedded(root.path());
    let tree = n.import(&["-r", src.to_str().unwrap()]);
    let target = n.target("model");
    // SINGLE_NODE_WRITER with readonly false, as kubelet sends for an
    // inline volume: still read-only.
    n.plugin
        .publish(publish_request(
            "csi-model",
            &target,
            &[("tree", tree.as_str())],
        ))
        .expect("publish the tree");
    diff_r(&src, &target);
    let mounts = mountinfo_at(&target);
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    assert!(
        mounts[0].contains(&format!(" /trees/{tree} ")),
        "{}",
        mounts[0]
    );
    assert!(mounts[0].contains(" ro,"), "{}", mounts[0]);
    refused_read_only(&format!("touch {}", q(&target.join("new"))));
    refused_read_only(&format!("rm -f {}", q(&target.join("config.json"))));
    // A pod running as another user reads it (the mount is allow_other).
    let as_nobody = as_ids(65534, 65534);
    let sum = |p: &Path| sh_ok(&format!("sha256sum < {}", q(p)));
    let read = sh_as(
        &as_nobody,
        &format!(
            "sha256sum < {}",
            q(&target.join("weights/model.safetensors"))
        ),
    );
    assert_eq!(
        succeeded(&read, "reading the volume as another user"),
        sum(&src.join("weights/model.safetensors"))
    );

    // Publishing again succeeds and stacks nothing; another volume at the
    // same target is ALREADY_EXISTS and changes nothing.
    n.plugin
        .publish(publish_request(
            "csi-model",
            &target,
            &[("tree", tree.as_str())],
        ))
        .expect("publish again");
    assert_eq!(mountinfo_at(&target).len(), 1);
    let task = n.import(&[src.join("config.json").to_str().unwrap()]);
    let other = n.plugin.publish(publish_request(
        "csi-model",
        &target,
        &[("task", task.as_str()), ("file", "config.json")],
    ));
    assert_eq!(code_of(other), Code::AlreadyExists);
    assert_eq!(mountinfo_at(&target).len(), 1);
    diff_r(&src, &target);

    n.plugin.unpublish("csi-model", &target).expect("unpublish");
    assert!(!target.exists(), "the target is left");
    n.nothing_published();
    n.plugin
        .unpublish("csi-model", &target)
        .expect("unpublish again");
}

#[test]
fn a_task_is_published_as_one_read_only_file_named_by_the_volume() {
    let root = tempdir();
    let src = root.path().join("weights.bin");
    write_file(&src, 5 * MIB + 7, 233);
    let n = Node::embedded(root.path());
    let id = n.import(&[src.to_str().unwrap()]);
    let target = n.target("weights");
    let attributes = [("task", id.as_str()), ("file", "model.bin")];
    n.plugin
        .publish(publish_request("csi-w", &target, &attributes))
        .expect("publish the task");
    assert_eq!(sh_ok(&format!("ls -A {}", q(&target))), "model.bin");
    assert!(same_bytes(&target.join("model.bin"), &src));
    refused_read_only(&format!("echo x >> {}", q(&target.join("model.bin"))));
    refused_read_only(&format!("touch {}", q(&target.join("other"))));
    let mounts = mounts_below(&target);
    assert_eq!(mounts, vec![target.clone(), target.join("model.bin")]);

    n.plugin
        .publish(publish_request("csi-w", &target, &attributes))
        .expect("publish again");
    assert_eq!(mounts_below(&target).len(), 2);
    n.plugin.unpublish("csi-w", &target).expect("unpublish");
    assert!(!target.exists());
    n.nothing_published();
    n.plugin
        .unpublish("csi-w", &target)
        .expect("unpublish again");
}

#[test]
fn bad_requests_get_the_specs_codes_and_leave_nothing_mounted() {
    let root = tempdir();
    let src = root.path().join("model");
    small_model(&src);
    let n = Node::embedded(root.path());
    let tree = n.import(&["-r", src.to_str().unwrap()]);
    let task = n.import(&[src.join("config.json").to_str().unwrap()]);
    let unknown = "0".repeat(64);
    let target = n.target("bad");
    let publish = |req| code_of(n.plugin.publish(req));
    let tree_at = || publish_request("csi-bad", &target, &[("tree", tree.as_str())]);

    let mut no_id = tree_at();
    no_id.volume_id.clear();
    let mut no_target = tree_at();
    no_target.target_path.clear();
    let mut no_capability = tree_at();
    no_capability.volume_capability = None;
    let cases = [
        ("no volume id", no_id, Code::InvalidArgument),
        ("no target", no_target, Code::InvalidArgument),
        ("no capability", no_capability, Code::InvalidArgument),
        (
            "a malformed tree id",
            publish_request("csi-bad", &target, &[("tree", "not-an-id")]),
            Code::InvalidArgument,
        ),
        (
            "a task without a file name",
            publish_request("csi-bad", &target, &[("task", task.as_str())]),
            Code::InvalidArgument,
        ),
        (
            "a file name with a slash",
            publish_request(
                "csi-bad",
                &target,
                &[("task", task.as_str()), ("file", "a/b")],
            ),
            Code::InvalidArgument,
        ),
        (
            "an unknown attribute",
            publish_request(
                "csi-bad",
                &target,
                &[("tree", tree.as_str()), ("warmpu", "true")],
            ),
            Code::InvalidArgument,
        ),
        (
            "a task that is not a tree",
            publish_request("csi-bad", &target, &[("tree", task.as_str())]),
            Code::InvalidArgument,
        ),
        (
            "an unknown tree",
            publish_request("csi-bad", &target, &[("tree", unknown.as_str())]),
            Code::NotFound,
        ),
        (
            "an unknown task",
            publish_request(
                "csi-bad",
                &target,
                &[("task", unknown.as_str()), ("file", "m")],
            ),
            Code::NotFound,
        ),
    ];
    for (what, req, want) in cases {
        assert_eq!(publish(req), want, "{what}");
        assert!(!target.exists(), "{what}: the target was left");
        n.nothing_published();
    }

    // A target that holds something is not mounted over.
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), b"mine").unwrap();
    assert_eq!(publish(tree_at()), Code::FailedPrecondition);
    assert_eq!(std::fs::read(target.join("keep")).unwrap(), b"mine");
    n.nothing_published();

    assert_eq!(
        code_of(n.plugin.unpublish("", &target)),
        Code::InvalidArgument
    );
    assert_eq!(
        code_of(n.plugin.unpublish("csi-bad", Path::new(""))),
        Code::InvalidArgument
    );
    // Never published: nothing to do.
    let never = n.target("never");
    n.plugin
        .unpublish("csi-never", &never)
        .expect("unpublish of nothing");
}

#[test]
fn volumes_outlive_a_killed_plugin_and_the_next_one_manages_them() {
    let root = tempdir();
    let src = root.path().join("model");
    small_model(&src);
    let mut n = Node::embedded(root.path());
    let tree = n.import(&["-r", src.to_str().unwrap()]);
    let task = n.import(&[src.join("weights/model.safetensors").to_str().unwrap()]);
    let (a, b) = (n.target("a"), n.target("b"));
    let file = [("task", task.as_str()), ("file", "m.safetensors")];
    n.plugin
        .publish(publish_request("csi-a", &a, &[("tree", tree.as_str())]))
        .unwrap();
    n.plugin
        .publish(publish_request("csi-b", &b, &file))
        .unwrap();

    n.plugin.kill();
    diff_r(&src, &a);
    assert!(same_bytes(
        &b.join("m.safetensors"),
        &src.join("weights/model.safetensors")
    ));

    let mnt = n.m.mnt.clone();
    n.plugin.restart(&mnt);
    assert_eq!(n.plugin.probe().ready, Some(true));
    n.plugin
        .publish(publish_request("csi-a", &a, &[("tree", tree.as_str())]))
        .expect("the new plugin sees the volume as published");
    n.plugin
        .publish(publish_request("csi-b", &b, &file))
        .unwrap();
    assert_eq!(mounts_below(&n.pods).len(), 3, "a publish stacked a mount");
    n.plugin.unpublish("csi-a", &a).unwrap();
    n.plugin.unpublish("csi-b", &b).unwrap();
    assert!(!a.exists() && !b.exists());
    n.nothing_published();
}

const PIECE: u64 = 4 * MIB;
const PIECE_DELAY: Duration = Duration::from_millis(300);

#[test]
fn warmup_returns_once_the_content_is_on_the_node_and_without_it_at_once() {
    // A released dfdaemon's download, paced: 8 pieces 300 ms apart, so a
    // whole download takes at least 2.1 s from its start.
    let root = tempdir();
    let daemon = Daemon::start_with(
        root.path(),
        &[
            "--legacy",
            "--legacy-piece-delay",
            &format!("{}ms", PIECE_DELAY.as_millis()),
        ],
    );
    let spool = root.path().join("spool");
    let m = Mounted::on(
        &daemon,
        root.path(),
        &["--allow-other", "--spool", spool.to_str().unwrap()],
    );
    let n = Node::on(root.path(), m, daemon.socket.clone());
    let whole_download = PIECE_DELAY * 7;
    let (lazy_src, warm_src) = (root.path().join("lazy.bin"), root.path().join("warm.bin"));
    write_file(&lazy_src, 8 * PIECE, 234);
    write_file(&warm_src, 8 * PIECE, 235);
    let lazy = daemon.ok(&["import", lazy_src.to_str().unwrap()]);
    let warm = daemon.ok(&["import", warm_src.to_str().unwrap()]);

    let target = n.target("lazy");
    let started = Instant::now();
    n.plugin
        .publish(publish_request(
            "csi-lazy",
            &target,
            &[("task", lazy.as_str()), ("file", "m")],
        ))
        .unwrap();
    let took = started.elapsed();
    assert!(
        took < whole_download,
        "a publish without warm-up took {took:?}, as long as the download"
    );

    let target = n.target("warm");
    let started = Instant::now();
    n.plugin
        .publish(publish_request(
            "csi-warm",
            &target,
            &[("task", warm.as_str()), ("file", "m"), ("warmup", "true")],
        ))
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= whole_download,
        "a warm-up publish returned after {took:?}, before the last piece was sent"
    );
    assert!(same_bytes(&target.join("m"), &warm_src));

    // A tree: every file of it, and its manifest.
    let model = root.path().join("model");
    small_model(&model);
    let tree = daemon.ok(&["import", "-r", model.to_str().unwrap()]);
    let target = n.target("tree");
    n.plugin
        .publish(publish_request(
            "csi-tree",
            &target,
            &[("tree", tree.as_str()), ("warmup", "true")],
        ))
        .unwrap();
    diff_r(&model, &target);
    let bad = n.plugin.publish(publish_request(
        "csi-tree2",
        &n.target("tree2"),
        &[("tree", tree.as_str()), ("warmup", "yes")],
    ));
    assert_eq!(code_of(bad), Code::InvalidArgument);
    for (id, t) in [
        ("csi-lazy", "lazy"),
        ("csi-warm", "warm"),
        ("csi-tree", "tree"),
    ] {
        n.plugin
            .unpublish(id, &n.pods.join(t).join("mount"))
            .unwrap();
    }
    n.nothing_published();
}
