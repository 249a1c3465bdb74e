#!/usr/bin/env bash
# The remote read path at scale: a mount on a separate `dfcache serve`
# (no passthrough) reading a big task with 64 MiB pieces (what a 16 GiB
# file gets by the default rule) against a 2 GiB task with 4 MiB pieces,
# each with --cache-size 64mib and 256mib, all in one run:
#   - sequential `dd bs=1M` through the mount, one open file, per GiB
#     (steady from start to end?), daemon's file cold before each read;
#   - the big task's MB/s against the 2 GiB task's (target: within 10%);
#   - `sha256sum` through the mount against `sha256sum` of the daemon's
#     own content file, both cold (target >= 0.9);
#   - the mount's peak RSS against --cache-size + 96 MiB;
#   - the baseline, in the same run: the same per-GiB `dd` of the daemon's
#     own content files, cold, so a fall that the machine itself shows
#     (its page cache, the VM's memory) is told apart from the mount's.
#
#   scripts/bench-scale.sh                 # 16 GiB
#   SIZE=4G scripts/bench-scale.sh         # quicker, same geometry
# The big task is written through the mount's import/ from /dev/urandom,
# so only the daemon's copy takes disk space (SIZE + 2 GiB, checked first).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"

SIZE="${SIZE:-16G}"
SMALL="${SMALL:-2G}"
WORK="${WORK:-/var/tmp/dfcache-bench-scale}"
SLACK_MIB=96

bash "$here/install-deps.sh"
build_release

mkdir -p "$WORK/mnt"
rm -rf "$WORK/store"
big_bytes=$(numfmt --from=iec "$SIZE")
small_bytes=$(numfmt --from=iec "$SMALL")
need_kib=$(((big_bytes + 2 * small_bytes) / 1024 + 1048576))
avail_kib=$(df --output=avail -k "$WORK" | tail -1)
if [ "$avail_kib" -lt "$need_kib" ]; then
  echo "$WORK has $((avail_kib / 1048576)) GiB free; this needs $((need_kib / 1048576)) GiB" >&2
  exit 1
fi

start_daemon "$WORK"
MOUNT_PID=""
cleanup() {
  [ -z "$MOUNT_PID" ] || kill "$MOUNT_PID" 2> /dev/null || true
  for _ in $(seq 100); do mountpoint -q "$WORK/mnt" || break; sleep 0.05; done
  mountpoint -q "$WORK/mnt" && umount -l "$WORK/mnt"
  kill "$DAEMON_PID" 2> /dev/null || true
  wait 2> /dev/null || true
  rm -rf "$WORK/store" "$WORK/small"
}
trap cleanup EXIT

# A mount on the separate daemon (lib.sh's start_mount/stop_mount).
mount_dfcache() { start_mount "$WORK/mnt" -e "$DFCACHE_ENDPOINT" "$@"; }
umount_dfcache() { stop_mount; }
# mb_per_s BYTES SECONDS: decimal MB/s, as the issue states its figures.
mb_per_s() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / s / 1000000 }'; }
content() { echo "$WORK/store/tasks/$1.data"; }

# The tasks: the big one streamed through import/ with 64 MiB pieces, the
# small one imported from a file with its default (4 MiB) pieces.
mount_dfcache --piece-length 64mib
head -c "$big_bytes" /dev/urandom > "$WORK/mnt/import/big"
big_id=$(getfattr --absolute-names --only-values -n user.dfcache.task_id "$WORK/mnt/import/big")
umount_dfcache
make_file "$WORK/small" "$SMALL"
small_id=$("$DFCACHE" import --stream-mode --no-progress "$WORK/small")
rm -f "$WORK/small"

# read_per_gib FILE BYTES: one open file read front to back in 1 GiB
# steps; prints the MB/s of each step, then the whole read's seconds last.
read_per_gib() {
  local gib=$(($2 / 1073741824)) s t0 out=()
  [ "$gib" -ge 1 ] || gib=1
  exec 3< "$1"
  t0=$(now)
  for _ in $(seq "$gib"); do
    s=$(now)
    dd bs=1M count=1024 of=/dev/null status=none <&3
    out+=("$(mb_per_s 1073741824 "$(elapsed "$s")")")
  done
  dd bs=1M of=/dev/null status=none <&3 # any tail
  exec 3<&-
  echo "${out[*]} $(elapsed "$t0")"
}

# The baseline: each daemon content file read the same way, cold.
declare -A file_secs
for task in big small; do
  id=$big_id bytes=$big_bytes
  [ "$task" = small ] && id=$small_id bytes=$small_bytes
  COLD=1 settle
  line=$(read_per_gib "$(content "$id")" "$bytes")
  file_secs[$task]=${line##* }
  echo "$task task's daemon file (baseline): MB/s per GiB: ${line% *}"
done

declare -A secs rss
for cache in 64mib 256mib; do
  for task in big small; do
    id=$big_id bytes=$big_bytes
    [ "$task" = small ] && id=$small_id bytes=$small_bytes
    mount_dfcache --cache-size "$cache"
    COLD=1 settle
    line=$(read_per_gib "$WORK/mnt/tasks/$id" "$bytes")
    secs[$task.$cache]=${line##* }
    rss[$task.$cache]=$(awk '/VmHWM/ { print int($2 / 1024) }' "/proc/$MOUNT_PID/status")
    umount_dfcache
    echo "$task task, --cache-size $cache: MB/s per GiB: ${line% *}; peak RSS ${rss[$task.$cache]} MiB"
  done
done

# sha256sum (coreutils reads 32 KiB at a time) through the mount against
# the daemon's own content file, both cold.
mount_dfcache
COLD=1 settle
s=$(now); via_mount=$(sha256sum "$WORK/mnt/tasks/$big_id" | cut -d' ' -f1); sha_mount=$(elapsed "$s")
umount_dfcache
COLD=1 settle
s=$(now); direct=$(sha256sum "$(content "$big_id")" | cut -d' ' -f1); sha_file=$(elapsed "$s")
[ "$via_mount" = "$direct" ] || { echo "sha256 through the mount differs from the daemon's file" >&2; exit 1; }

echo
echo "$SIZE task (64 MiB pieces) against the $SMALL task (4 MiB pieces), MB/s:"
fb=$(mb_per_s "$big_bytes" "${file_secs[big]}"); fs=$(mb_per_s "$small_bytes" "${file_secs[small]}")
echo "  baseline, the daemon's files: big $fb, small $fs, big / small = $(ratio "$fb" "$fs")"
fail=0
for cache in 64mib 256mib; do
  b=$(mb_per_s "$big_bytes" "${secs[big.$cache]}"); m=$(mb_per_s "$small_bytes" "${secs[small.$cache]}")
  echo "  --cache-size $cache: big $b, small $m, big / small = $(ratio "$b" "$m") (target >= 0.9);" \
    "against the files: big $(ratio "$b" "$fb"), small $(ratio "$m" "$fs")"
  limit=$((${cache%mib} + SLACK_MIB))
  for task in big small; do
    echo "  peak RSS, $task task, --cache-size $cache: ${rss[$task.$cache]} MiB (target < $limit)"
    [ "${rss[$task.$cache]}" -lt "$limit" ] || fail=1
  done
done
echo "  sha256sum through the mount $(mb_per_s "$big_bytes" "$sha_mount") MB/s, of the daemon's file $(mb_per_s "$big_bytes" "$sha_file") MB/s: ratio $(ratio "$sha_file" "$sha_mount") (target >= 0.9)"
exit "$fail"
