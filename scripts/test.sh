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
cargo test --locked
