#!/usr/bin/env bash
# Line coverage per module for the whole test suite, FUSE tests included.
#
# LLVM source-based coverage through cargo-llvm-cov: every crate of the
# workspace is built with -C instrument-coverage, the `dfcache` binary that
# the integration tests spawn (daemons, mounts, CLI calls) included, and
# LLVM_PROFILE_FILE names one profile per process (%p, %m), so what those
# subprocesses run counts too. Builds go to target/coverage (the normal
# target/debug is left alone). Installs what it lacks: the test programs
# (install-deps.sh), cargo-llvm-cov (cargo install) and llvm-cov and
# llvm-profdata of rustc's LLVM version (Debian's llvm-N, or else rustup's
# llvm-tools component).
#
# Prints a table (module, lines, covered, percent) and writes it, with the
# per-file table and the lcov data, to target/coverage/. Lines are counted
# per source line as `llvm-cov show` and its lcov export count them (its
# `report` summary counts some lines twice, once per function such as a
# closure that shares them), less the unit-test modules (`#[cfg(test)] mod`)
# in the crates. Exits with the test run's status; the report is printed also
# when tests fail. The first run builds every dependency again (about
# 3.5 GB in target/coverage); later runs rebuild only dfcache.
# Arguments go to the test binaries (e.g. `-- --test-threads 1`) through
# cargo llvm-cov; COVERAGE_CARGO_ARGS adds cargo llvm-cov options
# (e.g. "--test fuse").
#
# Profiles are written in LLVM's continuous mode (%c, with counters
# relocated at run time, the only way on Linux): the counters live in the
# mmapped profile file, so the daemons and mounts that the crash tests kill
# with SIGKILL, which run no exit handler, count too.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_LLVM_COV_VERSION=0.9.1
OUT=target/coverage
# One row per crate of the workspace (the binary and its CLI in src/).
MODULES=(crates/mount/ crates/client/ crates/daemon/ crates/wire/ crates/direct-io/ crates/metrics/ src/)

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

bash scripts/install-deps.sh

# llvm-cov and llvm-profdata must read rustc's profile format: the same LLVM
# major version as rustc's, or a newer one that still reads it. Debian's
# llvm-N first (N from rustc's major up), installed or installable (bookworm
# has llvm-22 in bookworm-security); else rustup's llvm-tools component,
# which is rustc's own LLVM, for a release or mirror without an llvm-N that
# new.
llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[ -n "$llvm_major" ] || { echo "cannot tell rustc's LLVM version" >&2; exit 1; }
rustup_llvm="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin"
# has_llvm DIR: whether DIR holds both programs.
has_llvm() { [ -x "$1/llvm-cov" ] && [ -x "$1/llvm-profdata" ]; }
# find_llvm: the directory of installed programs that read rustc's profiles.
find_llvm() {
  local v
  for v in $(seq "$llvm_major" $((llvm_major + 3))); do
    if has_llvm "/usr/lib/llvm-$v/bin"; then
      echo "/usr/lib/llvm-$v/bin"
      return 0
    fi
  done
  if has_llvm "$rustup_llvm"; then
    echo "$rustup_llvm"
    return 0
  fi
  return 1
}
# debian_llvm: the first llvm-N package, N from rustc's major up, that apt
# has a candidate version of (run `apt-get update` first).
debian_llvm() {
  local v policy
  for v in $(seq "$llvm_major" $((llvm_major + 3))); do
    # The whole output is matched, not piped into `grep -q`: grep leaves at
    # the first match, apt-cache still writing then dies of SIGPIPE, and
    # under pipefail the pipeline fails although the package is there.
    policy=$(apt-cache policy "llvm-$v" 2> /dev/null) || continue
    case "$policy" in
      *"Candidate: "[0-9]*)
        echo "llvm-$v"
        return 0
        ;;
    esac
  done
  return 1
}
if [ -z "${LLVM_COV:-}" ] || [ -z "${LLVM_PROFDATA:-}" ]; then
  if ! llvm_bin=$(find_llvm); then
    pkg=""
    if command -v apt-get > /dev/null; then
      $sudo apt-get update -qq
      pkg=$(debian_llvm) || pkg=""
    fi
    if [ -n "$pkg" ]; then
      echo "installing: $pkg"
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$pkg" > /dev/null
    elif command -v rustup > /dev/null; then
      echo "installing: rustup component llvm-tools (no Debian package llvm-$llvm_major or newer)"
      rustup component add llvm-tools
    fi
    llvm_bin=$(find_llvm) || {
      echo "no llvm-cov and llvm-profdata of LLVM >= $llvm_major (rustc's LLVM) and none to install (Debian's llvm-N, rustup's llvm-tools): install them and set LLVM_COV and LLVM_PROFDATA" >&2
      exit 1
    }
  fi
  export LLVM_COV="$llvm_bin/llvm-cov" LLVM_PROFDATA="$llvm_bin/llvm-profdata"
