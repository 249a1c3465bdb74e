#!/usr/bin/env bash
# The manifests of deploy/kubernetes/ played under podman (tests/kube/), with
# the released dfdaemon of ../shared/dragonfly/ as the node's daemon instead
# of `dfcache serve`; prints each step and the model pod's time from
# `podman kube play` to its first read. Needs root, podman and runc, and
# ../shared/dragonfly/install.sh run once.
set -euo pipefail
cd "$(dirname "$0")/.."
DFCACHE_KUBE_DFDAEMON=1 cargo test --test kube -- --nocapture
