#!/usr/bin/env bash
# The cost of schedules on the hot path. On one fresh server (sled,
# --sync always unless SERVE_ARGS says otherwise) it measures, and prints
# as one JSON object:
#   creates_alone     Diagnostics/Sleep creates per second (h2load), no
#                     schedule defined;
#   schedules_made    seconds to create COUNT schedules over HTTP;
#   ticks             runs the schedules made per second over WINDOW
#                     seconds, each schedule ticking every second by
#                     default (COUNT ticks per second asked for);
#   creates_beside    the same creates per second while they tick;
#   ticks_beside      the runs the schedules made per second meanwhile.
#
#   bench/schedules.sh [BINARY]     # BINARY defaults to target/release/longrun
#   COUNT=10000 WINDOW=20 N=20000 bench/schedules.sh
#   CRON='0 * * * * *' WINDOW=60 bench/schedules.sh   # every minute instead
set -euo pipefail
. "$(dirname "$0")/lib.sh"
BIN=${1:-target/release/longrun}
COUNT=${COUNT:-10000}
WINDOW=${WINDOW:-20}
N=${N:-20000}
SERVE_ARGS=${SERVE_ARGS:---sync always}
CRON=${CRON:-* * * * * *}
METRICS=127.0.0.1:${METRICS_PORT:-19464}

work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
sleep_body "$work/empty"

# h2load's creates per second for N Sleep calls.
creates() {
  h2load -n "$N" -c 4 -m 16 -d "$work/empty" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://$address/longrun.v1.Diagnostics/Sleep" > "$work/h2load" 2>&1
  grep -q " $N succeeded, 0 failed, 0 errored" "$work/h2load" || { cat "$work/h2load" >&2; exit 1; }
  sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' "$work/h2load"
}

# Sleep operations created so far, from the metrics.
created() {
  curl -s "http://$METRICS/metrics" |
    sed -n 's/^longrun_operations_created_total{kind="longrun.v1.Diagnostics.Sleep"} \([0-9]*\).*/\1/p'
}

pid=
# shellcheck disable=SC2086
start_server $SERVE_ARGS --metrics-listen "$METRICS"
alone=$(creates)

body='{"kind":"sleep","payload":{"@type":"type.googleapis.com/longrun.v1.SleepRequest"},"cron":"'"$CRON"'"}'
started=$(date +%s.%N)
seq 1 "$COUNT" | xargs -P 32 -I{} curl -s -o /dev/null -w '%{http_code}\n' \
  -X POST "http://$address/v1/schedules?scheduleId=s{}" \
  -H 'content-type: application/json' -d "$body" > "$work/codes"
made=$(echo "$(date +%s.%N) - $started" | bc -l)
[ "$(grep -c '^200$' "$work/codes")" -eq "$COUNT" ] || { sort "$work/codes" | uniq -c >&2; exit 1; }

# Let the first ticks pass, then count a window of them.
sleep 3
before=$(created)
sleep "$WINDOW"
after=$(created)
ticks=$(echo "($after - $before) / $WINDOW" | bc -l)

before=$(created)
started=$(date +%s.%N)
beside=$(creates)
took=$(echo "$(date +%s.%N) - $started" | bc -l)
after=$(created)
ticks_beside=$(echo "($after - $before - $N) / $took" | bc -l)
stop_server

printf '{"count": %d, "creates_alone": %.0f, "schedules_made_s": %.1f, "ticks": %.0f, "creates_beside": %.0f, "ticks_beside": %.0f}\n' \
  "$COUNT" "$alone" "$made" "$ticks" "$beside" "$ticks_beside"
