#!/usr/bin/env bash
# The mount against its baselines, all in one run, as ratios of medians:
#   cold `dd bs=1M` of tasks/<id>   vs  `dfcache export --stream-mode` of the task (to tmpfs)
#   warm re-read of tasks/<id>      vs  the source read warm through `bindfs -o kernel_cache`
#   `cp F mnt/import/`              vs  `dfcache import --stream-mode F`
#   random 4 KiB reads (fio psync) at 1, 4 and 16 readers, beside bindfs's IOPS
# and the mount's peak RSS reading a larger task (default 4 GiB) with --cache-size 64mib.
#
#   scripts/bench-mount.sh                        # 2 GiB, 3 runs
#   SIZE=512M BIG=1G RUNS=2 scripts/bench-mount.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"

SIZE="${SIZE:-2G}"
BIG="${BIG:-4G}"
RUNS="${RUNS:-3}"
WORK="${WORK:-/var/tmp/dfcache-bench-mount}"
RSS_LIMIT_KIB=$((160 * 1024))

need=()
command -v bindfs > /dev/null || need+=(bindfs)
command -v fio > /dev/null || need+=(fio)
[ ${#need[@]} -eq 0 ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" > /dev/null; }
bash "$here/install-deps.sh"
build_release

mkdir -p "$WORK/src" "$WORK/mnt" "$WORK/bind"
rm -rf "$WORK/store" "/dev/shm/dfcache-bench-out"
make_file "$WORK/src/f" "$SIZE"
start_daemon "$WORK"
MOUNT_PID=""
cleanup() {
  [ -z "$MOUNT_PID" ] || kill "$MOUNT_PID" 2> /dev/null || true
  sleep 0.5
  mountpoint -q "$WORK/mnt" && umount -l "$WORK/mnt"
  mountpoint -q "$WORK/bind" && umount -l "$WORK/bind"
  kill "$DAEMON_PID" 2> /dev/null || true
  wait 2> /dev/null || true
  rm -rf "$WORK/store" "/dev/shm/dfcache-bench-out"
}
trap cleanup EXIT

# A mount on the separate daemon (lib.sh's start_mount/stop_mount).
mount_dfcache() { start_mount "$WORK/mnt" -e "$DFCACHE_ENDPOINT" "$@"; }
umount_dfcache() { stop_mount; }
bytes=$(stat -c %s "$WORK/src/f")

id=$("$DFCACHE" import --stream-mode --no-progress "$WORK/src/f")
bindfs -o kernel_cache "$WORK/src" "$WORK/bind"

# Before each timed step: flush, drop the page cache, re-read the source.
# On these VMs memory the kernel has not used recently is slow to touch the
# first time (seen: the same export 1.3 s after a drop, 5.8 s without), so
# every step starts from the same state.
fresh() {
  COLD=1 settle
  cat "$WORK/src/f" > /dev/null
}

exp_t=(); cold_t=(); warm_t=(); bind_t=(); cp_t=(); imp_t=()
for run in $(seq "$RUNS"); do
  fresh; s=$(now); "$DFCACHE" export --stream-mode --no-progress "$id" -O /dev/shm/dfcache-bench-out; exp_t+=("$(elapsed "$s")")
  rm -f /dev/shm/dfcache-bench-out

  mount_dfcache
  COLD=1 settle; s=$(now); dd if="$WORK/mnt/tasks/$id" of=/dev/null bs=1M status=none; cold_t+=("$(elapsed "$s")")
  # Warm: both files fully in the page cache; three passes each,
  # interleaved (single warm reads vary by 2x here).
  cat "$WORK/mnt/tasks/$id" "$WORK/bind/f" > /dev/null
  for _ in 1 2 3; do
    s=$(now); dd if="$WORK/mnt/tasks/$id" of=/dev/null bs=1M status=none; warm_t+=("$(elapsed "$s")")
    s=$(now); dd if="$WORK/bind/f" of=/dev/null bs=1M status=none; bind_t+=("$(elapsed "$s")")
  done

  "$DFCACHE" rm "$id" 2> /dev/null
  fresh; s=$(now); cp "$WORK/src/f" "$WORK/mnt/import/f$run"; cp_t+=("$(elapsed "$s")")
  id=$(getfattr --only-values -n user.dfcache.task_id "$WORK/mnt/import/f$run")
  "$DFCACHE" rm "$id" 2> /dev/null
  fresh; s=$(now); id=$("$DFCACHE" import --stream-mode --no-progress "$WORK/src/f"); imp_t+=("$(elapsed "$s")")
  umount_dfcache
  echo "run $run: export ${exp_t[-1]}s  cold dd ${cold_t[-1]}s  warm dd ${warm_t[-1]}s  bindfs warm ${bind_t[-1]}s  cp->import/ ${cp_t[-1]}s  import ${imp_t[-1]}s"
done

# ---- Remote streaming path: random 4 KiB reads at 1, 4 and 16 readers ----
# A fresh mount for each reader count (its page cache starts empty), and
# bindfs beside it; both page caches dropped before each job.
READERS="${READERS:-1 4 16}"
# fio_iops FILE READERS: IOPS of fio's psync 4 KiB random reads.
fio_iops() {
  COLD=1 settle
  fio --name=rand --filename="$1" --rw=randread --bs=4k --ioengine=psync --runtime=10 --time_based \
    --numjobs="$2" --group_reporting --readonly --output-format=terse --terse-version=3 2> /dev/null |
    awk -F';' '{ print $8 }'
}
declare -A dfc_iops bind_iops
remote_random_reads() {
  local n
  for n in $READERS; do
    mount_dfcache
    dfc_iops[$n]=$(fio_iops "$WORK/mnt/tasks/$id" "$n")
    umount_dfcache
    bind_iops[$n]=$(fio_iops "$WORK/bind/f" "$n")
  done
}
remote_random_report() {
  local n
  for n in $READERS; do
    echo "  random 4 KiB IOPS, $n reader(s): dfcache ${dfc_iops[$n]}, bindfs ${bind_iops[$n]}, ratio $(ratio "${dfc_iops[$n]}" "${bind_iops[$n]}")"
  done
}
remote_random_reads
# ---- end of the remote streaming section ----

# Peak RSS reading a larger task with a 64 MiB cache.
make_file "$WORK/src/big" "$BIG"
big_id=$("$DFCACHE" import --stream-mode --no-progress "$WORK/src/big")
mount_dfcache --cache-size 64mib
dd if="$WORK/mnt/tasks/$big_id" of=/dev/null bs=1M status=none
rss_kib=$(awk '/VmHWM/ { print $2 }' "/proc/$MOUNT_PID/status")
umount_dfcache

e=$(median "${exp_t[@]}"); c=$(median "${cold_t[@]}"); w=$(median "${warm_t[@]}"); b=$(median "${bind_t[@]}")
cp_m=$(median "${cp_t[@]}"); i=$(median "${imp_t[@]}")
echo
echo "medians of $RUNS runs, $SIZE task (MiB/s):"
echo "  export --stream-mode $(mbps "$bytes" "$e")  cold dd $(mbps "$bytes" "$c")  warm dd $(mbps "$bytes" "$w")  bindfs warm $(mbps "$bytes" "$b")"
echo "  cp into import/ $(mbps "$bytes" "$cp_m")  import --stream-mode $(mbps "$bytes" "$i")"
echo "  cold dd / export        = $(ratio "$e" "$c")   (target >= 0.9)"
echo "  warm dd / bindfs warm   = $(ratio "$b" "$w")   (target >= 0.9)"
echo "  cp import/ / import     = $(ratio "$i" "$cp_m")   (target >= 0.8)"
remote_random_report
echo "  mount peak RSS reading $BIG with --cache-size 64mib: $((rss_kib / 1024)) MiB (target < 160 MiB)"
rss_ok=0
[ "$rss_kib" -lt "$RSS_LIMIT_KIB" ] && rss_ok=1

# The same run goes on with the mount where the bytes are local
# (passthrough: the --embedded store, a released dfdaemon's linked downloads).
echo
SIZE="$SIZE" RUNS="$RUNS" bash "$here/bench-mount-local.sh"
[ "$rss_ok" = 1 ]
