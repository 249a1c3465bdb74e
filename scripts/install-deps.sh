#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and test dfcache: FUSE 3
# (fusermount3, setuid root, for mounts by users other than root; and
# /dev/fuse access), getfattr, and the programs the tests
# and benchmarks drive. Needs root (or sudo) for apt-get; a no-op when
# everything is present.
set -euo pipefail

need=()
# cargo links with the system's cc, which rustup does not install.
command -v cc > /dev/null || need+=(gcc libc6-dev)
command -v fusermount3 > /dev/null || need+=(fuse3)
command -v getfattr > /dev/null || need+=(attr)
command -v mountpoint > /dev/null || need+=(util-linux)
[ -x /usr/bin/time ] || need+=(time)
command -v python3 > /dev/null || need+=(python3)
command -v rsync > /dev/null || need+=(rsync)
# The metrics tests scrape with curl; the unprivileged-mount tests make a
# user (useradd) and run as it (setpriv).
command -v curl > /dev/null || need+=(curl)
command -v useradd > /dev/null || need+=(passwd)
command -v setpriv > /dev/null || need+=(util-linux)
# The power-loss tests put a store on a loop-mounted ext4 image.
command -v mkfs.ext4 > /dev/null || need+=(e2fsprogs)
command -v losetup > /dev/null || need+=(mount)
# The tests signal daemons with kill(1), a program (procps), not the shell's
# builtin: `type -P` looks for the program only.
type -P kill > /dev/null || need+=(procps)

# The manifests are played by a real container runtime (tests/kube/):
# podman with runc (crun refuses hybrid cgroups) and catatonit, the init
# of the pause image podman builds for every pod (a recommends of podman's,
# which --no-install-recommends leaves out); busybox for the image's shell
# and probes.
command -v podman > /dev/null || need+=(podman)
command -v runc > /dev/null || need+=(runc)
command -v catatonit > /dev/null || [ -x /usr/libexec/podman/catatonit ] || need+=(catatonit)
command -v busybox > /dev/null || need+=(busybox)

# PyYAML, for the test that parses the Kubernetes manifests: Debian's
# package (pip refuses to install into Debian's python3, PEP 668, and
# python3-pip is not installed on a fresh machine).
python3 -c 'import yaml' 2> /dev/null || need+=(python3-yaml)

if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" > /dev/null
fi

command -v cargo > /dev/null || { echo "cargo is missing: install Rust (rustup) first" >&2; exit 1; }

# A python3 that is not Debian's (pyenv, a virtualenv) does not see
# python3-yaml: pip is its way.
if ! python3 -c 'import yaml' 2> /dev/null; then
  python3 -m pip install -q pyyaml || { echo "cannot install PyYAML for $(command -v python3) (pip)" >&2; exit 1; }
fi
