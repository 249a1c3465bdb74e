#!/usr/bin/env bash
# The whole check, as CI runs it: prerequisites, formatting, lints, and
# every test (real daemons on real sockets; FUSE mounts once the mount lands).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
# rustfmt and clippy: rustup's minimal profile installs neither.
components=()
cargo fmt --version > /dev/null 2>&1 || components+=(rustfmt)
cargo clippy --version > /dev/null 2>&1 || components+=(clippy)
if [ ${#components[@]} -gt 0 ]; then
  command -v rustup > /dev/null || { echo "cargo lacks ${components[*]} and there is no rustup to add them" >&2; exit 1; }
  echo "installing: rustup components ${components[*]}"
  rustup component add "${components[@]}"
fi
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# Every test of every crate; the last line sums the binaries' results
# (the runner's own last lines are the crates' doc-test runs, which hold
# no tests).
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
