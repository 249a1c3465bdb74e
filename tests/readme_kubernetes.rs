//! The README's Kubernetes manifests parse as YAML, have the kinds the
//! README says, and are consistent: the dfdaemon socket directory is a
//! hostPath mounted where DFCACHE_ENDPOINT points, and every
//! DFCACHE_PATH_MAPPING entry maps a mounted volume's mountPath to that
//! volume's hostPath.

use std::process::Command;

const CHECK: &str = r###"
import sys, yaml
text = open(sys.argv[1]).read()
section = text.split("## Running in Kubernetes", 1)[1].split("\n## ", 1)[0]
blocks = [b.split("```", 1)[0] for b in section.split("```yaml\n")[1:]]
docs = [d for b in blocks for d in yaml.safe_load_all(b) if d]
kinds = [d["kind"] for d in docs]
assert kinds == ["Pod", "Pod", "DaemonSet"], kinds
for doc in docs:
    spec = doc["spec"]["template"]["spec"] if doc["kind"] == "DaemonSet" else doc["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    for c in spec["containers"]:
        env = {e["name"]: e["value"] for e in c.get("env", [])}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in c.get("volumeMounts", [])}
        if "DFCACHE_ENDPOINT" in env:
            sock_dir = env["DFCACHE_ENDPOINT"].rsplit("/", 1)[0]
            assert mounts[sock_dir]["hostPath"]["path"] == "/var/run/dragonfly", (doc["metadata"], c["name"])
        for entry in filter(None, env.get("DFCACHE_PATH_MAPPING", "").split(",")):
            container, host = entry.split(":")
            assert container in mounts, (c["name"], container, "is not a mounted volume")
            assert mounts[container]["hostPath"]["path"] == host, (c["name"], entry)
        if "mount" in c.get("command", []):
            assert c["securityContext"]["privileged"], c["name"]
print(len(docs), "manifests checked")
"###;

#[test]
fn readme_manifests_parse_and_are_consistent() {
    let readme = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let out = Command::new("python3")
        .arg("-c")
        .arg(CHECK)
        .arg(readme)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "3 manifests checked"
    );
}
