#!/usr/bin/env bash
# Soak: CYCLES (default 10,000) cycles of "write a file into import/, read
# its task back through tasks/<id>, unlink it" through one mount on one
# daemon, each file new content (SIZE, default 256 KiB). Every 1,000 cycles
# it prints the RSS and open file descriptors of the mount and the daemon:
# once the piece cache (--cache-size 64mib) has filled they must stay flat.
# Ends with the listing time of the tasks made (tasks/ grows by one a cycle).
#
#   scripts/soak.sh
#   CYCLES=2000 SIZE=1M scripts/soak.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"

CYCLES="${CYCLES:-10000}"
SIZE="${SIZE:-256K}"
WORK="${WORK:-/var/tmp/dfcache-soak}"

# python3 runs the cycles, and a fresh machine lacks it.
bash "$here/install-deps.sh"
build_release
rm -rf "$WORK"
mkdir -p "$WORK/mnt"
start_daemon "$WORK"
"$DFCACHE" mount "$WORK/mnt" -e "$WORK/d.sock" --cache-size 64mib -l warn &
MOUNT_PID=$!
trap 'kill $MOUNT_PID $DAEMON_PID 2>/dev/null; wait 2>/dev/null; umount -l "$WORK/mnt" 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 200); do ls "$WORK/mnt/import" > /dev/null 2>&1 && break; sleep 0.05; done

# The cycles run in one python process: spawning cp/cat/rm would measure
# process start-up, not the mount.
python3 - "$WORK/mnt" "$CYCLES" "$(numfmt --from=iec "$SIZE")" "$MOUNT_PID" "$DAEMON_PID" << 'EOF'
import os, sys, time
mnt, cycles, size, pids = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]

def usage(pid):
    rss = next(l.split()[1] for l in open(f'/proc/{pid}/status') if l.startswith('VmRSS'))
    return int(rss) // 1024, len(os.listdir(f'/proc/{pid}/fd'))

print(f'{"cycles":>7} {"mount RSS MiB":>14} {"mount fds":>10} {"daemon RSS MiB":>15} {"daemon fds":>11} {"s/1000":>7}')
start = time.monotonic()
for i in range(1, cycles + 1):
    data = os.urandom(size)
    path = os.path.join(mnt, 'import', 'f')
    with open(path, 'wb') as f:
        f.write(data)
    task = os.getxattr(path, 'user.dfcache.task_id').decode()
    with open(os.path.join(mnt, 'tasks', task), 'rb') as f:
        if f.read() != data:
            sys.exit(f'cycle {i}: task {task} read back wrong bytes')
    os.unlink(path)
    if i % 1000 == 0:
        (mr, mf), (dr, df) = usage(pids[0]), usage(pids[1])
        print(f'{i:>7} {mr:>14} {mf:>10} {dr:>15} {df:>11} {time.monotonic() - start:>7.1f}', flush=True)
        start = time.monotonic()
EOF

start=$(now)
# grep -c exits 1 when it counts none, which would end the script here.
count=$(ls -f "$WORK/mnt/tasks" | grep -c '^[0-9a-f]\{64\}$' || true)
echo "ls -f tasks/: $count tasks in $(elapsed "$start") s"
