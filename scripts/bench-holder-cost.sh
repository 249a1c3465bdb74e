#!/usr/bin/env bash
# What keeping a mount for the next process costs (a holder, the state
# journal, every FUSE thread on one /dev/fuse descriptor), in one run:
# bench-mount.sh and bench-trees.sh each run twice, with `--holder none`
# (A: no holder, no journal) and with the default holder (B), in the order
# A B B A so a drift of the machine weighs on both; each figure of their
# summaries is printed for A and B (medians of their two runs) with B / A.
#
#   scripts/bench-holder-cost.sh
#   SIZE=1G BIG=2G RUNS=3 FILES=1000 BIG_TREE=10000 scripts/bench-holder-cost.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"

export SIZE="${SIZE:-1G}" BIG="${BIG:-2G}" RUNS="${RUNS:-3}"
FILES="${FILES:-1000}"
BIG_TREE="${BIG_TREE:-10000}"
OUT="${OUT:-/var/tmp/dfcache-bench-holder}"
rm -rf "$OUT"
mkdir -p "$OUT"

# run NAME LABEL: one script's run, with the mount's holder as LABEL says
# (DFCACHE_HOLDER is the mount's --holder).
run() {
  local name="$1" label="$2" holder=process
  [ "$label" = A ] && holder=none
  echo "== $name, $label (--holder $holder)"
  case "$name" in
    mount) DFCACHE_HOLDER=$holder bash "$here/bench-mount.sh" ;;
    trees) DFCACHE_HOLDER=$holder FILES="$FILES" BIG="$BIG_TREE" bash "$here/bench-trees.sh" ;;
  esac > "$OUT/$name.$label.$(date +%s%N)" 2>&1 || { echo "bench-$name.sh failed:"; tail -20 "$OUT/$name.$label".*; exit 1; }
}
for name in mount trees; do
  for label in A B B A; do run "$name" "$label"; done
done

# The summary lines (from "medians" on) of each output, numbers compared
# position by position: A and B as the median of their two runs.
python3 - "$OUT" << 'EOF'
import glob, os, re, statistics, sys
out = sys.argv[1]
num = re.compile(r"\d+(?:\.\d+)?")
log = re.compile(r"\S*\d{4}-\d\d-\d\dT")
for name in ("mount", "trees"):
    runs = {}
    for label in "AB":
        runs[label] = []
        for path in sorted(glob.glob(os.path.join(out, f"{name}.{label}.*"))):
            lines = open(path).read().splitlines()
            start = next(i for i, l in enumerate(lines) if l.startswith("medians"))
            # Log lines (a timestamp first) are not figures: B's runs log
            # each takeover, A's do not.
            runs[label].append([l for l in lines[start + 1:]
                                if num.search(l) and not log.match(l)])
    print(f"\nbench-{name}.sh: A = --holder none, B = the default holder (medians of 2 runs each)")
    for i, line in enumerate(runs["A"][0]):
        cells = []
        for j, _ in enumerate(num.findall(line)):
            a = statistics.median(float(num.findall(r[i])[j]) for r in runs["A"])
            b = statistics.median(float(num.findall(r[i])[j]) for r in runs["B"])
            cells.append(f"{a:g} -> {b:g} ({b / a:.3f})" if a else f"{a:g} -> {b:g}")
        label = num.sub("#", line.strip())
        print(f"  {label}\n      " + "; ".join(cells))
EOF
