#!/usr/bin/env bash
# The cost of traces on the hot path. In one run, side by side, ROUNDS
# times over: a fresh release server (sled, --sync always unless
# SERVE_ARGS says otherwise) with traces off, exporting to a local
# collector (bench/otlp_sink.py, over OTLP/gRPC), and exporting to a
# collector that is down; each is driven by h2load with N Sleep creates
# that carry a traceparent, measuring creates per second and end to end
# (from the first create until all N are done). Prints a JSON line per
# measure, with the spans the collector took and the drops counted.
#
#   bench/traces.sh [BINARY]      # BINARY defaults to target/release/longrun
#   N=20000 ROUNDS=3 PYTHON=target/pyvenv/bin/python bench/traces.sh
set -euo pipefail
. "$(dirname "$0")/lib.sh"
BIN=${1:-target/release/longrun}
N=${N:-20000}
ROUNDS=${ROUNDS:-3}
PYTHON=${PYTHON:-target/pyvenv/bin/python}
SERVE_ARGS=${SERVE_ARGS:---sync always}
METRICS=127.0.0.1:${METRICS_PORT:-19466}
SINK_PORT=${SINK_PORT:-14317}
DOWN_PORT=${DOWN_PORT:-14318}

work=$(mktemp -d)
sink=
trap 'kill $pid $sink 2>/dev/null || true; rm -rf "$work"' EXIT
sleep_body "$work/empty"
parent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

now() { date +%s.%N; }
counter() {
  curl -s "http://$METRICS/metrics" | sed -n "s/^$1 \([0-9.e+]*\).*/\1/p" | head -1
}

run() {
  local mode=$1 flags=()
  case "$mode" in
    off) ;;
    sink)
      "$PYTHON" bench/otlp_sink.py "$SINK_PORT" "$work/spans" > "$work/sink.log" &
      sink=$!
      until grep -q listening "$work/sink.log" 2>/dev/null; do sleep 0.1; done
      flags=(--otlp-endpoint "http://127.0.0.1:$SINK_PORT") ;;
    down) flags=(--otlp-endpoint "http://127.0.0.1:$DOWN_PORT") ;;
  esac
  # shellcheck disable=SC2086
  start_server $SERVE_ARGS --metrics-listen "$METRICS" "${flags[@]}"
  local began created ended
  began=$(now)
  h2load -n "$N" -c 4 -m 16 -d "$work/empty" \
    -H 'content-type: application/grpc' -H 'te: trailers' -H "traceparent: $parent" \
    "http://$address/longrun.v1.Diagnostics/Sleep" > "$work/h2load" 2>&1
  grep -q " $N succeeded, 0 failed, 0 errored" "$work/h2load" || { cat "$work/h2load" >&2; exit 1; }
  created=$(now)
  until [ "$(counter 'longrun_operations_finished_total{kind="longrun.v1.Diagnostics.Sleep",outcome="succeeded"}')" = "$N" ]; do sleep 0.05; done
  ended=$(now)
  local dropped rss spans=0
  dropped=$(counter longrun_trace_spans_dropped_total)
  rss=$(awk '/^VmHWM/ { print $2 / 1024 }' "/proc/$pid/status")
  stop_server
  if [ "$mode" = sink ]; then
    kill "$sink"; wait "$sink" || true; sink=
    spans=$(cat "$work/spans")
  fi
  printf '{"mode": "%s", "create": %.0f, "e2e": %.0f, "spans_exported": %s, "spans_dropped": %s, "rss_mib": %.0f}\n' \
    "$mode" "$(echo "$N / ($created - $began)" | bc -l)" "$(echo "$N / ($ended - $began)" | bc -l)" \
    "$spans" "${dropped:-0}" "$rss"
}

for _ in $(seq "$ROUNDS"); do
  run off
  run sink
  run down
done
