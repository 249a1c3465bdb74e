# Shared helpers for the benchmark and measurement scripts.
# shellcheck shell=bash

# now: seconds since the epoch, with nanoseconds.
now() { date +%s.%N; }

# elapsed START: seconds since START, 3 decimals.
elapsed() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.3f", e - s }'; }

# median V...: the median of the arguments.
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# ratio A B: A / B, 2 decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# settle: flush dirty pages so one measurement's writeback does not land on
# the next; with COLD=1 also drop the page cache.
settle() {
  sync
  if [ "${COLD:-0}" = 1 ]; then echo 3 > /proc/sys/vm/drop_caches; fi
}

# start_daemon DIR: runs the release `dfcache serve` on DIR/d.sock with its
# store in DIR/store; sets DAEMON_PID and exports DFCACHE_ENDPOINT.
start_daemon() {
  "$DFCACHE" serve --socket "$1/d.sock" --dir "$1/store" -l warn &
  DAEMON_PID=$!
  export DFCACHE_ENDPOINT="$1/d.sock"
  for _ in $(seq 100); do [ -S "$1/d.sock" ] && return 0; sleep 0.05; done
  echo "daemon did not start" >&2
  return 1
}

# make_file PATH SIZE: SIZE (like 2G or 512M) random bytes; kept between
# runs when it already has that size.
make_file() {
  local bytes
  bytes=$(numfmt --from=iec "$2")
  [ "$(stat -c %s "$1" 2> /dev/null || echo 0)" = "$bytes" ] || head -c "$bytes" /dev/urandom > "$1"
}

build_release() {
  (cd "$(dirname "${BASH_SOURCE[0]}")/.." && cargo build --release --quiet)
  DFCACHE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/release/dfcache"
}
