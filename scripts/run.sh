#!/usr/bin/env bash
# The main job: builds dfcache and mounts it on an embedded daemon, in the
# foreground. Ctrl-C (or SIGTERM) unmounts cleanly.
#   DFCACHE_MOUNT   mount point          (default /mnt/dfcache)
#   DFCACHE_DIR     embedded store       (default /var/lib/dfcache)
# Extra arguments go to `dfcache mount` (e.g. --cache-size 1gib --spool /var/tmp/spool).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --quiet
mnt="${DFCACHE_MOUNT:-/mnt/dfcache}"
dir="${DFCACHE_DIR:-/var/lib/dfcache}"
echo "mounting dfcache at $mnt (embedded daemon, store $dir; socket $dir/dfdaemon.sock)"
echo "  cp FILE $mnt/import/     # becomes a task; getfattr -n user.dfcache.task_id $mnt/import/FILE"
echo "  cat $mnt/tasks/<id>      # reads it back, piece by piece"
exec target/release/dfcache mount "$mnt" --embedded "$dir" "$@"
