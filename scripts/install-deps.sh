#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and test dfcache: FUSE 3
# (fusermount3, setuid root, for mounts by users other than root; and
# /dev/fuse access), getfattr, and the programs the tests
# and benchmarks drive. Needs root (or sudo) for apt-get; a no-op when
# everything is present.
set -euo pipefail

need=()
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

# PyYAML, for the test that parses the README's Kubernetes manifests.
python3 -c 'import yaml' 2> /dev/null || pip_yaml=1

if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" > /dev/null
fi

command -v cargo > /dev/null || { echo "cargo is missing: install Rust (rustup) first" >&2; exit 1; }

if [ "${pip_yaml:-0}" = 1 ]; then
  python3 -m pip install -q pyyaml || { echo "cannot install PyYAML (pip)" >&2; exit 1; }
fi
