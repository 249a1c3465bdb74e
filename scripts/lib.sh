# Shared helpers for the benchmark and measurement scripts.
# shellcheck shell=bash

# now: seconds since the epoch, with nanoseconds.
now() { date +%s.%N; }

# elapsed START: seconds since START, 3 decimals.
elapsed() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.3f", e - s }'; }

# median V...: the median of the arguments.
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# mbps BYTES SECONDS: MiB/s, no decimals.
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / s / 1048576 }'; }

# ratio A B: A / B, 2 decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# settle: flush dirty pages so one measurement's writeback does not land on
# the next; with COLD=1 also drop the page cache. Then give every step the
# same memory to start from (see fresh_memory).
settle() {
  sync
  if [ "${COLD:-0}" = 1 ]; then echo 3 > /proc/sys/vm/drop_caches; fi
  fresh_memory
}

# fresh_memory: touch and free FRESH (default 5 GiB) of memory just before
# a timed step. These VMs report free memory to the host at once
# (virtio-balloon free page reporting, /sys/module/page_reporting), and a
# reported page costs a host fault when touched again: the same 2 GiB cp
# took 1.2 s or 6 s depending on what the previous step had freed. Freeing
# recently touched memory right before each step makes the baseline and
# the measured command start alike. FRESH=0 turns it off.
fresh_memory() {
  local size="${FRESH:-5G}"
  [ "$size" = 0 ] && return 0
  head -c "$size" /dev/zero > /dev/shm/dfcache-bench-fresh
  rm -f /dev/shm/dfcache-bench-fresh
}

# start_daemon DIR [BIN]: runs `BIN serve` (the release `dfcache` by
# default) on DIR/d.sock with its store in DIR/store; sets DAEMON_PID and
# exports DFCACHE_ENDPOINT.
start_daemon() {
  "${2:-$DFCACHE}" serve --socket "$1/d.sock" --dir "$1/store" -l warn &
  DAEMON_PID=$!
  export DFCACHE_ENDPOINT="$1/d.sock"
  for _ in $(seq 100); do [ -S "$1/d.sock" ] && return 0; sleep 0.05; done
  echo "daemon did not start" >&2
  return 1
}

# make_file PATH SIZE: SIZE (like 2G or 512M) random bytes; kept between
# runs when it already has that size.
make_file() {
  local bytes
  bytes=$(numfmt --from=iec "$2")
  [ "$(stat -c %s "$1" 2> /dev/null || echo 0)" = "$bytes" ] || head -c "$bytes" /dev/urandom > "$1"
}

build_release() {
  (cd "$(dirname "${BASH_SOURCE[0]}")/.." && cargo build --release --quiet)
  DFCACHE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/release/dfcache"
}

# start_mount MNT ARGS...: `dfcache mount MNT ARGS` in the background, once
# MNT is a live mount; sets MOUNT_PID.
start_mount() {
  local mnt="$1"
  shift
  "$DFCACHE" mount "$mnt" -l warn "$@" &
  MOUNT_PID=$!
  for _ in $(seq 200); do [ -d "$mnt/tasks" ] && mountpoint -q "$mnt" && return 0; sleep 0.05; done
  echo "mount did not come up" >&2
  return 1
}

# stop_mount: SIGTERM to the mount of start_mount, which unmounts.
stop_mount() {
  kill "$MOUNT_PID"
  wait "$MOUNT_PID" || true
  MOUNT_PID=""
}
