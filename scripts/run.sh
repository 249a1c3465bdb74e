#!/usr/bin/env bash
# The main job: builds dfcache and runs the embedded daemon in the
# foreground. Ctrl-C (or SIGTERM) stops it cleanly.
#   DFCACHE_DIR     store directory      (default /tmp/dfcache/store)
#   DFCACHE_SOCKET  socket to listen on  (default /tmp/dfcache/dfdaemon.sock)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --quiet
dir="${DFCACHE_DIR:-/tmp/dfcache/store}"
socket="${DFCACHE_SOCKET:-/tmp/dfcache/dfdaemon.sock}"
echo "dfcache daemon on $socket (store $dir). In another shell:"
echo "  export DFCACHE_ENDPOINT=$socket"
exec target/release/dfcache serve --socket "$socket" --dir "$dir"
