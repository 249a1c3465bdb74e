#!/usr/bin/env bash
# Warm-up across two real dfdaemon nodes (../shared/dragonfly: the released dfdaemon
# 1.5.10 and the stand-in scheduler, on loopback), in one run:
#   1. a model tree (SHARDS shards of SHARD, 40 small files, an empty one, nested
#      directories) imported through node A's mount: `cp -r` into import/, the tree id
#      from its xattr;
#   2. `dfcache warmup -r` on a fresh node B at --concurrency 1, 2, 4 and 8 (RUNS times
#      each, a fresh node B every time): the time; the scheduler's log must show every
#      non-empty task coming to node B from node A, and `warmup --check` all local;
#   3. reading the tree (every file, in path order) through node B's mount against
#      reading the same files from local disk, page cache dropped before both
#      (throughput ratio, target >= 0.9);
#   4. model-load time on a fresh node B (the same reader through node B's mount)
#      with --prefetch-trees on and off, against `dfcache export -r` of the tree and
#      then reading the exported files (time ratios: lower is better).
# Needs `bash ../shared/dragonfly/install.sh` first (25-40 minutes the first time).
#
#   scripts/bench-warmup.sh                      # 8 shards of 128 MiB, 3 runs
#   SHARDS=4 SHARD=64M RUNS=1 scripts/bench-warmup.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"

SHARDS="${SHARDS:-8}"
SHARD="${SHARD:-128M}"
RUNS="${RUNS:-3}"
CONCURRENCIES="${CONCURRENCIES:-1 2 4 8}"
WORK="${WORK:-/var/tmp/dfcache-bench-warmup}"
HARNESS="${DFCACHE_DRAGONFLY_HARNESS:-$here/../../shared/dragonfly}"
ROOT="${DRAGONFLY_ROOT:-${HOME:-/root}/.cache/upstream/root}"
export COLD=1

for b in dfdaemon stub-scheduler; do
  [ -x "$ROOT/bin/$b" ] || { echo "missing $ROOT/bin/$b: run bash $HARNESS/install.sh first" >&2; exit 1; }
done
bash "$here/install-deps.sh"
build_release

# Node directories hold the dfdaemon sockets: a short path.
NODES="$(mktemp -d /tmp/dfwb-XXXX)"
rm -rf "$WORK"
mkdir -p "$WORK/src/model/weights/shards" "$WORK/src/model/tokenizer" "$WORK/mnt-a" "$WORK/mnt-b"
B="" MOUNT_PID="" NEXT_IP=10
cleanup() {
  [ -z "$MOUNT_PID" ] || kill "$MOUNT_PID" 2> /dev/null || true
  wait 2> /dev/null || true
  for m in "$WORK/mnt-a" "$WORK/mnt-b"; do mountpoint -q "$m" && umount -l "$m"; done
  [ -z "$B" ] || bash "$HARNESS/stop.sh" "$NODES/$B" > /dev/null 2>&1 || true
  if [ -d "$NODES/a" ]; then bash "$HARNESS/stop.sh" "$NODES/a" > /dev/null 2>&1 || true; fi
  rm -rf "$NODES" "$WORK"
}
trap cleanup EXIT

model="$WORK/src/model"
for i in $(seq -w 1 "$SHARDS"); do make_file "$model/weights/shards/model-$i-of-$SHARDS.safetensors" "$SHARD"; done
for i in $(seq -w 1 40); do head -c $((RANDOM * 2)) /dev/urandom > "$model/tokenizer/part-$i.json"; done
echo '{"hidden_size": 4096}' > "$model/config.json"
: > "$model/empty"
files=$(find "$model" -type f | wc -l)
bytes=$(find "$model" -type f -printf '%s\n' | awk '{ s += $1 } END { print s }')

bash "$HARNESS/run.sh" "$NODES/a" --hostname node-a > /dev/null
A_SOCK="$NODES/a/dfdaemon.sock"
A_HOST="$(cat "$NODES/a/host_id")"
SCHED_LOG="$NODES/a/log/scheduler.log"

# fresh_b: stops the current node B and starts a new one (its own address and
# storage: it holds nothing); sets B, B_SOCK, B_HOST.
fresh_b() {
  [ -z "$B" ] || { bash "$HARNESS/stop.sh" "$NODES/$B" > /dev/null; rm -rf "${NODES:?}/$B"; }
  B="b$NEXT_IP"
  bash "$HARNESS/run.sh" "$NODES/$B" --join "$NODES/a" --ip "127.0.0.$NEXT_IP" --hostname "node-$B" > /dev/null
  NEXT_IP=$((NEXT_IP + 1))
  B_SOCK="$NODES/$B/dfdaemon.sock"
  B_HOST="$(cat "$NODES/$B/host_id")"
}

# read_tree DIR: every file of DIR, in path order, read whole (a program
# loading the model).
read_tree() { find "$1" -type f -print0 | sort -z | xargs -0 cat > /dev/null; }

