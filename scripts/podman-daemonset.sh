#!/usr/bin/env bash
# The node DaemonSet (deploy/kubernetes/node-daemonset.yaml) run by a real
# container runtime: its pod template played with `podman kube play` (podman
# 4.3 plays no DaemonSet, so its pod template as a Pod), on a daemon running
# on the host as a node's dfdaemon would, and a consumer pod that reads the
# node's mount through a hostPath with mountPropagation: HostToContainer.
# The consumer opens a task and reads part of it; the dfcache container is
# restarted (`podman restart`: SIGTERM, as kubelet restarts a container for a
# failed probe or a new image), then killed (SIGKILL, a crash) and started
# again; the consumer reads on through the same descriptor, and the bytes
# are checked.
#
#   scripts/podman-daemonset.sh        # root; installs podman and runc if missing
#
# What this machine needs (../shared/LIMITS.md): runc (crun refuses hybrid
# cgroups) and rlimits podman may set; both in a containers.conf of the
# run's own (CONTAINERS_CONF), the machine's is left alone. No registry is
# reachable: the image is made from the release binary (`podman import`).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"

WORK="${WORK:-/var/tmp/dfcache-podman}"
IMAGE=localhost/dfcache-daemonset-test:latest
POD=dfcache-mount
CONSUMER=dfcache-consumer

