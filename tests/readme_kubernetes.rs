//! The deployment files in deploy/ are what docs/KUBERNETES.md (the
//! deployment guide the README links to) points at, and are consistent:
//! the Kubernetes manifests parse as YAML and have the kinds the guide
//! says; the dfdaemon socket directory is a hostPath mounted
//! where DFCACHE_ENDPOINT points; every DFCACHE_PATH_MAPPING entry maps a
//! mounted volume's mountPath to that volume's hostPath; the node
//! DaemonSet probes its mount point, keeps the mount in a holder container
//! beside dfcache (on a shared socket) and unmounts in the holder's
//! preStop; a warm-up runs as an init container on the node's dfdaemon;
//! the Dockerfile is multi-stage with fusermount3 in the final image; the
//! systemd unit keeps the mount in its file-descriptor store across a
//! restart, unmounts on stop, restarts on failure and passes
//! `systemd-analyze verify`. The CSI driver object is what inline
//! volumes need; the plugin's socket is where the registrar tells kubelet;
//! a pod reading through the driver has no hostPath and no privileges; the
//! sidecar is a native sidecar gated on its mount. Every dfcache flag the
//! files use exists (`mount`'s, `csi`'s and `warmup`'s), and so does every
//! variable a mount is given; a mount's memory limit leaves room for its
//! cache and memory budget.
//! (tests/fuse/deploy_probes.rs runs the probe and the preStop hook
//! against real mounts.)

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{bin, succeeded, tempdir};

const CHECK: &str = r###"
import os, sys, yaml
root = sys.argv[1]
guide = open(os.path.join(root, "docs", "KUBERNETES.md")).read()
kdir = os.path.join(root, "deploy", "kubernetes")
expected = {"cli-pod.yaml": "Pod", "sidecar-pod.yaml": "Pod", "node-daemonset.yaml": "DaemonSet",
            "csi-driver.yaml": "CSIDriver", "model-pod.yaml": "Pod", "warmup-pod.yaml": "Pod"}
