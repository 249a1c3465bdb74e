#!/usr/bin/env bash
# Trees, in one run (medians of RUNS), on an --embedded mount:
#   `cp -r` of FILES files of 64 KiB into import/ + reading the tree id
#     vs `cp -r` into a local directory + `dfcache import` of each file
#     vs `dfcache import --recursive` of the directory
#   `ls -lR trees/<id>` of a tree of BIG entries, on a fresh mount (the
#     manifest is read once; sizes and modes come from it)
#   first-byte latency of a file inside a tree vs of tasks/<id> (fresh mount)
#
#   scripts/bench-trees.sh                  # 1,000 files, 10,000 entries, 3 runs
#   FILES=200 BIG=2000 RUNS=2 scripts/bench-trees.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"

FILES="${FILES:-1000}"
BIG="${BIG:-10000}"
RUNS="${RUNS:-3}"
WORK="${WORK:-/var/tmp/dfcache-bench-trees}"
export FRESH=0

bash "$here/install-deps.sh"
build_release

rm -rf "$WORK"
mkdir -p "$WORK/src/model" "$WORK/big" "$WORK/mnt"
for i in $(seq "$FILES"); do head -c 65536 /dev/urandom > "$WORK/src/model/f$i"; done
for d in $(seq $((BIG / 100))); do
  mkdir -p "$WORK/big/d$d"
  for i in $(seq 99); do printf '%s' "$d.$i" > "$WORK/big/d$d/f$i"; done
done
MOUNT_PID=""
cleanup() {
  [ -z "$MOUNT_PID" ] || kill "$MOUNT_PID" 2> /dev/null || true
  wait 2> /dev/null || true
  mountpoint -q "$WORK/mnt" && umount -l "$WORK/mnt"
  rm -rf "$WORK"
}
trap cleanup EXIT
export DFCACHE_ENDPOINT="$WORK/store/dfdaemon.sock"

mount_cp=(); local_cp=(); recursive=()
start_mount "$WORK/mnt" --embedded "$WORK/store"
for run in $(seq "$RUNS"); do
  s=$(now)
  cp -r "$WORK/src/model" "$WORK/mnt/import/m$run"
  getfattr --only-values -n user.dfcache.tree_id "$WORK/mnt/import/m$run" > /dev/null
  mount_cp+=("$(elapsed "$s")")

  rm -rf "$WORK/local"
  s=$(now)
  cp -r "$WORK/src/model" "$WORK/local"
  for f in "$WORK/local"/*; do "$DFCACHE" import --stream-mode --no-progress "$f" > /dev/null; done
  local_cp+=("$(elapsed "$s")")

  s=$(now)
  "$DFCACHE" import --recursive --stream-mode --no-progress "$WORK/src/model" > /dev/null
  recursive+=("$(elapsed "$s")")
  echo "run $run: cp -r import/ ${mount_cp[-1]}s  cp -r + import each ${local_cp[-1]}s  import -r ${recursive[-1]}s"
done
big_id=$("$DFCACHE" import --recursive --stream-mode --no-progress "$WORK/big")
one=$(find "$WORK/src/model" -name f1)
one_id=$("$DFCACHE" import --stream-mode --no-progress "$one")
tree_id=$("$DFCACHE" import --recursive --stream-mode --no-progress "$WORK/src/model")
stop_mount

lsr=(); first_tree=(); first_task=()
for run in $(seq "$RUNS"); do
  start_mount "$WORK/mnt" --embedded "$WORK/store"
  s=$(now); ls -lR "$WORK/mnt/trees/$big_id" > /dev/null; lsr+=("$(elapsed "$s")")
  s=$(now); head -c 1 "$WORK/mnt/trees/$tree_id/f1" > /dev/null; first_tree+=("$(elapsed "$s")")
  s=$(now); head -c 1 "$WORK/mnt/tasks/$one_id" > /dev/null; first_task+=("$(elapsed "$s")")
  stop_mount
done

m=$(median "${mount_cp[@]}"); l=$(median "${local_cp[@]}"); r=$(median "${recursive[@]}")
echo
echo "medians of $RUNS runs:"
echo "  $FILES files of 64 KiB: cp -r into import/ + tree id ${m}s; cp -r + dfcache import of each ${l}s (ratio $(ratio "$m" "$l")); import --recursive ${r}s"
echo "  ls -lR trees/<id> of $BIG entries, fresh mount: $(median "${lsr[@]}")s"
echo "  first byte, fresh mount: trees/<id>/f1 $(median "${first_tree[@]}")s, tasks/<id> $(median "${first_task[@]}")s"
