#!/usr/bin/env bash
# The tests against the released dfdaemon (tests/upstream_*.rs): real dfdaemon 1.5.10
# nodes and the stand-in scheduler of ../shared/dragonfly on loopback. They need the
# binaries that harness's install.sh builds (25-40 minutes the first time), so `cargo
# test` (scripts/test.sh) skips them (`#[ignore]`) and this script runs them. It fails
# when the binaries are missing or when no test ran, so a run without dfdaemon never
# reads as a pass.
#
#   scripts/test-upstream.sh                 # every upstream test
#   scripts/test-upstream.sh killed          # those whose name contains "killed"
set -euo pipefail
cd "$(dirname "$0")/.."

HARNESS="${DFCACHE_DRAGONFLY_HARNESS:-$(pwd)/../shared/dragonfly}"
ROOT="${DRAGONFLY_ROOT:-${HOME:-/root}/.cache/upstream/root}"
for b in dfdaemon stub-scheduler; do
  [ -x "$ROOT/bin/$b" ] || { echo "missing $ROOT/bin/$b: run bash $HARNESS/install.sh first" >&2; exit 1; }
done
[ -f "$HARNESS/run.sh" ] || { echo "no $HARNESS/run.sh (set DFCACHE_DRAGONFLY_HARNESS)" >&2; exit 1; }
export DFCACHE_DRAGONFLY_HARNESS="$HARNESS" DRAGONFLY_ROOT="$ROOT"
bash scripts/install-deps.sh

targets=()
for t in tests/upstream_*.rs; do targets+=(--test "$(basename "$t" .rs)"); done
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# One test at a time: each starts its own nodes and scheduler, and dfdaemon
# picks its ports free at start.
cargo test --locked "${targets[@]}" -- --ignored --test-threads 1 "$@" 2>&1 | tee "$log" || status=$?
read -r passed failed < <(awk '/^test result:/ { p += $4; f += $6 } END { print p + 0, f + 0 }' "$log")
echo "upstream tests: $passed passed, $failed failed"
if [ "$status" = 0 ] && [ "$passed" = 0 ]; then
  echo "no upstream test ran" >&2
  exit 1
fi
exit "$status"