DRIVER = "dfcache.d7y.io"
assert sorted(os.listdir(kdir)) == sorted(expected), os.listdir(kdir)
plugins = 0
for name, kind in sorted(expected.items()):
    assert "deploy/kubernetes/" + name in guide, (name, "is not referenced by docs/KUBERNETES.md")
    docs = [d for d in yaml.safe_load_all(open(os.path.join(kdir, name))) if d]
    assert [d["kind"] for d in docs] == [kind], (name, docs)
    doc = docs[0]
    if kind == "CSIDriver":
        spec = doc["spec"]
        assert doc["metadata"]["name"] == DRIVER, doc
        assert spec["attachRequired"] is False and spec["podInfoOnMount"] is True, spec
        assert spec["volumeLifecycleModes"] == ["Ephemeral"], spec
        continue
    spec = doc["spec"]["template"]["spec"] if kind == "DaemonSet" else doc["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    containers = spec.get("initContainers", []) + spec["containers"]
    inits = [c["name"] for c in spec.get("initContainers", [])]
    holders = {}
    for c in containers:
        if c.get("command", [])[:2] == ["dfcache", "mount-holder"]:
            command = c["command"]
            socket = command[command.index("--socket") + 1]
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            holders[socket] = (c, mounts[socket.rsplit("/", 1)[0]]["name"])
    for c in containers:
        env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
        mounts = {m["mountPath"]: (volumes[m["name"]], m) for m in c.get("volumeMounts", [])}
        if "DFCACHE_ENDPOINT" in env:
            sock_dir = env["DFCACHE_ENDPOINT"].rsplit("/", 1)[0]
            assert mounts[sock_dir][0]["hostPath"]["path"] == "/var/run/dragonfly", (name, c["name"])
        for entry in filter(None, env.get("DFCACHE_PATH_MAPPING", "").split(",")):
            container, host = entry.split(":")
            assert container in mounts, (name, c["name"], container, "is not a mounted volume")
            assert mounts[container][0]["hostPath"]["path"] == host, (name, c["name"], entry)
        command = c.get("command", [])
        if command[:2] == ["dfcache", "warmup"]:
            # Before the app: an init container, on the node's dfdaemon.
            assert c["name"] in inits and "DFCACHE_ENDPOINT" in env, (name, c["name"])
            for arg in command:
                if arg.startswith("--"):
                    print("warmup-flag", arg)
            continue
        if command[:2] == ["dfcache", "csi"]:
            # The plugin: its socket where the registrar tells kubelet it
            # is, kubelet's pods shared both ways, the node's mount seen.
            plugins += 1
            flags = dict(zip(command[2::2], command[3::2]))
            sock = flags["--csi-endpoint"].split("unix://", 1)[1]
            sock_volume = mounts[sock.rsplit("/", 1)[0]][0]
            host_sock = sock_volume["hostPath"]["path"] + "/" + sock.rsplit("/", 1)[1]
            assert host_sock == "/var/lib/kubelet/plugins/" + DRIVER + "/csi.sock", host_sock
            registrar = [x for x in containers if "csi-node-driver-registrar" in x["image"]]
            assert len(registrar) == 1, (name, "no registrar")
            assert "--kubelet-registration-path=" + host_sock in registrar[0]["args"], registrar
            pods = mounts["/var/lib/kubelet/pods"]
            assert pods[0]["hostPath"]["path"] == "/var/lib/kubelet/pods", pods
            assert pods[1].get("mountPropagation") == "Bidirectional", pods
            node_mount = flags["--mountpoint"]
            seen = [m for path, (_, m) in mounts.items() if node_mount.startswith(path.rstrip("/") + "/")]
            assert seen and seen[0].get("mountPropagation") == "HostToContainer", seen
            assert c["securityContext"]["privileged"], (name, c["name"])
            for arg in command[2::2]:
                print("csi-flag", arg)
            continue
        if command[:2] != ["dfcache", "mount"]:
            continue
        assert c["securityContext"]["privileged"], (name, c["name"])
        mountpoint = command[2]
        # The mount reaches the app (or the node) only through a volume
        # mounted at or above it with bidirectional propagation.
        shared = [m for path, (_, m) in mounts.items()
                  if mountpoint == path or mountpoint.startswith(path.rstrip("/") + "/")]
        assert shared and shared[0].get("mountPropagation") == "Bidirectional", (name, shared)
        for arg in command:
            if arg.startswith("--"):
                print("mount-flag", arg)
        # Its memory limit leaves room for its cache and memory budget (each
        # 256 MiB unless set) and the process's overhead (128 MiB: the
        # fixed part and a hundred transfers at once, docs/KUBERNETES.md).
        def mib(v):
            for unit, n in (("gib", 1024), ("gi", 1024), ("mib", 1), ("mi", 1)):
                if v.lower().endswith(unit):
                    return int(v[: -len(unit)]) * n
            raise ValueError(v)
        need = mib(env.get("DFCACHE_CACHE_SIZE", "256mib")) + mib(env.get("DFCACHE_MEMORY_BUDGET", "256mib")) + 128
        limit = mib(c["resources"]["limits"]["memory"])
        assert limit >= need, (name, c["name"], "memory limit", limit, "MiB, needs", need)
        print("mount-env", " ".join(sorted(e for e in env if e.startswith("DFCACHE_"))))
        if kind == "DaemonSet":
            probe = c["livenessProbe"]["exec"]["command"]
            assert any(a.startswith(mountpoint + "/") for a in probe), ("probe", probe)
            # The mount outlives this container: a holder container beside
            # it on a shared socket, which unmounts when the pod goes.
            assert command[command.index("--holder") + 1] == "external", command
            socket = command[command.index("--holder-socket") + 1]
            holder, volume = holders[socket]
            assert mounts[socket.rsplit("/", 1)[0]][1]["name"] == volume, ("socket volume", c["name"])
            assert "lifecycle" not in c, ("a preStop of the dfcache container would unmount on every restart", c["name"])
            stop = holder["lifecycle"]["preStop"]["exec"]["command"]
            assert stop[0] in ("fusermount3", "umount") and stop[-1] == mountpoint, ("preStop", stop)
            assert holder["securityContext"]["privileged"], "the holder's preStop unmounts"
            hmounts = {m["mountPath"]: m for m in holder["volumeMounts"]}
            assert any(mountpoint.startswith(p.rstrip("/") + "/") and m.get("mountPropagation") == "Bidirectional"
                       for p, m in hmounts.items()), ("the holder sees the mount", hmounts)
        if c in spec.get("initContainers", []):
            # A native sidecar: the app starts once the mount answers.
            assert c.get("restartPolicy") == "Always", (name, c["name"])
            probe = c["startupProbe"]["exec"]["command"]
            assert any(a.startswith(mountpoint + "/") for a in probe), ("startupProbe", probe)
    # A pod that reads through the driver needs nothing privileged: no
    # hostPath (refused from the baseline Pod Security level up), non-root.
    csi = [v["csi"] for v in spec["volumes"] if "csi" in v]
    for v in csi:
        attrs = v["volumeAttributes"]
        assert v["driver"] == DRIVER and v["readOnly"] is True, v
        assert ("tree" in attrs) != ("task" in attrs and "file" in attrs), attrs
    if csi:
        assert not [v for v in spec["volumes"] if "hostPath" in v], name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for c in containers:
            sc = c.get("securityContext", {})
            assert not sc.get("privileged") and sc.get("allowPrivilegeEscalation") is False, (name, c["name"])
assert plugins == 1, plugins
print("checked", len(expected), "manifests")
"###;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn deploy(rel: &str) -> PathBuf {
    root().join("deploy").join(rel)
}

