#!/usr/bin/env bash
# Stream import and export through `dfcache serve` against cp and sha256sum
# of the same file, all in one run, as ratios of medians.
#
#   scripts/bench-transfer.sh            # 2 GiB, 5 runs, warm page cache
#   SIZE=512M RUNS=3 scripts/bench-transfer.sh
#   COLD=1 scripts/bench-transfer.sh     # drop the page cache before each step
#
# On these VMs, memory the kernel has not used recently is slow to touch
# the first time (the same export: 1.3 s after a cache drop, 5.8 s
# without), so COLD=1 gives the steadier comparison.
#
# Every step starts after `sync`, so no step pays for another's writeback.
# Import includes hashing and the daemon's fsync; cp does not fsync, which
# is why "cp+sync" (the same durability as an import) is shown beside it.
# An export fsyncs its output before renaming it into place (an export
# that returned survives a power cut), so it too is shown against cp+sync.
#
# "disk" is the disk work a durable import must do, and nothing else: a
# direct read of the source while as many bytes are written directly and
# fsynced (two dd's, 16 MiB requests like the import's). cp only reads (its
# writes stay in the page cache until the next step's sync). On a disk that
# shares its bandwidth between reads and writes, disk / cp is about where
# import / cp bottoms out; import / disk shows what dfcache adds to that.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"

SIZE="${SIZE:-2G}"
RUNS="${RUNS:-5}"
WORK="${WORK:-/var/tmp/dfcache-bench}"

bash "$here/install-deps.sh"
build_release
mkdir -p "$WORK"
rm -rf "$WORK/store" "$WORK/out" "$WORK/copy" "$WORK/disk-work"
make_file "$WORK/src" "$SIZE"
start_daemon "$WORK"
trap 'kill $DAEMON_PID 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK/store" "$WORK/out" "$WORK/copy" "$WORK/disk-work"' EXIT

# disk_work: read the source and write as many bytes, both direct, at once.
disk_work() {
  local blocks=$(($(stat -c %s "$WORK/src") / 16777216))
  dd if="$WORK/src" of=/dev/null bs=16M iflag=direct status=none &
  local reader=$!
  dd if=/dev/zero of="$WORK/disk-work" bs=16M count="$blocks" oflag=direct conv=fsync status=none
  wait "$reader"
  rm -f "$WORK/disk-work"
}

cp_t=(); cpsync_t=(); disk_t=(); sha_t=(); imp_t=(); exp_t=()
for run in $(seq "$RUNS"); do
  settle; s=$(now); cp "$WORK/src" "$WORK/copy"; cp_t+=("$(elapsed "$s")"); rm "$WORK/copy"
  settle; s=$(now); cp "$WORK/src" "$WORK/copy"; sync "$WORK/copy"; cpsync_t+=("$(elapsed "$s")"); rm "$WORK/copy"
  settle; s=$(now); disk_work; disk_t+=("$(elapsed "$s")")
  settle; s=$(now); sha256sum "$WORK/src" > /dev/null; sha_t+=("$(elapsed "$s")")
  settle; s=$(now); id=$("$DFCACHE" import --stream-mode --no-progress "$WORK/src"); imp_t+=("$(elapsed "$s")")
  settle; s=$(now); "$DFCACHE" export --stream-mode --no-progress "$id" -O "$WORK/out"; exp_t+=("$(elapsed "$s")")
  cmp -s "$WORK/src" "$WORK/out" || { echo "run $run: exported bytes differ" >&2; exit 1; }
  rm "$WORK/out"
  "$DFCACHE" rm "$id" 2> /dev/null
  echo "run $run: cp ${cp_t[-1]}s  cp+sync ${cpsync_t[-1]}s  disk ${disk_t[-1]}s  sha256sum ${sha_t[-1]}s  import ${imp_t[-1]}s  export ${exp_t[-1]}s"
done

cp_m=$(median "${cp_t[@]}"); cps_m=$(median "${cpsync_t[@]}"); disk_m=$(median "${disk_t[@]}"); sha_m=$(median "${sha_t[@]}")
imp_m=$(median "${imp_t[@]}"); exp_m=$(median "${exp_t[@]}")
echo
echo "medians of $RUNS runs, $SIZE, cache $([ "${COLD:-0}" = 1 ] && echo cold || echo warm):"
echo "  cp ${cp_m}s  cp+sync ${cps_m}s  disk ${disk_m}s  sha256sum ${sha_m}s  import ${imp_m}s  export ${exp_m}s"
echo "  import / cp        = $(ratio "$imp_m" "$cp_m")   (target <= 1.5)"
echo "  import / cp+sync   = $(ratio "$imp_m" "$cps_m")"
echo "  disk / cp          = $(ratio "$disk_m" "$cp_m")   (read + durable write of the same bytes, no dfcache)"
echo "  import / disk      = $(ratio "$imp_m" "$disk_m")"
echo "  import / sha256sum = $(ratio "$imp_m" "$sha_m")"
echo "  export / cp        = $(ratio "$exp_m" "$cp_m")   (target <= 1.3, set before exports were fsynced)"
echo "  export / cp+sync   = $(ratio "$exp_m" "$cps_m")   (the same durability)"
echo "  export / sha256sum = $(ratio "$exp_m" "$sha_m")"
