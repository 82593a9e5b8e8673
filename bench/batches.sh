#!/usr/bin/env bash
# A batch of N children against N separate creates. Each side runs on a
# fresh server (sled, --sync always unless SERVE_ARGS says otherwise,
# --max-queued raised to hold all N) and the whole is printed as one JSON
# object:
#   batch_create     children per second of `longrun batch create --file`
#                    (N zero-length sleeps, one per line, streamed), from
#                    its start until the batch is sealed;
#   batch_e2e        children per second from that start until the whole
#                    batch is done;
#   batch_rss_mib    the server's peak RSS (VmHWM) by then;
#   separate_create  creates per second of N separate Sleep calls (h2load,
#                    4 connections of 16 streams);
#   separate_e2e     from their start until all N are done;
#   separate_rss_mib the server's peak RSS by then.
#
#   bench/batches.sh [BINARY]       # BINARY defaults to target/release/longrun
#   N=100000 bench/batches.sh
set -euo pipefail
. "$(dirname "$0")/lib.sh"
BIN=${1:-target/release/longrun}
N=${N:-100000}
SERVE_ARGS=${SERVE_ARGS:---sync always}
METRICS=127.0.0.1:${METRICS_PORT:-19465}

work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
sleep_body "$work/empty"
python3 - "$work/children.jsonl" "$N" <<'PY'
import sys
line = '{"kind": "longrun.v1.Diagnostics.Sleep", "payload": {"@type": "type.googleapis.com/longrun.v1.SleepRequest"}}\n'
with open(sys.argv[1], "w") as f:
    f.write(line * int(sys.argv[2]))
PY

now() { date +%s.%N; }
rate() { echo "$N / ($2 - $1)" | bc -l; }
peak_mib() { awk '/^VmHWM/ { print $2 / 1024 }' "/proc/$pid/status"; }

# Sleeps finished so far, from the metrics.
finished() {
  curl -s "http://$METRICS/metrics" |
    sed -n 's/^longrun_operations_finished_total{kind="longrun.v1.Diagnostics.Sleep",outcome="succeeded"} \([0-9]*\).*/\1/p'
}

pid=
# shellcheck disable=SC2086
start_server $SERVE_ARGS --max-queued $((N * 2)) --metrics-listen "$METRICS"
export LONGRUN_SERVER="http://$address"
began=$(now)
name=$("$BIN" batch create --file "$work/children.jsonl" --output json 2> /dev/null |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["name"])')
sealed=$(now)
"$BIN" ops wait "$name" > /dev/null
ended=$(now)
batch_create=$(rate "$began" "$sealed")
batch_e2e=$(rate "$began" "$ended")
batch_rss=$(peak_mib)
stop_server

# shellcheck disable=SC2086
start_server $SERVE_ARGS --max-queued $((N * 2)) --metrics-listen "$METRICS"
began=$(now)
h2load -n "$N" -c 4 -m 16 -d "$work/empty" \
  -H 'content-type: application/grpc' -H 'te: trailers' \
  "http://$address/longrun.v1.Diagnostics/Sleep" > "$work/h2load" 2>&1
grep -q " $N succeeded, 0 failed, 0 errored" "$work/h2load" || { cat "$work/h2load" >&2; exit 1; }
created=$(now)
until [ "$(finished)" = "$N" ]; do sleep 0.05; done
ended=$(now)
separate_create=$(rate "$began" "$created")
separate_e2e=$(rate "$began" "$ended")
separate_rss=$(peak_mib)
stop_server

printf '{"n": %d, "batch_create": %.0f, "batch_e2e": %.0f, "batch_rss_mib": %.0f, "separate_create": %.0f, "separate_e2e": %.0f, "separate_rss_mib": %.0f}\n' \
  "$N" "$batch_create" "$batch_e2e" "$batch_rss" "$separate_create" "$separate_e2e" "$separate_rss"
