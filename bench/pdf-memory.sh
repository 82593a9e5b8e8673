#!/usr/bin/env bash
# Peak memory of a server that renders one report, as CSV and as PDF, for a
# small month and a large one. If the PDF is written a page at a time, it
# costs no more than the CSV beside it, whose memory is the store's reading
# of the month. Each month is imported first; the server is then restarted
# on the same data for each render, so each peak (VmHWM) is that render's.
#
#   bench/pdf-memory.sh                  # SMALL=10000 LARGE=1000000
#
# Needs: a release build.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/longrun}
SMALL=${SMALL:-10000}
LARGE=${LARGE:-1000000}

work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT

for count in "$SMALL" "$LARGE"; do
  "$BIN" orders generate --count "$count" --months 2024-01..2024-01 --seed 1 \
    --out "$work/orders.csv" > /dev/null
  start_server --metrics-listen 127.0.0.1:0
  "$BIN" orders import "$work/orders.csv" --watch --server "http://$address" > /dev/null
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  # The same data in a fresh process for each format: nothing of the import
  # or of the other render is left in it.
  for format in csv pdf; do
    "$BIN" serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --data-dir "$work/data" 2> "$work/log" &
    pid=$!
    wait_listening "$work/log" "$pid"
    before=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    "$BIN" report create --month 2024-01 --format "$format" --watch --out "$work/report" \
      --server "http://$address" > /dev/null 2>&1
    after=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    printf '%8d orders, %s: %10d bytes; peak RSS %7d KiB before the render, %7d KiB after (+%d)\n' \
      "$count" "$format" "$(stat -c %s "$work/report")" "$before" "$after" $((after - before))
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  done
done