need=()
command -v podman > /dev/null || need+=(podman)
command -v runc > /dev/null || need+=(runc)
command -v busybox > /dev/null || need+=(busybox-static)
[ ${#need[@]} -eq 0 ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" > /dev/null; }
build_release

DAEMON_PID=""
cleanup() {
  set +e
  [ -f "$WORK/consumer.yaml" ] && podman kube down "$WORK/consumer.yaml" > /dev/null 2>&1
  [ -f "$WORK/pod.yaml" ] && podman kube down "$WORK/pod.yaml" > /dev/null 2>&1
  podman rmi -f "$IMAGE" > /dev/null 2>&1
  mountpoint -q "$NODE/var/lib/dfcache/mnt" && umount -l "$NODE/var/lib/dfcache/mnt"
  mountpoint -q "$NODE/var/lib/dfcache" && umount -l "$NODE/var/lib/dfcache"
  [ -z "$DAEMON_PID" ] || kill "$DAEMON_PID" 2> /dev/null
  wait 2> /dev/null
  rm -rf "$WORK"
}
NODE="$WORK/node"
trap cleanup EXIT
rm -rf "$WORK"
mkdir -p "$WORK/rootfs" "$NODE/var/lib/dfcache/spool" "$NODE/run/dragonfly" "$WORK/out"

export CONTAINERS_CONF="$WORK/containers.conf"
cat > "$CONTAINERS_CONF" << 'EOF'
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
EOF

# The image: the release binary and the libraries it links, fusermount3,
# and busybox for the probe's stat and the consumer's shell.
root="$WORK/rootfs"
mkdir -p "$root/usr/local/bin" "$root/bin" "$root/tmp" "$root/run" "$root/dev" "$root/proc" "$root/sys" "$root/etc"
cp "$DFCACHE" "$root/usr/local/bin/dfcache"
cp /usr/bin/fusermount3 "$root/bin/"
for lib in $( (ldd "$DFCACHE"; ldd /usr/bin/fusermount3) | grep -o '/[^ ]*' | sort -u); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cp "$(command -v busybox)" "$root/bin/busybox"
for tool in sh stat cat dd sleep sha256sum ls touch test mkdir; do ln -s busybox "$root/bin/$tool"; done
printf 'PATH=/usr/local/bin:/bin\n' > "$root/etc/environment"
tar -C "$root" -cf "$WORK/rootfs.tar" .
podman import --change 'ENV PATH=/usr/local/bin:/bin' "$WORK/rootfs.tar" "$IMAGE" > /dev/null

# The node: its dfdaemon (the embedded daemon on the host's socket), and
# /var/lib/dfcache in a shared peer group, as on a systemd node.
"$DFCACHE" serve --socket "$NODE/run/dragonfly/dfdaemon.sock" --dir "$WORK/store" -l warn &
DAEMON_PID=$!
for _ in $(seq 100); do [ -S "$NODE/run/dragonfly/dfdaemon.sock" ] && break; sleep 0.05; done
mount --bind "$NODE/var/lib/dfcache" "$NODE/var/lib/dfcache"
mount --make-rshared "$NODE/var/lib/dfcache"
make_file "$WORK/src" 64M
id=$("$DFCACHE" -e "$NODE/run/dragonfly/dfdaemon.sock" import --stream-mode --no-progress "$WORK/src")

# The DaemonSet's pod template as a Pod, with the node's paths and the image.
python3 - "$here/../deploy/kubernetes/node-daemonset.yaml" "$WORK/pod.yaml" "$NODE" "$IMAGE" << 'EOF'
import sys, yaml
src, out, node, image = sys.argv[1:5]
ds = yaml.safe_load(open(src))
spec = ds["spec"]["template"]["spec"]
for c in spec["containers"]:
    c["image"] = image
    c["command"][0] = "/usr/local/bin/dfcache"
for v in spec["volumes"]:
    if "hostPath" in v:
        v["hostPath"]["path"] = node + v["hostPath"]["path"].replace("/var/run/", "/run/")
pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": ds["metadata"]["name"]}, "spec": spec}
yaml.safe_dump(pod, open(out, "w"))
EOF

# The consumer: opens the task on descriptor 3, reads its first 24 MiB,
# then, once told, the rest, through the same descriptor.
cat > "$WORK/consumer.yaml" << EOF
apiVersion: v1
kind: Pod
metadata: { name: $CONSUMER }
spec:
  restartPolicy: Never
  containers:
    - name: reader
      image: $IMAGE
      command:
        - /bin/sh
        - -c
        - |
          exec 3< /data/mnt/tasks/$id
          dd bs=1M count=24 <&3 of=/out/first 2> /dev/null
          touch /out/ready
          while [ ! -e /out/go ]; do sleep 0.1; done
          cat <&3 > /out/rest && touch /out/done
      volumeMounts:
        - { name: node, mountPath: /data, mountPropagation: HostToContainer }
        - { name: out, mountPath: /out }
  volumes:
    - name: node
      hostPath: { path: $NODE/var/lib/dfcache, type: Directory }
    - name: out
      hostPath: { path: $WORK/out, type: Directory }
EOF

# wait_for WHAT SECONDS CMD...: polls CMD until it succeeds.
wait_for() {
  local what="$1" secs="$2"
  shift 2
  for _ in $(seq $((secs * 10))); do "$@" > /dev/null 2>&1 && return 0; sleep 0.1; done
  echo "FAILED: $what" >&2
  podman logs "$POD-dfcache" 2>&1 | tail -20 >&2 || true
  return 1
}
mounted() { mountpoint -q "$NODE/var/lib/dfcache/mnt" && [ -d "$NODE/var/lib/dfcache/mnt/tasks" ]; }

podman kube play "$WORK/pod.yaml" > /dev/null
wait_for "the node mount" 60 mounted
wait_for "the holder container to hold the mount" 60 sh -c "podman logs $POD-dfcache 2>&1 | grep -q 'held for the next process'"
podman kube play "$WORK/consumer.yaml" > /dev/null
wait_for "the consumer's first read" 60 test -e "$WORK/out/ready"

echo "restarting the dfcache container (SIGTERM, as kubelet does)"
podman restart "$POD-dfcache" > /dev/null
wait_for "the restarted dfcache to take the mount over" 60 sh -c "podman logs $POD-dfcache 2>&1 | grep -c 'took the mount over' | grep -qx 1"
echo "killing the dfcache container (SIGKILL, a crash) and starting it again"
podman kill -s KILL "$POD-dfcache" > /dev/null
podman start "$POD-dfcache" > /dev/null
wait_for "the started dfcache to take the mount over" 60 sh -c "podman logs $POD-dfcache 2>&1 | grep -c 'took the mount over' | grep -qx 2"

touch "$WORK/out/go"
wait_for "the consumer to read the rest" 60 test -e "$WORK/out/done"
if cat "$WORK/out/first" "$WORK/out/rest" | cmp -s - "$WORK/src"; then
  echo "OK: the consumer's open file read $(stat -c %s "$WORK/src") right bytes across a restart and a crash of the dfcache container"
else
  echo "FAILED: the consumer read other bytes" >&2
  exit 1
fi
podman logs "$POD-dfcache" 2>&1 | grep -E "no takeover|took the mount over|restored" | cut -c1-160
