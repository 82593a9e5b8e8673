#!/usr/bin/env bash
# Counts the server's system calls per operation with strace: N zero-length
# Sleep operations created by h2load (4 connections x 16 streams) and run
# to the end. Counts do not depend on the machine's noise, so they show a
# design's cost where timings cannot.
#
#   bench/syscalls.sh [BINARY]          # N=20000
#
# Needs: strace, h2load (Debian nghttp2-client).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
BIN=${1:-target/release/longrun}
N=${N:-20000}
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
printf '\0\0\0\0\0' > "$work/empty"

strace -f -c -o "$work/counts" "$BIN" serve --listen 127.0.0.1:0 --data-dir "$work/data" \
  2> "$work/log" &
pid=$!
wait_listening "$work/log" "$pid"
h2load -n "$N" -c 4 -m 16 -d "$work/empty" \
  -H 'content-type: application/grpc' -H 'te: trailers' \
  "http://$address/longrun.v1.Diagnostics/Sleep" > /dev/null
while undone; do sleep 0.1; done
# strace passes no SIGINT on to the server it started: stop the server.
kill -INT "$(pgrep -P "$pid")"
wait "$pid" || true
pid=
python3 - "$work/counts" "$N" <<'PY'
import sys
path, n = sys.argv[1], int(sys.argv[2])
calls = {}
for line in open(path):
    parts = line.split()
    if len(parts) >= 5 and parts[0][0].isdigit():
        calls[parts[-1]] = int(parts[3])
print(f"per operation, over {n} created and run (strace -f -c):")
for name in ("futex", "pwrite64", "sync_file_range", "fsync", "fdatasync", "writev",
             "write", "sendmsg", "recvfrom", "epoll_wait", "getrandom", "statfs", "sched_yield"):
    if name in calls:
        print(f"  {name:16} {calls[name] / n:8.3f}")
print(f"  {'all':16} {sum(calls.values()) / n:8.3f}")
PY