fi

if ! cargo llvm-cov --version > /dev/null 2>&1; then
  echo "installing: cargo-llvm-cov $CARGO_LLVM_COV_VERSION"
  cargo install --locked --quiet cargo-llvm-cov --version "$CARGO_LLVM_COV_VERSION"
fi

echo "rustc: $(rustc -V) (LLVM $(rustc -vV | sed -n 's/^LLVM version: //p'))"
echo "$(cargo llvm-cov --version); $("$LLVM_COV" --version | grep -o 'LLVM version [0-9.]*')"

export CARGO_LLVM_COV_TARGET_DIR="$PWD/$OUT"
export LLVM_PROFILE_FILE_NAME="dfcache-%p-%m%c.profraw"
export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C llvm-args=-runtime-counter-relocation"
# Old profiles and workspace artifacts would skew the numbers; the
# dependencies' builds are kept.
cargo llvm-cov clean --workspace

start=$(date +%s)
status=0
# shellcheck disable=SC2086 # COVERAGE_CARGO_ARGS is a list of options
cargo llvm-cov --workspace --locked --no-report --no-fail-fast ${COVERAGE_CARGO_ARGS:-} "$@" || status=$?
echo "tests: exit status $status, $(($(date +%s) - start)) s"

# A process killed before its profile's header was written leaves a file
# that cannot be merged: skip it rather than lose the report.
cargo llvm-cov report --failure-mode all --lcov --output-path "$OUT/lcov.info"

python3 - "$OUT/lcov.info" "$PWD" "$OUT" "${MODULES[@]}" << 'EOF'
import re, sys

lcov, root, out, modules = sys.argv[1], sys.argv[2].rstrip("/") + "/", sys.argv[3], sys.argv[4:]

# The lines of each file that llvm-cov counts, with their hit counts.
hits = {}
name = None
for line in open(lcov):
    line = line.rstrip("\n")
    if line.startswith("SF:"):
        name = line[3:]
        if name.startswith(root):
            name = name[len(root):]
        hits.setdefault(name, {})
    elif line.startswith("DA:") and name is not None:
        n, count = line[3:].split(",")[:2]
        hits[name][int(n)] = hits[name].get(int(n), 0) + int(count)


def test_lines(path):
    """The line numbers of the file's `#[cfg(test)] mod NAME { ... }`
    blocks: unit tests, not the code under test."""
    try:
        src = open(root + path).read().split("\n")
    except OSError:
        return set()
    skip = set()
    i = 0
    while i < len(src):
        m = re.match(r"(\s*)#\[cfg\(test\)\]\s*$", src[i])
        if m and i + 1 < len(src) and re.match(r"\s*(pub(\(\w+\))? )?mod \w+ \{", src[i + 1]):
            end = i + 2
            while end < len(src) and src[end] != m.group(1) + "}":
                end += 1
            skip.update(range(i + 1, end + 2))  # 1-based, attribute to brace
            i = end
        i += 1
    return skip


files, with_tests = {}, [0, 0]
for name, lines in hits.items():
    with_tests[0] += len(lines)
    with_tests[1] += sum(1 for c in lines.values() if c)
    skip = test_lines(name)
    kept = [c for n, c in lines.items() if n not in skip]
    files[name] = (len(kept), sum(1 for c in kept if c))


def pct(count, covered):
    return 100.0 * covered / count if count else 100.0


rows = []
for m in modules:
    count = sum(c for n, (c, _) in files.items() if n.startswith(m))
    covered = sum(v for n, (_, v) in files.items() if n.startswith(m))
    rows.append((m, count, covered))

table = [f"{'crate':<18} {'lines':>7} {'covered':>8} {'percent':>8}"]
table += [f"{m:<18} {c:>7} {v:>8} {pct(c, v):>7.1f}%" for m, c, v in rows]
per_file = [f"{'file':<40} {'lines':>7} {'covered':>8} {'percent':>8}"]
per_file += [f"{n:<40} {c:>7} {v:>8} {pct(c, v):>7.1f}%" for n, (c, v) in sorted(files.items())]
note = (
    "lines: lines with code, as llvm-cov counts them, less the unit-test modules\n"
    f"(#[cfg(test)] mod); with those, the workspace has {with_tests[1]} of {with_tests[0]} "
    f"covered ({pct(with_tests[0], with_tests[1]):.1f}%)"
)
open(f"{out}/modules.txt", "w").write("\n".join(table + [note]) + "\n")
open(f"{out}/files.txt", "w").write("\n".join(per_file) + "\n")
print("\n".join(table))
print(note)
print(f"per file: {out}/files.txt; lcov: {out}/lcov.info")
EOF

exit "$status"
