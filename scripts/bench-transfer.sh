#!/usr/bin/env bash
# Stream import and export through `dfcache serve` against cp and sha256sum
# of the same file, all in one run, as ratios of medians.
#
#   scripts/bench-transfer.sh            # 2 GiB, 5 runs, warm page cache
#   SIZE=512M RUNS=3 scripts/bench-transfer.sh
#   COLD=1 scripts/bench-transfer.sh     # drop the page cache before each step
#   BASELINE=/path/to/old/dfcache scripts/bench-transfer.sh
#   DFCACHE=/path/to/new/dfcache BASELINE=... scripts/bench-transfer.sh   # no build
#
# With BASELINE (another build of dfcache, such as the commit a change
# starts from), every run also imports and exports with that binary, on a
# daemon of its own, in alternating order, and the ratios new / baseline
# are printed: the comparison of two builds in one run.
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
BASELINE="${BASELINE:-}"

bash "$here/install-deps.sh"
if [ -z "${DFCACHE:-}" ]; then build_release; fi
mkdir -p "$WORK/base"
rm -rf "$WORK/store" "$WORK/base/store" "$WORK/out" "$WORK/copy" "$WORK/disk-work"
make_file "$WORK/src" "$SIZE"
BASE_PID=""
if [ -n "$BASELINE" ]; then
  start_daemon "$WORK/base" "$BASELINE"
  BASE_PID=$DAEMON_PID
fi
start_daemon "$WORK"
trap 'kill $DAEMON_PID $BASE_PID 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK/store" "$WORK/base/store" "$WORK/out" "$WORK/copy" "$WORK/disk-work"' EXIT

# disk_work: read the source and write as many bytes, both direct, at once.
disk_work() {
  local blocks=$(($(stat -c %s "$WORK/src") / 16777216))
  dd if="$WORK/src" of=/dev/null bs=16M iflag=direct status=none &
  local reader=$!
  dd if=/dev/zero of="$WORK/disk-work" bs=16M count="$blocks" oflag=direct conv=fsync status=none
  wait "$reader"
  rm -f "$WORK/disk-work"
}

# transfer BIN SOCKET: times a stream import and export with BIN against
# the daemon on SOCKET; sets IMP and EXP (seconds).
transfer() {
  local id s
  settle; s=$(now); id=$("$1" -e "$2" import --stream-mode --no-progress "$WORK/src"); IMP=$(elapsed "$s")
  settle; s=$(now); "$1" -e "$2" export --stream-mode --no-progress "$id" -O "$WORK/out"; EXP=$(elapsed "$s")
  cmp -s "$WORK/src" "$WORK/out" || { echo "$1: exported bytes differ" >&2; exit 1; }
  rm "$WORK/out"
  "$1" -e "$2" rm "$id" 2> /dev/null
}

cp_t=(); cpsync_t=(); disk_t=(); sha_t=(); imp_t=(); exp_t=(); bimp_t=(); bexp_t=()
for run in $(seq "$RUNS"); do
  settle; s=$(now); cp "$WORK/src" "$WORK/copy"; cp_t+=("$(elapsed "$s")"); rm "$WORK/copy"
  settle; s=$(now); cp "$WORK/src" "$WORK/copy"; sync "$WORK/copy"; cpsync_t+=("$(elapsed "$s")"); rm "$WORK/copy"
  settle; s=$(now); disk_work; disk_t+=("$(elapsed "$s")")
  settle; s=$(now); sha256sum "$WORK/src" > /dev/null; sha_t+=("$(elapsed "$s")")
  # The baseline goes first on even runs, second on odd ones.
  if [ -n "$BASELINE" ] && [ $((run % 2)) = 0 ]; then
    transfer "$BASELINE" "$WORK/base/d.sock"; bimp_t+=("$IMP"); bexp_t+=("$EXP")
  fi
  transfer "$DFCACHE" "$WORK/d.sock"; imp_t+=("$IMP"); exp_t+=("$EXP")
  if [ -n "$BASELINE" ] && [ $((run % 2)) = 1 ]; then
    transfer "$BASELINE" "$WORK/base/d.sock"; bimp_t+=("$IMP"); bexp_t+=("$EXP")
  fi
  echo "run $run: cp ${cp_t[-1]}s  cp+sync ${cpsync_t[-1]}s  disk ${disk_t[-1]}s  sha256sum ${sha_t[-1]}s  import ${imp_t[-1]}s  export ${exp_t[-1]}s" \
    "${BASELINE:+ baseline import ${bimp_t[-1]}s  baseline export ${bexp_t[-1]}s}"
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
if [ -n "$BASELINE" ]; then
  bimp_m=$(median "${bimp_t[@]}"); bexp_m=$(median "${bexp_t[@]}")
  echo "  baseline ($BASELINE): import ${bimp_m}s  export ${bexp_m}s"
  echo "  import / baseline import = $(ratio "$imp_m" "$bimp_m")   (time: 1.05 is 5% slower)"
  echo "  export / baseline export = $(ratio "$exp_m" "$bexp_m")"
fi
