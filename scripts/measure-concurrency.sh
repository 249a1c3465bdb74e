#!/usr/bin/env bash
# Memory under many transfers at once: for each N, N concurrent
# `dfcache import --stream-mode` of SIZE (64 MiB) files against one
# `dfcache serve`, then N concurrent `dfcache export --stream-mode` of the
# tasks; then the same through a mount on an embedded daemon (N programs
# writing into import/, then N reading tasks/<id> of different tasks).
# Reports, per phase: the total time, the failures (a non-zero exit, or
# bytes that differ) and the peak RSS (VmHWM) of the daemon, or of the
# mount (which holds its embedded daemon). The peak is reset between the
# phases (/proc/PID/clear_refs), so each phase shows its own. A phase
# whose files do not fit on the disk is skipped, and says so.
#
#   scripts/measure-concurrency.sh                 # N = 1 16 50 200
#   NS="16 50" scripts/measure-concurrency.sh
#   DFCACHE=/path/to/dfcache scripts/measure-concurrency.sh   # another build
#   SERVE_ARGS="--memory-budget 64mib" MOUNT_ARGS="--memory-budget 64mib" scripts/measure-concurrency.sh
#   PARTS=serve scripts/measure-concurrency.sh     # serve, mount or both
#
# Each import gets its own --tag, so the N imports are N tasks (N x SIZE of
# store); each writer into import/ prepends its number to the same
# source, so the N imports through the mount are N tasks too. The mount
# runs with --passthrough never, so its reads go through its block cache
# (with passthrough they would be the kernel's, holding nothing of the
# mount). Disk needed: N x SIZE for the store, and as much again for the
# exports' files, all written at once.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"

NS="${NS:-1 16 50 200}"
SIZE="${SIZE:-64M}"
PARTS="${PARTS:-both}"
WORK="${WORK:-/var/tmp/dfcache-concurrency}"
SERVE_ARGS="${SERVE_ARGS:-}"
MOUNT_ARGS="${MOUNT_ARGS:-}"

bash "$here/install-deps.sh"
if [ -z "${DFCACHE:-}" ]; then build_release; fi
mkdir -p "$WORK"
make_file "$WORK/src" "$SIZE"
size_bytes=$(stat -c %s "$WORK/src")

# free_kib: free space where the files go, in KiB.
free_kib() { df --output=avail -k "$WORK" | tail -1; }
# fits N COPIES: whether COPIES x N files of SIZE fit, with 1 GiB to spare.
fits() { [ "$(free_kib)" -gt $(($2 * $1 * size_bytes / 1024 + 1048576)) ]; }

DAEMON_PID=""
MOUNT_PID=""
cleanup() {
  [ -z "$MOUNT_PID" ] || kill "$MOUNT_PID" 2> /dev/null || true
  for _ in $(seq 100); do mountpoint -q "$WORK/mnt" 2> /dev/null || break; sleep 0.05; done
  mountpoint -q "$WORK/mnt" 2> /dev/null && umount -l "$WORK/mnt"
  [ -z "$DAEMON_PID" ] || kill "$DAEMON_PID" 2> /dev/null || true
  wait 2> /dev/null || true
  rm -rf "$WORK/store" "$WORK/out" "$WORK/ids" "$WORK/fail"
}
trap cleanup EXIT

# peak_mib PID: the process's peak RSS so far, in MiB.
peak_mib() { awk '/^VmHWM/ { printf "%d", $2 / 1024 }' "/proc/$1/status"; }
# rss_mib PID: its RSS now, in MiB.
rss_mib() { awk '/^VmRSS/ { printf "%d", $2 / 1024 }' "/proc/$1/status"; }
# reset_peak PID: from here on VmHWM counts from the current RSS.
reset_peak() { echo 5 > "/proc/$1/clear_refs"; }
fails() { find "$WORK/fail" -type f | wc -l; }
fresh_dirs() { rm -rf "$WORK/out" "$WORK/ids" "$WORK/fail"; mkdir -p "$WORK/out" "$WORK/ids" "$WORK/fail"; }

serve_rows=()
mount_rows=()

# serve_round N: N imports at once, then N exports at once.
serve_round() {
  local n=$1 i s imp_t exp_t imp_f exp_f imp_peak exp_peak idle
  rm -rf "$WORK/store"
  fresh_dirs
  if ! fits "$n" 1; then
    serve_rows+=("| $n | skipped: $n x $SIZE do not fit on the disk | | | | | | |")
    echo "serve N=$n: skipped, $(($(free_kib) / 1048576)) GiB free"
    return
  fi
  # shellcheck disable=SC2086
  "$DFCACHE" serve --socket "$WORK/d.sock" --dir "$WORK/store" -l warn $SERVE_ARGS &
  DAEMON_PID=$!
  export DFCACHE_ENDPOINT="$WORK/d.sock"
  for _ in $(seq 100); do [ -S "$WORK/d.sock" ] && break; sleep 0.05; done
  settle
  idle=$(rss_mib "$DAEMON_PID")
  reset_peak "$DAEMON_PID"
  s=$(now)
  for i in $(seq "$n"); do
    ("$DFCACHE" import --stream-mode --no-progress --tag "t$i" "$WORK/src" > "$WORK/ids/$i" 2> "$WORK/fail/$i.err" \
      && rm "$WORK/fail/$i.err") &
  done
  wait_jobs
  imp_t=$(elapsed "$s"); imp_f=$(fails); imp_peak=$(peak_mib "$DAEMON_PID")
  settle
  if ! fits "$n" 1; then
    kill "$DAEMON_PID"; wait "$DAEMON_PID" 2> /dev/null || true; DAEMON_PID=""
    rm -rf "$WORK/store"
    serve_rows+=("| $n | $imp_t | $imp_f | $imp_peak | skipped: the exports do not fit on the disk | | | $idle |")
    echo "serve N=$n: imports ${imp_t}s, $imp_f failed, daemon peak ${imp_peak} MiB; exports skipped (disk)"
    return
  fi
  reset_peak "$DAEMON_PID"
  s=$(now)
  for i in $(seq "$n"); do
    [ -s "$WORK/ids/$i" ] || continue
    ("$DFCACHE" export --stream-mode --no-progress "$(cat "$WORK/ids/$i")" -O "$WORK/out/$i" 2> "$WORK/fail/x$i.err" \
      && cmp -s "$WORK/src" "$WORK/out/$i" && rm -f "$WORK/fail/x$i.err" "$WORK/out/$i") &
  done
  wait_jobs
  exp_t=$(elapsed "$s"); exp_f=$(fails); exp_f=$((exp_f - imp_f)); exp_peak=$(peak_mib "$DAEMON_PID")
  show_errors
  kill "$DAEMON_PID"; wait "$DAEMON_PID" 2> /dev/null || true; DAEMON_PID=""
  rm -rf "$WORK/store"
  serve_rows+=("| $n | $imp_t | $imp_f | $imp_peak | $exp_t | $exp_f | $exp_peak | $idle |")
  echo "serve N=$n: imports ${imp_t}s, $imp_f failed, daemon peak ${imp_peak} MiB; exports ${exp_t}s, $exp_f failed, daemon peak ${exp_peak} MiB (idle ${idle} MiB)"
}

