#!/usr/bin/env bash
# bench-transfer.sh's concurrent variant: N stream imports of a SIZE file
# at once through one `dfcache serve` (each with its own --tag, so N
# tasks), then N stream exports of them at once, as the time of each
# batch; medians of RUNS runs. With BASELINE (another build of dfcache),
# every run does the same with that binary on a daemon of its own, in
# alternating order, and prints new / baseline: two builds compared in
# one run.
#
#   scripts/bench-transfer-concurrent.sh                        # 16 x 128 MiB, 5 runs
#   N=16 SIZE=64M RUNS=3 scripts/bench-transfer-concurrent.sh
#   BASELINE=/path/to/old/dfcache scripts/bench-transfer-concurrent.sh
#   DFCACHE=/path/to/new/dfcache BASELINE=... scripts/bench-transfer-concurrent.sh   # no build
#
# Every batch starts after `settle` (see lib.sh). Disk needed: 2 x N x SIZE
# (the tasks, and the exported files until each is checked and removed).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"

N="${N:-16}"
SIZE="${SIZE:-128M}"
RUNS="${RUNS:-5}"
WORK="${WORK:-/var/tmp/dfcache-bench-concurrent}"
BASELINE="${BASELINE:-}"

if [ -z "${DFCACHE:-}" ]; then build_release; fi
mkdir -p "$WORK"
make_file "$WORK/src" "$SIZE"
DAEMON_PID=""
cleanup() {
  [ -z "$DAEMON_PID" ] || kill "$DAEMON_PID" 2> /dev/null || true
  wait 2> /dev/null || true
  rm -rf "$WORK/store" "$WORK/out"
}
trap cleanup EXIT

# batch BIN: N imports at once, then N exports at once, with BIN on a
# fresh daemon of BIN; sets IMP and EXP (seconds). A failed transfer or
# an export that differs from the source stops the benchmark.
batch() {
  local bin=$1 i s pids=()
  rm -rf "$WORK/store" "$WORK/out"
  mkdir -p "$WORK/out"
  start_daemon "$WORK" "$bin"
  settle
  s=$(now)
  for i in $(seq "$N"); do
    "$bin" import --stream-mode --no-progress --tag "t$i" "$WORK/src" > "$WORK/out/$i.id" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || { echo "$bin: an import failed" >&2; exit 1; }; done
  IMP=$(elapsed "$s")
  settle
  pids=()
  s=$(now)
  for i in $(seq "$N"); do
    "$bin" export --stream-mode --no-progress "$(cat "$WORK/out/$i.id")" -O "$WORK/out/$i" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || { echo "$bin: an export failed" >&2; exit 1; }; done
  EXP=$(elapsed "$s")
  for i in $(seq "$N"); do
    cmp -s "$WORK/src" "$WORK/out/$i" || { echo "$bin: export $i differs" >&2; exit 1; }
  done
  kill "$DAEMON_PID"
  wait "$DAEMON_PID" 2> /dev/null || true
  DAEMON_PID=""
}

imp_t=(); exp_t=(); bimp_t=(); bexp_t=()
for run in $(seq "$RUNS"); do
  # The baseline goes first on even runs, second on odd ones.
  if [ -n "$BASELINE" ] && [ $((run % 2)) = 0 ]; then
    batch "$BASELINE"; bimp_t+=("$IMP"); bexp_t+=("$EXP")
  fi
  batch "$DFCACHE"; imp_t+=("$IMP"); exp_t+=("$EXP")
  if [ -n "$BASELINE" ] && [ $((run % 2)) = 1 ]; then
    batch "$BASELINE"; bimp_t+=("$IMP"); bexp_t+=("$EXP")
  fi
  echo "run $run: $N imports ${imp_t[-1]}s  $N exports ${exp_t[-1]}s" \
    "${BASELINE:+ baseline: imports ${bimp_t[-1]}s  exports ${bexp_t[-1]}s}"
done

imp_m=$(median "${imp_t[@]}"); exp_m=$(median "${exp_t[@]}")
total=$(($(stat -c %s "$WORK/src") * N))
echo
echo "medians of $RUNS runs, $N x $SIZE at once:"
echo "  imports ${imp_m}s ($(mbps "$total" "$imp_m") MiB/s)  exports ${exp_m}s ($(mbps "$total" "$exp_m") MiB/s)"
if [ -n "$BASELINE" ]; then
  bimp_m=$(median "${bimp_t[@]}"); bexp_m=$(median "${bexp_t[@]}")
  echo "  baseline ($BASELINE): imports ${bimp_m}s  exports ${bexp_m}s"
  echo "  imports / baseline imports = $(ratio "$imp_m" "$bimp_m")   (time: 1.05 is 5% slower)"
  echo "  exports / baseline exports = $(ratio "$exp_m" "$bexp_m")"
fi
