//! The manifests of deploy/kubernetes/, made playable by podman on this
//! machine, changing only what a test node differs in (no registry, the
//! node's paths under a directory of the test's, no kubelet):
//!
//! - every image is the test's image;
//! - every hostPath (and the host side of DFCACHE_PATH_MAPPING) moves
//!   under the test's node directory; an emptyDir becomes a directory
//!   there too, as kubelet keeps it on the node;
//! - a DaemonSet is played as its pod template (podman 4.3 plays Pods);
//! - a `csi` volume becomes the hostPath of the target the test published
//!   it at (kubelet bind-mounts the target into the container the same way);
//! - containers podman cannot run are left out (the registrar: its image
//!   is in no registry here, and the test is the kubelet it registers with);
//! - probes and hooks are taken out: the test runs their commands in the
//!   containers, as kubelet would;
//! - a native sidecar (init container, restartPolicy: Always; podman 4.3
//!   has none) becomes the first container: the test starts it, waits for
//!   its startupProbe, then starts the others, as kubelet would;
//! - `valueFrom` (downward API) becomes a fixed value; restartPolicy is
//!   Never, so the test decides when a container restarts;
//! - placeholders (`<tree id>`, `<task id>`) become the test's ids.

use std::path::Path;
use std::process::Command;

use crate::common::succeeded;

const TRANSLATE: &str = r###"
import json, sys, yaml
manifest, config = sys.argv[1], json.loads(sys.argv[2])
doc = yaml.safe_load(open(manifest))
root = config["root"]
if doc["kind"] == "DaemonSet":
    template = doc["spec"]["template"]
    doc = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": doc["metadata"]["name"], "labels": template["metadata"].get("labels", {})},
           "spec": template["spec"]}
assert doc["kind"] == "Pod", doc["kind"]
name = config["name"]
doc["metadata"]["name"] = name
spec = doc["spec"]
spec["restartPolicy"] = "Never"
sidecars = [c for c in spec.pop("initContainers", []) if c.get("restartPolicy") == "Always"]
spec["containers"] = sidecars + spec["containers"]
spec["containers"] = [c for c in spec["containers"] if c["name"] not in config.get("drop", [])]
for c in spec["containers"]:
    c["image"] = config["image"]
    for key in ("restartPolicy", "startupProbe", "livenessProbe", "readinessProbe", "lifecycle"):
        c.pop(key, None)
    for e in c.get("env", []):
        if "valueFrom" in e:
            e.pop("valueFrom")
            e["value"] = config["node_name"]
        if e["name"] == "DFCACHE_PATH_MAPPING":
            e["value"] = ",".join(c_ + ":" + root + h for c_, h in (p.split(":") for p in e["value"].split(",")))
    c["env"] = c.get("env", []) + [{"name": k, "value": v} for k, v in config.get("env", {}).get(c["name"], {}).items()]
    if c.get("command"):
        c["command"] = [config.get("replace", {}).get(a, a) for a in c["command"]]
for e in (e for c in spec["containers"] for e in c.get("env", [])):
    for old, new in config.get("replace", {}).items():
        e["value"] = e["value"].replace(old, new)
for v in spec.get("volumes", []):
    if "hostPath" in v:
        v["hostPath"]["path"] = root + v["hostPath"]["path"]
    elif "emptyDir" in v:
        v.pop("emptyDir")
        v["hostPath"] = {"path": root + "/var/lib/kubelet/pods/" + name + "/" + v["name"], "type": "DirectoryOrCreate"}
    elif "csi" in v:
        v.pop("csi")
        v["hostPath"] = {"path": config["csi_targets"][v["name"]], "type": "Directory"}
print(yaml.safe_dump(doc, sort_keys=False))
"###;

/// Options of one translation (see the module's documentation).
#[derive(Default)]
pub struct Translation<'a> {
    /// The pod's name under podman.
    pub name: &'a str,
    pub image: &'a str,
    /// The test's node directory: hostPaths move under it.
    pub root: &'a str,
    /// Containers left out.
    pub drop: &'a [&'a str],
    /// Extra environment, by container.
    pub env: &'a [(&'a str, &'a str, &'a str)],
    /// Placeholders and their values.
    pub replace: &'a [(&'a str, &'a str)],
    /// `csi` volumes, by name: where their target is on the host.
    pub csi_targets: &'a [(&'a str, &'a Path)],
}

/// The pod manifest podman plays for deploy/kubernetes/`file`.
pub fn translate(file: &str, t: &Translation) -> String {
    let manifest = format!("{}/deploy/kubernetes/{file}", env!("CARGO_MANIFEST_DIR"));
    let mut env = serde_json::Map::new();
    for (container, key, value) in t.env {
        let vars = env
            .entry(container.to_string())
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
        if let serde_json::Value::Object(vars) = vars {
            vars.insert(key.to_string(), (*value).into());
        }
    }
    let replace: serde_json::Map<String, serde_json::Value> = t
        .replace
        .iter()
        .map(|(k, v)| (k.to_string(), (*v).into()))
        .collect();
    let csi_targets: serde_json::Map<String, serde_json::Value> = t
        .csi_targets
        .iter()
        .map(|(k, p)| (k.to_string(), p.to_string_lossy().into()))
        .collect();
    let config = serde_json::json!({
        "name": t.name,
        "image": t.image,
        "root": t.root,
        "node_name": "kube-play-node",
        "drop": t.drop,
        "env": env,
        "replace": replace,
        "csi_targets": csi_targets,
    });
    let out = Command::new("python3")
        .arg("-c")
        .arg(TRANSLATE)
        .arg(&manifest)
        .arg(config.to_string())
        .output()
        .expect("run python3");
    succeeded(&out, format_args!("translating {file}"))
}

/// A command of a container of deploy/kubernetes/`file`, by its path in
/// the container ("livenessProbe.exec.command"): what the test runs where
/// kubelet would.
pub fn container_command(file: &str, container: &str, path: &str) -> Vec<String> {
    let manifest = format!("{}/deploy/kubernetes/{file}", env!("CARGO_MANIFEST_DIR"));
    let code = "import sys, yaml\n\
                doc = yaml.safe_load(open(sys.argv[1]))\n\
                spec = doc['spec']['template']['spec'] if doc['kind'] == 'DaemonSet' else doc['spec']\n\
                node = [c for c in spec.get('initContainers', []) + spec['containers'] if c['name'] == sys.argv[2]][0]\n\
                for key in sys.argv[3].split('.'):\n    node = node[key]\n\
                print('\\n'.join(node))\n";
    let out = Command::new("python3")
        .args(["-c", code, &manifest, container, path])
        .output()
        .expect("run python3");
    succeeded(
        &out,
        format_args!("reading {path} of {container} in {file}"),
    )
    .lines()
    .map(str::to_string)
    .collect()
}