# mount_round N: N writers into import/ at once, then N readers of their tasks.
mount_round() {
  local n=$1 i s w_t r_t w_f r_f w_peak r_peak idle
  rm -rf "$WORK/store"
  fresh_dirs
  if ! fits "$n" 1; then
    mount_rows+=("| $n | skipped: $n x $SIZE do not fit on the disk | | | | | | |")
    echo "mount N=$n: skipped, $(($(free_kib) / 1048576)) GiB free"
    return
  fi
  mkdir -p "$WORK/mnt"
  # shellcheck disable=SC2086
  start_mount "$WORK/mnt" --embedded "$WORK/store" --passthrough never $MOUNT_ARGS
  settle
  idle=$(rss_mib "$MOUNT_PID")
  reset_peak "$MOUNT_PID"
  s=$(now)
  for i in $(seq "$n"); do
    ({ echo "$i"; cat "$WORK/src"; } > "$WORK/mnt/import/w$i" 2> "$WORK/fail/$i.err" \
      && getfattr --absolute-names --only-values -n user.dfcache.task_id "$WORK/mnt/import/w$i" > "$WORK/ids/$i" \
      && rm "$WORK/fail/$i.err") &
  done
  wait_jobs
  w_t=$(elapsed "$s"); w_f=$(fails); w_peak=$(peak_mib "$MOUNT_PID")
  settle
  reset_peak "$MOUNT_PID"
  s=$(now)
  for i in $(seq "$n"); do
    [ -s "$WORK/ids/$i" ] || continue
    (if cmp -s <(echo "$i"; cat "$WORK/src") "$WORK/mnt/tasks/$(cat "$WORK/ids/$i")" 2> "$WORK/fail/r$i.err"; then
      rm "$WORK/fail/r$i.err"
    else
      echo "bytes differ or read failed" >> "$WORK/fail/r$i.err"
    fi) &
  done
  wait_jobs
  r_t=$(elapsed "$s"); r_f=$(fails); r_f=$((r_f - w_f)); r_peak=$(peak_mib "$MOUNT_PID")
  show_errors
  stop_mount
  rm -rf "$WORK/store"
  mount_rows+=("| $n | $w_t | $w_f | $w_peak | $r_t | $r_f | $r_peak | $idle |")
  echo "mount N=$n: writers ${w_t}s, $w_f failed, mount peak ${w_peak} MiB; readers ${r_t}s, $r_f failed, mount peak ${r_peak} MiB (idle ${idle} MiB)"
}

# wait_jobs: waits for every background job but the daemon or mount.
wait_jobs() {
  local pid
  for pid in $(jobs -p); do
    [ "$pid" = "$DAEMON_PID" ] || [ "$pid" = "$MOUNT_PID" ] || wait "$pid" || true
  done
}

# show_errors: the first failures' messages, once per round.
show_errors() {
  local f
  for f in $(find "$WORK/fail" -type f | head -3); do
    echo "  $(basename "$f"): $(head -c 300 "$f" | tr '\n' ' ')"
  done
}

for n in $NS; do
  if [ "$PARTS" != mount ]; then serve_round "$n"; fi
  if [ "$PARTS" != serve ]; then mount_round "$n"; fi
done

echo
echo "$SIZE files; $(nproc) cores; $(uptime | sed 's/.*load average/load average/')"
echo "binary: $DFCACHE"
if [ ${#serve_rows[@]} -gt 0 ]; then
  echo
  echo "dfcache serve $SERVE_ARGS: N imports at once, then N exports at once (peak RSS of the daemon, MiB)"
  echo
  echo "| N | imports, s | failed | daemon peak | exports, s | failed | daemon peak | daemon idle |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${serve_rows[@]}"
fi
if [ ${#mount_rows[@]} -gt 0 ]; then
  echo
  echo "dfcache mount --embedded --passthrough never $MOUNT_ARGS: N writers into import/, then N readers of tasks/<id> (peak RSS of the mount, MiB)"
  echo
  echo "| N | writers, s | failed | mount peak | readers, s | failed | mount peak | mount idle |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${mount_rows[@]}"
fi