echo "== node A: the model ($files files, $(numfmt --to=iec "$bytes")) copied into its mount's import/"
start_mount "$WORK/mnt-a" -e "$A_SOCK" --spool "$WORK/spool-a"
s=$(now)
cp -r "$model" "$WORK/mnt-a/import/"
TREE=$(getfattr --absolute-names --only-values -n user.dfcache.tree_id "$WORK/mnt-a/import/model")
echo "tree $TREE in $(elapsed "$s")s"
stop_mount

echo "== dfcache warmup -r on a fresh node B"
declare -A warm
for c in $CONCURRENCIES; do
  warm[$c]=""
  for run in $(seq "$RUNS"); do
    fresh_b
    settle
    s=$(now)
    "$DFCACHE" -e "$B_SOCK" warmup -r "$TREE" --concurrency "$c" --no-progress > /dev/null
    t=$(elapsed "$s")
    warm[$c]+="$t "
    echo "concurrency $c, run $run: ${t}s ($(mbps "$bytes" "$t") MiB/s)"
  done
done

check="$WORK/check.txt"
"$DFCACHE" -e "$B_SOCK" warmup -r --check "$TREE" > "$check" || { cat "$check"; echo "--check: not all local" >&2; exit 1; }
# Every task with bytes (the manifest too) came to this node B from node A.
wanted=0 from_a=0
while read -r state _ size task _; do
  if [ "$state" != local ] || [ "$size" -eq 0 ]; then continue; fi
  wanted=$((wanted + 1))
  grep -q "P2P finished task_id=$task host_id=$B_HOST .* from \[$A_HOST:" "$SCHED_LOG" && from_a=$((from_a + 1))
done < <(tail -n +2 "$check" | grep -v '^total:')
echo "check: $(tail -n 1 "$check")"
echo "scheduler log: $from_a of $wanted non-empty tasks came to node B ($B_HOST) from node A ($A_HOST)"
[ "$from_a" = "$wanted" ] || { echo "not every task came from node A" >&2; exit 1; }

echo "== reading the warmed tree through node B's mount vs the same files on local disk (cold)"
mnt_read=() local_read=()
for run in $(seq "$RUNS"); do
  start_mount "$WORK/mnt-b" -e "$B_SOCK" --spool "$WORK/spool-b"
  ls "$WORK/mnt-b/trees/$TREE" > /dev/null
  # The host caches the VM's disk: alternate which read goes first.
  for which in $( ((run % 2)) && echo "mount local" || echo "local mount"); do
    settle
    s=$(now)
    if [ "$which" = mount ]; then read_tree "$WORK/mnt-b/trees/$TREE"; else read_tree "$model"; fi
    t=$(elapsed "$s")
    if [ "$which" = mount ]; then mnt_read+=("$t"); else local_read+=("$t"); fi
  done
  stop_mount
  echo "run $run: mount ${mnt_read[-1]}s, local disk ${local_read[-1]}s"
done

echo "== model load on a fresh node B: through its mount (prefetch on, off) vs export -r then read"
load_on=() load_off=() load_export=()
for run in $(seq "$RUNS"); do
  for way in on off export; do
    fresh_b
    settle
    if [ "$way" = export ]; then
      s=$(now)
      "$DFCACHE" -e "$B_SOCK" export -r "$TREE" -O "$WORK/exported" --no-progress
      read_tree "$WORK/exported"
      load_export+=("$(elapsed "$s")")
      rm -rf "$WORK/exported"
    else
      start_mount "$WORK/mnt-b" -e "$B_SOCK" --spool "$WORK/spool-b" --prefetch-trees "$way"
      s=$(now)
      read_tree "$WORK/mnt-b/trees/$TREE"
      t=$(elapsed "$s")
      stop_mount
      if [ "$way" = on ]; then load_on+=("$t"); else load_off+=("$t"); fi
    fi
  done
  echo "run $run: prefetch on ${load_on[-1]}s, off ${load_off[-1]}s, export -r then read ${load_export[-1]}s"
done

echo
echo "medians of $RUNS runs ($files files, $(numfmt --to=iec "$bytes")):"
for c in $CONCURRENCIES; do
  # shellcheck disable=SC2086
  t=$(median ${warm[$c]})
  echo "  warmup -r, fresh node B, --concurrency $c: ${t}s ($(mbps "$bytes" "$t") MiB/s)"
done
m=$(median "${mnt_read[@]}") l=$(median "${local_read[@]}")
echo "  cold read of the warmed tree: node B's mount ${m}s ($(mbps "$bytes" "$m") MiB/s), local disk ${l}s ($(mbps "$bytes" "$l") MiB/s): throughput ratio $(ratio "$l" "$m") (target >= 0.9)"
on=$(median "${load_on[@]}") off=$(median "${load_off[@]}") ex=$(median "${load_export[@]}")
echo "  model load, fresh node B: prefetch on ${on}s, off ${off}s, export -r then read ${ex}s"
echo "    time ratios against export -r then read (lower is better): on $(ratio "$on" "$ex"), off $(ratio "$off" "$ex")"
