#!/usr/bin/env bash
# longrun on PostgreSQL, with 1, 2 and 3 nodes sharing one database, driven
# by h2load (one h2load per node, all at once, N calls in all): durable
# creates per second, and N creates until all N are done. Each measure gets
# fresh nodes on a fresh database. Prints one JSON object per node count,
# RUNS times each.
#
#   bench/cluster.sh                     # N=20000, RUNS=3, NODES="1 2 3"
#   PG=postgres://postgres@127.0.0.1:5432 bench/cluster.sh
#   KEY=acme SERVE_ARGS='--concurrency sleep:key=100' bench/cluster.sh
#
# Needs: a release build, h2load (Debian nghttp2-client), psql, and a
# PostgreSQL server the URL's user may create databases on.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/longrun}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
N=${N:-20000}
RUNS=${RUNS:-3}
NODES=${NODES:-1 2 3}
CONNECTIONS=${CONNECTIONS:-4}
STREAMS=${STREAMS:-16}
SERVE_ARGS=${SERVE_ARGS:-}
KEY=${KEY:-}

work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
sleep_body "$work/empty" "$KEY"

fresh_database() {
  db=longrun_bench_$RANDOM$RANDOM
  psql "$PG/postgres" -qc "CREATE DATABASE $db" > /dev/null
  echo "$db"
}

# Starts $1 nodes on database $2; their addresses go to $work/addresses.
start_nodes() {
  : > "$work/addresses"
  for i in $(seq "$1"); do
    "$BIN" serve --listen 127.0.0.1:0 --store "$PG/$2" --data-dir "$work/data-$i" \
      --node-name "node-$i" $SERVE_ARGS 2> "$work/log-$i" & # shellcheck disable=SC2086
    pids+=($!)
    wait_listening "$work/log-$i" "$!"
    echo "$address" >> "$work/addresses"
  done
}

stop_nodes() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=()
}

# Creates N sleeps, split over the nodes, all at once; prints the seconds.
drive() {
  local nodes share began ended
  nodes=$(wc -l < "$work/addresses")
  share=$((N / nodes))
  began=$(date +%s.%N)
  while read -r address; do
    h2load -n "$share" -c "$CONNECTIONS" -m "$STREAMS" -d "$work/empty" \
      -H 'content-type: application/grpc' -H 'te: trailers' \
      "http://$address/longrun.v1.Diagnostics/Sleep" > "$work/h2load-$address" 2>&1 &
  done < "$work/addresses"
  wait $(jobs -p | grep -v -x -F "$(printf '%s\n' "${pids[@]}")") 2>/dev/null || true
  ended=$(date +%s.%N)
  for f in "$work"/h2load-*; do
    grep -q " succeeded, 0 failed, 0 errored" "$f" || { cat "$f" >&2; exit 1; }
  done
  python3 -c "print($ended - $began)"
}

# Polls the database until no operation is undone.
drain() {
  while [ "$(psql "$PG/$1" -Atc 'SELECT count(*) FROM longrun_operations WHERE ended_us IS NULL')" != 0 ]; do
    sleep 0.01
  done
}

TOTAL=$N
for nodes in $NODES; do
  # Every node gets the same share.
  N=$((TOTAL / nodes * nodes))
  for run in $(seq "$RUNS"); do
    db=$(fresh_database)
    start_nodes "$nodes" "$db"
    seconds=$(drive)
    create=$(python3 -c "print(round($N / $seconds))")
    stop_nodes
    made=$(psql "$PG/$db" -Atc 'SELECT count(*) FROM longrun_operations')
    [ "$made" -eq "$N" ] || { echo "only $made of $N creates made an operation" >&2; exit 1; }
    psql "$PG/postgres" -qc "DROP DATABASE $db WITH (FORCE)"

    db=$(fresh_database)
    start_nodes "$nodes" "$db"
    began=$(date +%s.%N)
    drive > /dev/null
    drain "$db"
    ended=$(date +%s.%N)
    e2e=$(python3 -c "print(round($N / ($ended - $began)))")
    stop_nodes
    psql "$PG/postgres" -qc "DROP DATABASE $db WITH (FORCE)"
    printf '{"nodes": %s, "run": %s, "create": %s, "e2e": %s, "n": %s}\n' \
      "$nodes" "$run" "$create" "$e2e" "$N"
  done
done
