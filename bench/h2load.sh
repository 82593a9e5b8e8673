#!/usr/bin/env bash
# Drives a longrun binary with h2load (Debian package nghttp2-client), a C
# HTTP/2 load generator that knows nothing of longrun, and prints one JSON
# object:
#   ceiling  grpc.health.v1.Health/Check, requests per second;
#   create   longrun.v1.Diagnostics/Sleep with no duration: durable
#            creates per second;
#   e2e      N such creates, until all N are done: operations per second
#            from the first create to the moment none is left undone.
# Each measure gets a fresh server on a fresh data directory.
#
#   bench/h2load.sh [BINARY]        # BINARY defaults to target/release/longrun
#   N=20000 CONNECTIONS=4 STREAMS=16 SERVE_ARGS="--sync always" bench/h2load.sh
#   KEY=acme bench/h2load.sh        # every create names concurrency key acme
#   PG=postgres://postgres@127.0.0.1:5432 bench/h2load.sh   # one node on
#                                   # PostgreSQL, a fresh database per measure
set -euo pipefail
. "$(dirname "$0")/lib.sh"
BIN=${1:-target/release/longrun}
N=${N:-20000}
CONNECTIONS=${CONNECTIONS:-4}
STREAMS=${STREAMS:-16}
SERVE_ARGS=${SERVE_ARGS:-}
KEY=${KEY:-}
PG=${PG:-}

work=$(mktemp -d)
db=
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"; drop_database' EXIT
sleep_body "$work/empty" "$KEY"

pid=
# h2load's requests per second for N calls of a method.
drive() {
  h2load -n "$N" -c "$CONNECTIONS" -m "$STREAMS" -d "$work/empty" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://$address/$1" > "$work/h2load" 2>&1
  if ! grep -q " $N succeeded, 0 failed, 0 errored" "$work/h2load"; then
    cat "$work/h2load" >&2
    exit 1
  fi
  sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' "$work/h2load"
}

# A fresh server: on a fresh data directory, and with PG on a fresh
# database.
serve() {
  local store=()
  if [ -n "$PG" ]; then
    create_database
    store=(--store "$PG/$db")
  fi
  # shellcheck disable=SC2086
  start_server "${store[@]}" $SERVE_ARGS
}

finish() {
  stop_server
  drop_database
}

serve
ceiling=$(drive grpc.health.v1.Health/Check)
finish

serve
create=$(drive longrun.v1.Diagnostics/Sleep)
# h2load sees HTTP status 200 even for a gRPC error: check every create
# made an operation.
made=$("$BIN" ops list --server "http://$address" --page-size 1000 --all --output json \
  | grep -o '"name":"operations/' | wc -l)
if [ "$made" -ne "$N" ]; then
  echo "only $made of $N creates made an operation" >&2
  exit 1
fi
finish

serve
began=$(date +%s.%N)
drive longrun.v1.Diagnostics/Sleep > /dev/null
while undone; do sleep 0.01; done
ended=$(date +%s.%N)
e2e=$(python3 -c "print($N / ($ended - $began))")
finish

printf '{"ceiling": %s, "create": %s, "e2e": %s, "n": %s}\n' "$ceiling" "$create" "$e2e" "$N"