/// The deployment guide: the document that names the files in deploy/.
fn guide() -> PathBuf {
    root().join("docs").join("KUBERNETES.md")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `dfcache SUBCOMMAND --help`: every flag a file uses must be in it.
fn help(subcommand: &str) -> String {
    let out = Command::new(bin())
        .args([subcommand, "--help"])
        .output()
        .expect("run dfcache --help");
    succeeded(&out, format!("dfcache {subcommand} --help"))
}

fn assert_flags_exist(subcommand: &str, flags: &[&str], what: &str) {
    let help = help(subcommand);
    for flag in flags {
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "{what} uses {flag}, which `dfcache {subcommand}` does not have"
        );
    }
}

fn assert_mount_flags_exist(flags: &[&str], what: &str) {
    assert_flags_exist("mount", flags, what);
}

#[test]
fn the_kubernetes_manifests_parse_are_consistent_and_use_real_flags() {
    let out = Command::new("python3")
        .arg("-c")
        .arg(CHECK)
        .arg(root())
        .output()
        .expect("run python3");
    let stdout = succeeded(&out, "the manifest check");
    assert!(stdout.ends_with("checked 6 manifests"), "{stdout}");
    let flags: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("mount-flag "))
        .collect();
    assert!(flags.contains(&"--allow-other"), "{flags:?}");
    assert_mount_flags_exist(&flags, "a manifest");
    let csi_flags: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("csi-flag "))
        .collect();
    assert!(csi_flags.contains(&"--csi-endpoint"), "{csi_flags:?}");
    let warmup_flags: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("warmup-flag "))
        .collect();
    assert!(warmup_flags.contains(&"--recursive"), "{warmup_flags:?}");
    assert_flags_exist("warmup", &warmup_flags, "a manifest");
    let csi_help = help("csi");
    for flag in csi_flags {
        assert!(
            csi_help.contains(&format!("{flag} ")),
            "a manifest uses {flag}, which `dfcache csi` does not have"
        );
    }
    // Every variable a mount is given is one `dfcache mount` reads.
    let mount_help = help("mount");
    for var in stdout
        .lines()
        .filter_map(|l| l.strip_prefix("mount-env "))
        .flat_map(str::split_whitespace)
    {
        assert!(
            mount_help.contains(&format!("env: {var}=")),
            "a manifest sets {var}, which `dfcache mount` does not read"
        );
    }
}

