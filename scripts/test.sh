#!/usr/bin/env bash
# The whole check, as CI runs it: prerequisites, formatting, lints, and
# every test (real daemons on real sockets; FUSE mounts once the mount lands).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
