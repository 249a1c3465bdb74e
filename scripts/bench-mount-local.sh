#!/usr/bin/env bash
# The mount where the task's bytes are a file on this machine (passthrough),
# against that very file, all in one run, as ratios of medians:
#   --embedded:   cold / warm `dd bs=1M` of tasks/<id>  vs  of the store's content file
#                 random 4 KiB IOPS (fio psync)         vs  the same job on that file
#   released dfdaemon (`dfcache serve --legacy`, which hard-links its downloads
#   into the spool as dfdaemon does):
#                 first read of tasks/<id> (cold)       vs  `dfcache export` to a file, then `cat` it
#                 later opens, cold / warm / random     vs  the daemon's content file
# Run by scripts/bench-mount.sh (after the remote rows) or alone:
#   scripts/bench-mount-local.sh                  # 2 GiB, 3 runs
#   SIZE=512M RUNS=2 scripts/bench-mount-local.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"

SIZE="${SIZE:-2G}"
RUNS="${RUNS:-3}"
WORK="${WORK:-/var/tmp/dfcache-bench-local}"
FIO_SECONDS="${FIO_SECONDS:-5}"

command -v fio > /dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio > /dev/null; }
bash "$here/install-deps.sh"
build_release

mkdir -p "$WORK/src" "$WORK/mnt"
rm -rf "$WORK/estore" "$WORK/lstore" "$WORK/spool" "$WORK/out"
make_file "$WORK/src/f" "$SIZE"
bytes=$(stat -c %s "$WORK/src/f")
MOUNT_PID=""
DAEMON_PID=""
cleanup() {
  [ -z "$MOUNT_PID" ] || kill "$MOUNT_PID" 2> /dev/null || true
  [ -z "$DAEMON_PID" ] || kill "$DAEMON_PID" 2> /dev/null || true
  wait 2> /dev/null || true
  mountpoint -q "$WORK/mnt" && umount -l "$WORK/mnt"
  rm -rf "$WORK/estore" "$WORK/lstore" "$WORK/spool" "$WORK/out"
}
trap cleanup EXIT

# timed_dd FILE: seconds to read FILE with dd bs=1M.
timed_dd() {
  local s
  s=$(now)
  dd if="$1" of=/dev/null bs=1M status=none
  elapsed "$s"
}
# fio_iops FILE: random 4 KiB reads per second, page cache dropped first.
fio_iops() {
  COLD=1 settle
  fio --name=rand --filename="$1" --rw=randread --bs=4k --ioengine=psync --runtime="$FIO_SECONDS" \
    --time_based --readonly --output-format=terse --terse-version=3 2> /dev/null | awk -F';' '{ print $8 }'
}

# cold_warm_random TASK FILE PREFIX: the passthrough rows of one mode:
# cold and warm dd of TASK and FILE interleaved, then fio on both. The cold
# pair swaps its order every run: the second cold read of the same blocks
# can find them in the host's cache (seen: the file at 1458 MiB/s right
# after the mount's 971, where it read 1069-1120 in other runs).
cold_warm_random() {
  local task="$1" file="$2" p="$3"
  local cm=() cf=() wm=() wf=() run
  for run in $(seq "$RUNS"); do
    if ((run % 2)); then
      COLD=1 settle; cm+=("$(timed_dd "$task")")
      COLD=1 settle; cf+=("$(timed_dd "$file")")
    else
      COLD=1 settle; cf+=("$(timed_dd "$file")")
      COLD=1 settle; cm+=("$(timed_dd "$task")")
    fi
    cat "$file" > /dev/null
    for _ in 1 2 3; do wm+=("$(timed_dd "$task")"); wf+=("$(timed_dd "$file")"); done
  done
  local im ifl
  im=$(fio_iops "$task")
  ifl=$(fio_iops "$file")
  local c f w g
  c=$(median "${cm[@]}"); f=$(median "${cf[@]}"); w=$(median "${wm[@]}"); g=$(median "${wf[@]}")
  echo "  $p cold: mount $(mbps "$bytes" "$c") MiB/s, file $(mbps "$bytes" "$f") MiB/s: ratio $(ratio "$f" "$c")   (target >= 0.9)"
  echo "  $p warm: mount $(mbps "$bytes" "$w") MiB/s, file $(mbps "$bytes" "$g") MiB/s: ratio $(ratio "$g" "$w")   (target >= 0.9)"
  echo "  $p random 4 KiB: mount $im IOPS, file $ifl IOPS: ratio $(ratio "$im" "$ifl")   (target >= 0.8)"
}

echo "== --embedded, passthrough ($SIZE, $RUNS runs, medians)"
start_mount "$WORK/mnt" --embedded "$WORK/estore"
cp "$WORK/src/f" "$WORK/mnt/import/f"
id=$(getfattr --only-values -n user.dfcache.task_id "$WORK/mnt/import/f")
cold_warm_random "$WORK/mnt/tasks/$id" "$WORK/estore/tasks/$id.data" "embedded"
stop_mount

echo "== released dfdaemon (serve --legacy), downloads hard-linked into the spool"
"$DFCACHE" serve --legacy --socket "$WORK/l.sock" --dir "$WORK/lstore" -l warn &
DAEMON_PID=$!
for _ in $(seq 100); do [ -S "$WORK/l.sock" ] && break; sleep 0.05; done
# The daemon imports by hard link: give it a copy of its own.
cp "$WORK/src/f" "$WORK/given"
lid=$("$DFCACHE" import -e "$WORK/l.sock" --no-progress "$WORK/given")
rm -f "$WORK/given"
first=(); export_cat=()
for run in $(seq "$RUNS"); do
  mkdir -p "$WORK/out"
  COLD=1 settle; s=$(now)
  "$DFCACHE" export -e "$WORK/l.sock" --no-progress "$lid" -O "$WORK/out/f"
  cat "$WORK/out/f" > /dev/null
  export_cat+=("$(elapsed "$s")")
  rm -rf "$WORK/out"
  start_mount "$WORK/mnt" -e "$WORK/l.sock" --spool "$WORK/spool"
  COLD=1 settle; first+=("$(timed_dd "$WORK/mnt/tasks/$lid")")
  if [ "$run" != "$RUNS" ]; then stop_mount; fi
  echo "run $run: export+cat ${export_cat[-1]}s  first read through the mount ${first[-1]}s"
done
fm=$(median "${first[@]}"); ec=$(median "${export_cat[@]}")
echo "  first read of tasks/<id>: $(mbps "$bytes" "$fm") MiB/s; export then cat: $(mbps "$bytes" "$ec") MiB/s: first / (export+cat) = $(ratio "$fm" "$ec")   (target <= 1.5)"
# The mount of the last run holds the finished download: later opens pass through.
cold_warm_random "$WORK/mnt/tasks/$lid" "$WORK/lstore/tasks/$lid.data" "released, later opens,"
stop_mount