#[test]
fn the_dockerfile_builds_in_one_stage_and_ships_dfcache_with_fusermount3_in_another() {
    let text = read(&deploy("Dockerfile"));
    let stages: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(stages.len(), 2, "{stages:?}");
    assert!(stages[0].ends_with(" AS build"), "{}", stages[0]);
    assert!(
        !stages[1].contains("rust"),
        "the final image needs no toolchain"
    );
    let (build, run) = text.split_at(text.find(stages[1]).unwrap_or(0));
    assert!(build.contains("cargo build --release --locked"), "{build}");
    assert!(
        run.contains("install -y --no-install-recommends fuse3"),
        "{run}"
    );
    assert!(run.contains("rm -rf /var/lib/apt/lists/*"), "{run}");
    assert!(
        run.contains("COPY --from=build /src/target/release/dfcache /usr/local/bin/dfcache"),
        "{run}"
    );
    let ignored = read(&deploy("Dockerfile.dockerignore"));
    assert!(ignored.lines().any(|l| l == "target/"), "{ignored}");
    assert!(read(&guide()).contains("deploy/Dockerfile"));
}

/// `key=value` lines of a unit's section.
fn section<'a>(unit: &'a str, name: &str) -> Vec<(&'a str, &'a str)> {
    let header = format!("[{name}]");
    unit.lines()
        .skip_while(|l| l.trim() != header)
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect()
}

#[test]
fn the_systemd_unit_keeps_the_mount_across_a_restart_unmounts_on_stop_and_restarts_on_failure() {
    let path = deploy("systemd/dfcache-mount.service");
    let unit = read(&path);
    let service = section(&unit, "Service");
    let get = |key: &str| {
        service
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {key}= in [Service]"))
    };
    let start: Vec<&str> = get("ExecStart").split_whitespace().collect();
    assert_eq!(&start[..2], ["/usr/local/bin/dfcache", "mount"]);
    // The mount's connection and state in the file-descriptor store
    // (tests/fuse/systemd.rs plays this protocol against a real mount).
    assert!(
        start.windows(2).any(|w| w == ["--holder", "systemd"]),
        "{start:?}"
    );
    assert_eq!(get("Type"), "notify");
    assert!(get("FileDescriptorStoreMax").parse::<u32>().unwrap() >= 2);
    // restart steps down (the mount stays in the store); stop unmounts.
    assert_eq!(get("RestartKillSignal"), "SIGUSR2");
    assert_eq!(get("KillSignal"), "SIGTERM");
    // Anything run at stop would run at every restart too.
    assert!(
        !service.iter().any(|(k, _)| k.starts_with("ExecStop")),
        "{service:?}"
    );
    assert_eq!(get("Restart"), "on-failure");
    let flags: Vec<&str> = start
        .iter()
        .copied()
        .filter(|a| a.starts_with("--"))
        .collect();
    assert_mount_flags_exist(&flags, "the systemd unit");
    assert!(section(&unit, "Install").contains(&("WantedBy", "multi-user.target")));
    assert!(read(&guide()).contains("deploy/systemd/dfcache-mount.service"));

    // systemd's own check, where systemd is installed, with the binary
    // where the unit expects it replaced by the one under test.
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze not installed: skipping `systemd-analyze verify`");
        return;
    }
    let dir = tempdir();
    let copy = dir.path().join("dfcache-mount.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/dfcache", bin())).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("run systemd-analyze");
    succeeded(&out, "systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("dfcache-mount.service"),
        "systemd-analyze complains: {stderr}"
    );
}
