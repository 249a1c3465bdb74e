#!/usr/bin/env bash
# Peak RSS of `dfcache import --stream-mode` and `export --stream-mode` of a
# large file (default 4 GiB), and of the daemon serving them, via
# /usr/bin/time -v and the daemon's VmHWM. Target: each under 200 MiB.
#
#   scripts/measure-memory.sh            # 4 GiB
#   SIZE=1G scripts/measure-memory.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"

SIZE="${SIZE:-4G}"
WORK="${WORK:-/var/tmp/dfcache-memory}"
LIMIT_KIB=$((200 * 1024))

# /usr/bin/time (Debian's time package) and cc for the build.
bash "$here/install-deps.sh"
build_release
mkdir -p "$WORK"
rm -rf "$WORK/store" "$WORK/out"
make_file "$WORK/src" "$SIZE"
start_daemon "$WORK"
trap 'kill $DAEMON_PID 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK/store" "$WORK/out"' EXIT

peak() { awk -F: '/Maximum resident set size/ { gsub(/ /, "", $2); print $2 }' "$1"; }

/usr/bin/time -v -o "$WORK/import.time" "$DFCACHE" import --stream-mode --no-progress "$WORK/src" > "$WORK/id"
/usr/bin/time -v -o "$WORK/export.time" "$DFCACHE" export --stream-mode --no-progress "$(cat "$WORK/id")" -O "$WORK/out"
cmp "$WORK/src" "$WORK/out"
daemon_kib=$(awk '/VmHWM/ { print $2 }' "/proc/$DAEMON_PID/status")
imp_kib=$(peak "$WORK/import.time"); exp_kib=$(peak "$WORK/export.time")

status=0
for entry in "import:$imp_kib" "export:$exp_kib" "daemon:$daemon_kib"; do
  name=${entry%%:*}; kib=${entry#*:}
  verdict=ok; [ "$kib" -lt "$LIMIT_KIB" ] || { verdict=OVER; status=1; }
  printf '%-7s peak RSS %6d KiB (%d MiB)  %s\n' "$name" "$kib" $((kib / 1024)) "$verdict"
done
exit $status
